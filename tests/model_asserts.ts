/**
 * Shared assertions for model-loading tests (not a test file itself).
 *
 * @module
 */
import assert from "node:assert/strict";
import type { BertWeights, DenseWeight, NormWeight } from "../encoder/weights.ts";

/** Asserts two fp32 arrays are bitwise equal, naming the first differing index. */
export function assertSameArray(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < expected.length; i++) {
    if (!Object.is(actual[i], expected[i])) {
      assert.fail(`${what}[${i}] is ${actual[i]}, expected ${expected[i]}`);
    }
  }
}

function assertSameDense(
  a: DenseWeight | null | undefined,
  b: DenseWeight | null | undefined,
  what: string,
) {
  assert.equal(a === null || a === undefined, b === null || b === undefined, `${what}: presence`);
  if (!a || !b) return;
  assert.deepEqual([a.out, a.in], [b.out, b.in], `${what}: shape`);
  assertSameArray(a.weight, b.weight, `${what}.weight`);
  assertSameArray(a.bias, b.bias, `${what}.bias`);
}

function assertSameNorm(a: NormWeight, b: NormWeight, what: string): void {
  assertSameArray(a.gamma, b.gamma, `${what}.gamma`);
  assertSameArray(a.beta, b.beta, `${what}.beta`);
  assert.equal(Math.fround(a.eps), Math.fround(b.eps), `${what}.eps`);
}

/** Asserts that two sets of weights are bitwise identical. */
export function assertSameWeights(actual: BertWeights, expected: BertWeights): void {
  assert.deepEqual(actual.config, expected.config);
  assertSameArray(actual.wordEmbeddings, expected.wordEmbeddings, "wordEmbeddings");
  assertSameArray(actual.positionEmbeddings, expected.positionEmbeddings, "positionEmbeddings");
  assert.equal(actual.tokenTypeEmbeddings === null, expected.tokenTypeEmbeddings === null);
  if (actual.tokenTypeEmbeddings && expected.tokenTypeEmbeddings) {
    assertSameArray(
      actual.tokenTypeEmbeddings,
      expected.tokenTypeEmbeddings,
      "tokenTypeEmbeddings",
    );
  }
  assertSameNorm(actual.embeddingNorm, expected.embeddingNorm, "embeddingNorm");
  assert.equal(actual.layers.length, expected.layers.length);
  actual.layers.forEach((l, i) => {
    const e = expected.layers[i];
    for (
      const k of ["query", "key", "value", "attentionOutput", "intermediate", "output"] as const
    ) {
      assertSameDense(l[k], e[k], `layers[${i}].${k}`);
    }
    assertSameNorm(l.attentionNorm, e.attentionNorm, `layers[${i}].attentionNorm`);
    assertSameNorm(l.outputNorm, e.outputNorm, `layers[${i}].outputNorm`);
  });
  assertSameDense(actual.pooler, expected.pooler, "pooler");
  assertSameDense(actual.preClassifier, expected.preClassifier, "preClassifier");
  assert.equal(actual.head?.kind, expected.head?.kind, "head kind");
  assertSameDense(actual.head?.dense, expected.head?.dense, "head");
}

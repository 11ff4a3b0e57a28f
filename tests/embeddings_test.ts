import { throws as assertThrows } from "node:assert/strict";
import { Embeddings, type EmbeddingWeights } from "../ops/embeddings.ts";
import { assertClose, randomF32, rng, variantLabel } from "./harness.ts";
import { embeddingsReference } from "./reference/embeddings.ts";

function tables(hidden: number, vocab: number, positions: number, types: number, seed: number) {
  return {
    hidden,
    word: randomF32(vocab * hidden, seed, -1, 1),
    position: randomF32(positions * hidden, seed + 1, -0.5, 0.5),
    tokenType: types === 0 ? null : randomF32(types * hidden, seed + 2, -0.2, 0.2),
    norm: {
      gamma: randomF32(hidden, seed + 3, 0.5, 1.5),
      beta: randomF32(hidden, seed + 4, -0.1, 0.1),
      eps: 1e-12,
    },
  } satisfies EmbeddingWeights;
}

function ids(count: number, limit: number, seed: number): Int32Array {
  const next = rng(seed);
  return Int32Array.from({ length: count }, () => Math.floor(next() * limit));
}

Deno.test(`embeddings match the reference, BERT and DistilBERT layouts (${variantLabel()})`, () => {
  let seed = 500;
  const cases: [number, number, number, number, number, number][] = [
    // hidden, vocab, positions, types, batch, seq
    [1, 3, 2, 2, 1, 1],
    [13, 50, 20, 2, 3, 20],
    [384, 1000, 512, 2, 2, 128],
    [768, 500, 512, 0, 2, 33],
    [256, 77, 64, 3, 4, 9],
    [384, 300, 128, 2, 4, 128], // above the threshold for splitting rows over the pool
  ];
  for (const [hidden, vocab, positions, types, batch, seq] of cases) {
    const w = tables(hidden, vocab, positions, types, seed);
    seed += 10;
    const op = new Embeddings(w);
    const inputIds = ids(batch * seq, vocab, seed++);
    const tokenTypeIds = types === 0 ? null : ids(batch * seq, types, seed++);
    const y = op.forward({ inputIds, tokenTypeIds, batch, seq });
    assertClose(y, embeddingsReference(w, inputIds, tokenTypeIds, { batch, seq }), {
      rtol: 2e-6,
      what: `embeddings H ${hidden} types ${types} ${batch}x${seq}`,
    });
    if (types !== 0) {
      // Without token type ids every token is type 0.
      const y0 = op.forward({ inputIds, batch, seq });
      assertClose(y0, embeddingsReference(w, inputIds, null, { batch, seq }), {
        rtol: 2e-6,
        what: `embeddings without token types H ${hidden}`,
      });
    }
  }
});

Deno.test("embeddings reject out-of-range ids and shapes with clear errors", () => {
  const w = tables(8, 10, 6, 2, 1);
  const op = new Embeddings(w);
  const good = new Int32Array([1, 2, 3]);
  assertThrows(
    () => op.forward({ inputIds: new Int32Array([1, 10, 3]), batch: 1, seq: 3 }),
    /Token id 10 at position 1 is outside 0\.\.9/,
  );
  assertThrows(
    () => op.forward({ inputIds: new Int32Array([1, -1, 3]), batch: 1, seq: 3 }),
    /Token id -1 at position 1/,
  );
  assertThrows(
    () => op.forward({ inputIds: good, tokenTypeIds: new Int32Array([0, 2, 0]), batch: 1, seq: 3 }),
    /Token type id 2 at position 1 is outside 0\.\.1/,
  );
  assertThrows(
    () => op.forward({ inputIds: new Int32Array(7), batch: 1, seq: 7 }),
    /Sequence length 7 is outside 1\.\.6/,
  );
  assertThrows(() => op.forward({ inputIds: good, batch: 2, seq: 3 }), /need 6 int32 values/);
  assertThrows(
    () => new Embeddings({ ...w, position: new Float32Array(13) }),
    /"position" must be a non-empty Float32Array of rows of 8/,
  );
  const distil = new Embeddings(tables(8, 10, 6, 0, 2));
  assertThrows(
    () =>
      distil.forward({ inputIds: good, tokenTypeIds: new Int32Array([0, 1, 0]), batch: 1, seq: 3 }),
    /no token type embeddings/,
  );
});

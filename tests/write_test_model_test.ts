/**
 * The test-model writer: every variant loads in ONNX Runtime, computes a BERT forward pass that
 * matches an independent fp64 reference within 1e-4, and `importOnnx` recovers exactly the
 * weights that were written.
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { importOnnx } from "../formats/onnx_import.ts";
import type { BertWeights, DenseWeight } from "../encoder/weights.ts";
import { attentionReference } from "./reference/attention.ts";
import { layerNormReference } from "./reference/layernorm.ts";
import { activate } from "./reference/linear_f32.ts";
import { assertSameWeights } from "./model_asserts.ts";
import { runCaptured, withTempDir } from "./helpers.ts";
import {
  ensureTestModel,
  main,
  testModelWeights,
  writeTestModel,
  type WriteTestModelOptions,
} from "./fixtures/write_test_model.ts";

/** A tiny BERT so that every variant writes, loads and runs in well under a second. */
const TINY = {
  vocabSize: 500,
  hiddenSize: 64,
  numHeads: 4,
  intermediateSize: 128,
  numLayers: 2,
  maxPositionEmbeddings: 40,
};

const VARIANTS: [string, WriteTestModelOptions][] = [
  ["BERT, opset 14, decomposed LayerNorm, Erf GELU", {}],
  ["BERT, opset 11, question answering", { opset: 11, task: "question-answering" }],
  ["BERT, opset 17, fused LayerNorm, tanh GELU", {
    opset: 17,
    layerNorm: "fused",
    config: { hiddenAct: "gelu_tanh" },
  }],
  ["BERT, opset 18, classification, anonymous names, external data", {
    opset: 18,
    task: "text-classification",
    names: "anonymous",
    externalData: true,
  }],
  ["BERT, Where mask, token classification, 90% 4x1 sparsity", {
    maskStyle: "where",
    task: "token-classification",
    numLabels: 5,
    sparsity: 0.9,
    pattern: "4x1",
  }],
  ["BERT, SDPA attention, 50% unstructured sparsity", {
    attention: "sdpa",
    sparsity: 0.5,
    pattern: "unstructured",
  }],
  ["DistilBERT, opset 14", { preset: "distilbert" }],
  ["DistilBERT, opset 13, classification", {
    preset: "distilbert",
    opset: 13,
    task: "text-classification",
    numLabels: 3,
  }],
  ["DistilBERT, SDPA attention, fused LayerNorm", {
    preset: "distilbert",
    attention: "sdpa",
    opset: 17,
    layerNorm: "fused",
  }],
];

function tiny(options: WriteTestModelOptions): WriteTestModelOptions {
  return { ...options, seed: 7, config: { ...TINY, ...options.config } };
}

// ---------------------------------------------------------------------------------------------
// An fp64 reference of the BERT forward pass (Hugging Face semantics), over the kernels'
// scalar references in tests/reference/.

function linear(x: Float64Array, rows: number, d: DenseWeight): Float64Array {
  const out = new Float64Array(rows * d.out);
  for (let r = 0; r < rows; r++) {
    for (let o = 0; o < d.out; o++) {
      let s = d.bias[o];
      for (let i = 0; i < d.in; i++) s += x[r * d.in + i] * d.weight[o * d.in + i];
      out[r * d.out + o] = s;
    }
  }
  return out;
}

/** Reference outputs by graph output name. */
function referenceForward(
  w: BertWeights,
  ids: number[][],
  mask: number[][],
  types: number[][],
): Record<string, Float64Array> {
  const c = w.config;
  const b = ids.length;
  const s = ids[0].length;
  const h = c.hiddenSize;
  const nh = c.numHeads;
  const d = h / nh;
  const rows = b * s;
  let x: Float64Array = new Float64Array(rows * h);
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < s; j++) {
      for (let k = 0; k < h; k++) {
        x[(i * s + j) * h + k] = w.wordEmbeddings[ids[i][j] * h + k] +
          w.positionEmbeddings[j * h + k] +
          (w.tokenTypeEmbeddings ? w.tokenTypeEmbeddings[types[i][j] * h + k] : 0);
      }
    }
  }
  x = layerNormReference(x, rows, w.embeddingNorm);
  for (const l of w.layers) {
    const q = linear(x, rows, l.query);
    const k = linear(x, rows, l.key);
    const v = linear(x, rows, l.value);
    const ctx = attentionReference(q, k, v, mask.flat(), {
      batch: b,
      seq: s,
      heads: nh,
      headSize: d,
      ld: h,
      maskValue: -Infinity,
      scale: 1 / Math.sqrt(d),
    });
    const attn = linear(ctx, rows, l.attentionOutput);
    for (let i = 0; i < attn.length; i++) attn[i] += x[i];
    x = layerNormReference(attn, rows, l.attentionNorm);
    const inter = linear(x, rows, l.intermediate);
    for (let i = 0; i < inter.length; i++) inter[i] = activate(inter[i], c.hiddenAct);
    const out = linear(inter, rows, l.output);
    for (let i = 0; i < out.length; i++) out[i] += x[i];
    x = layerNormReference(out, rows, l.outputNorm);
  }
  const result: Record<string, Float64Array> = {};
  if (!w.head) {
    result.last_hidden_state = x;
    return result;
  }
  if (w.head.kind === "classification") {
    const cls = new Float64Array(b * h);
    for (let i = 0; i < b; i++) cls.set(x.subarray(i * s * h, i * s * h + h), i * h);
    const pooled = linear(cls, b, (w.pooler ?? w.preClassifier)!);
    for (let i = 0; i < pooled.length; i++) {
      pooled[i] = w.pooler ? Math.tanh(pooled[i]) : Math.max(0, pooled[i]);
    }
    result.logits = linear(pooled, b, w.head.dense);
  } else if (w.head.kind === "token-classification") {
    result.logits = linear(x, rows, w.head.dense);
  } else {
    const logits = linear(x, rows, w.head.dense);
    result.start_logits = new Float64Array(rows).map((_, i) => logits[2 * i]);
    result.end_logits = new Float64Array(rows).map((_, i) => logits[2 * i + 1]);
  }
  return result;
}

function int64(rows: number[][]): ort.Tensor {
  return new ort.Tensor("int64", BigInt64Array.from(rows.flat(), (v) => BigInt(v)), [
    rows.length,
    rows[0].length,
  ]);
}

for (const [name, options] of VARIANTS) {
  Deno.test(`writer: ${name}: ORT runs it like the reference, importOnnx recovers it`, async () => {
    const dir = await Deno.makeTempDir({ prefix: "sparsebert-writer-" });
    try {
      const opts = tiny(options);
      const path = `${dir}/model.onnx`;
      const written = await writeTestModel(path, opts);
      const expected = testModelWeights(opts);
      if (opts.externalData) {
        assert.ok(written.externalDataPath, "external data file written");
        assert.ok(written.externalBytes > written.bytes, "most bytes are external");
      }

      // importOnnx recovers exactly what was written.
      const imported = await importOnnx(path);
      assertSameWeights(imported, expected);

      // ONNX Runtime computes the same function as the fp64 reference.
      const ids = [[101, 7, 42, 300, 102, 0, 0], [101, 5, 6, 7, 8, 9, 102]];
      const mask = [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]];
      const types = [[0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1, 1]];
      const session = await ort.InferenceSession.create(path);
      try {
        const feeds: Record<string, ort.Tensor> = {
          input_ids: int64(ids),
          attention_mask: int64(mask),
        };
        if (session.inputNames.includes("token_type_ids")) feeds.token_type_ids = int64(types);
        assert.deepEqual(
          [...session.inputNames].sort(),
          Object.keys(feeds).sort(),
          "graph inputs",
        );
        const outputs = await session.run(feeds);
        const reference = referenceForward(expected, ids, mask, types);
        assert.deepEqual(
          [...session.outputNames].sort(),
          Object.keys(reference).sort(),
          "graph outputs",
        );
        assert.deepEqual(
          imported.source.outputs?.map((o) => o.name).sort(),
          Object.keys(reference).sort(),
        );
        for (const [out, ref] of Object.entries(reference)) {
          const got = outputs[out].data as Float32Array;
          assert.equal(got.length, ref.length, `${out} size`);
          let worst = 0;
          for (let i = 0; i < ref.length; i++) {
            // Padded positions of the hidden state are compared too: they attend to real tokens.
            worst = Math.max(worst, Math.abs(got[i] - ref[i]));
          }
          assert.ok(worst < 1e-4, `${out}: max abs difference ${worst} vs the fp64 reference`);
        }
      } finally {
        await session.release();
      }

      // Sparsity: the exact fraction of zeros, in 4x1 blocks when asked.
      if (opts.sparsity) {
        for (const layer of imported.layers) {
          for (const key of ["query", "intermediate", "output"] as const) {
            const d = layer[key];
            const zeros = d.weight.reduce((n, v) => n + (v === 0 ? 1 : 0), 0);
            const expectedZeros: number = opts.pattern === "4x1"
              ? 4 * Math.round(opts.sparsity * (d.out / 4) * d.in)
              : Math.round(opts.sparsity * d.out * d.in);
            assert.equal(zeros, expectedZeros, `${key} zeros`);
            if (opts.pattern === "4x1") {
              for (let o = 0; o < d.out; o += 4) {
                for (let i = 0; i < d.in; i++) {
                  const block = [0, 1, 2, 3].map((k) => d.weight[(o + k) * d.in + i] === 0);
                  assert.ok(block.every((z) => z === block[0]), `4x1 block at (${o}, ${i})`);
                }
              }
            }
          }
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("writer: the same seed writes the same weights, another seed different ones", () => {
  const a = testModelWeights(tiny({}));
  const b = testModelWeights(tiny({}));
  const c = testModelWeights({ ...tiny({}), seed: 8 });
  assertSameWeights(a, b);
  assert.notDeepEqual(a.layers[0].query.weight, c.layers[0].query.weight);
  // BERT-like statistics: weights around std 0.02, LayerNorm gammas around 1.
  const w = a.layers[0].intermediate.weight;
  const std = Math.sqrt(w.reduce((s, v) => s + v * v, 0) / w.length);
  assert.ok(std > 0.017 && std < 0.023, `weight std ${std}`);
  const g = a.layers[0].outputNorm.gamma;
  const mean = g.reduce((s, v) => s + v, 0) / g.length;
  assert.ok(Math.abs(mean - 1) < 0.02, `gamma mean ${mean}`);
});

Deno.test("writer: bad options fail with a clear message", async () => {
  await assert.rejects(
    () => writeTestModel("/nonexistent-dir-for-test/x.onnx", { preset: "bert-huge" }),
    /Unknown preset "bert-huge"/,
  );
  assert.throws(() => testModelWeights({ layerNorm: "fused", opset: 14 }), /opset 17/);
  assert.throws(() => testModelWeights({ sparsity: 1.5 }), /Invalid sparsity 1.5/);
  assert.throws(
    () => testModelWeights({ config: { hiddenSize: 100, numHeads: 3 } }),
    /not a multiple of numHeads/,
  );
});

Deno.test("writer: command line --help, --json and errors", async () => {
  await withTempDir("sparsebert-writer-cli-", async (dir) => {
    const help = await runCaptured(main, ["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.output, /--sparsity F/);
    const out = `${dir}/cli.onnx`;
    const written = await runCaptured(main, [
      "--preset",
      "bert-mini",
      "--vocab-size",
      "300",
      "--layers",
      "1",
      "--out",
      out,
      "--json",
    ]);
    assert.equal(written.code, 0, written.output);
    const summary = JSON.parse(written.output);
    assert.equal(summary.ok, true);
    assert.equal(summary.config.numLayers, 1);
    assert.equal(summary.config.vocabSize, 300);
    assert.equal((await Deno.stat(out)).size, summary.bytes);
    const opset = await runCaptured(main, ["--opset", "9", "--out", `${dir}/x.onnx`]);
    assert.equal(opset.code, 1);
    assert.match(opset.output, /Unsupported opset 9/);
    const sparsity = await runCaptured(main, ["--sparsity", "lots"]);
    assert.equal(sparsity.code, 1);
    assert.match(sparsity.output, /--sparsity must be a number, got "lots"/);
  });
});

Deno.test("writer: ensureTestModel writes once and reuses the cached file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-ensure-" });
  try {
    const options = tiny({ sparsity: 0.5 });
    const first = await ensureTestModel(options, dir);
    const stat = await Deno.stat(first.path);
    const again = await ensureTestModel(options, dir);
    assert.equal(again.path, first.path);
    assert.equal((await Deno.stat(again.path)).mtime?.getTime(), stat.mtime?.getTime());
    const other = await ensureTestModel({ ...options, seed: 99 }, dir);
    assert.notEqual(other.path, first.path);
    assertSameWeights(await importOnnx(first.path), testModelWeights(options));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The fp32 encoder against ONNX Runtime on the same ONNX file: the real all-MiniLM-L6-v2 and
 * bge-small-en-v1.5 exports on a batch of mixed-length texts (hidden states and pooled
 * sentence vectors), the safetensors MiniLM against its ONNX twin, and generated BERT-Mini,
 * DistilBERT and BERT-Base files. Acceptance bound: max abs 1e-4.
 */
import assert from "node:assert/strict";
import { BertEncoder, concatDense, denseF32Linear, type LinearSpec } from "../encoder/bert.ts";
import { loadModel } from "../hub/load.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { modelFiles } from "../hub/registry.ts";
import type { BertWeights } from "../encoder/weights.ts";
import { pool } from "../ops/pooling.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import {
  maxAbsDiff,
  type OrtBatch,
  randomBatch,
  releaseOrtSessions,
  runOrt,
} from "./ort_reference.ts";
import { poolReference } from "./reference/pooling.ts";
import { inModelCache } from "./helpers.ts";

const BOUND = 1e-4;
const PADDED_BOUND = 1e-3;

const TEXTS = [
  "The quick brown fox jumps over the lazy dog.",
  "Sparse int8 BERT encoders on two CPU cores.",
  "Hi",
  "A considerably longer sentence, with punctuation; numbers like 3.14159 and 2048, and words " +
  "that the WordPiece vocabulary splits into several pieces: unbelievably, antidisestablishment.",
  "",
];

const MINILM = modelFiles("all-minilm-l6-v2");
const MINILM_ST = modelFiles("all-minilm-l6-v2-st");
const BGE = modelFiles("bge-small-en-v15");
const haveMiniLM = await inModelCache(MINILM.onnx);
const haveMiniLMSt = await inModelCache(MINILM_ST.safetensors);
const haveBge = await inModelCache(BGE.onnx);

function encoderInput(batch: OrtBatch, weights: BertWeights) {
  return {
    inputIds: batch.inputIds,
    attentionMask: batch.attentionMask,
    tokenTypeIds: weights.config.typeVocabSize > 0 ? batch.tokenTypeIds : null,
    batch: batch.batch,
    seq: batch.seq,
  };
}

/** Hidden states (every position, padding included) and mean/CLS pooled vectors vs ORT. */
async function compareWithOrt(path: string, weights: BertWeights, batch: OrtBatch, label: string) {
  using encoder = new BertEncoder(weights);
  const hidden = encoder.forward(encoderInput(batch, weights));
  const reference = await runOrt(path, batch);
  const name = weights.source.outputs?.find((o) => o.kind === "last_hidden_state")?.name ??
    "last_hidden_state";
  const expected = reference[name];
  assert.ok(expected, `${label}: ORT has no output "${name}"`);
  const h = weights.config.hiddenSize;
  // Real tokens: the acceptance bound. Padded positions attend to the real keys only and are
  // numerically touchy (ONNX Runtime differs from itself there by ~5e-5 between graph
  // optimisation levels), so they get a looser bound that still catches masking bugs.
  const worstReal = maxAbsDiff(hidden, expected, { mask: batch.attentionMask, rowWidth: h });
  assert.ok(worstReal <= BOUND, `${label}: hidden states max abs diff ${worstReal} > ${BOUND}`);
  const worst = maxAbsDiff(hidden, expected);
  assert.ok(worst <= PADDED_BOUND, `${label}: padded positions differ by ${worst}`);
  const mask = Uint8Array.from(batch.attentionMask);
  const shape = { batch: batch.batch, seq: batch.seq, hidden: h, mask };
  for (const mode of ["mean", "cls"] as const) {
    const pooled = pool(hidden, shape, { mode, normalize: true });
    const pooledRef = poolReference(expected, shape, { mode, normalize: true });
    const d = maxAbsDiff(pooled, pooledRef);
    assert.ok(d <= BOUND, `${label}: ${mode} pooled max abs diff ${d} > ${BOUND}`);
  }
  return { worst, worstReal };
}

/**
 * Loads the ONNX model at `path`, checks it against ONNX Runtime on TEXTS
 * ({@linkcode compareWithOrt}) and logs the differences; returns the encoded batch.
 */
async function checkAgainstOrt(path: string, label: string): Promise<{ lengths: number[] }> {
  const { weights, tokenizer } = await loadModel(path);
  const enc = tokenizer!.encodeBatch(TEXTS);
  const [batch, seq] = enc.shape;
  const r = await compareWithOrt(path, weights, { ...enc, batch, seq }, label);
  console.log(
    `${label} ${batch}x${seq}: max abs ${r.worstReal.toExponential(2)} (padded ${
      r.worst.toExponential(2)
    })`,
  );
  return enc;
}

Deno.test({
  name: "bert: all-MiniLM-L6-v2 (ONNX) matches ONNX Runtime on mixed-length texts",
  ignore: !haveMiniLM,
  fn: async () => {
    const enc = await checkAgainstOrt(MINILM.onnx!, "MiniLM");
    assert.ok(new Set(enc.lengths).size >= 4, "the batch mixes lengths");
  },
});

Deno.test({
  name: "bert: bge-small-en-v1.5 (ONNX) matches ONNX Runtime on mixed-length texts",
  ignore: !haveBge,
  fn: async () => {
    await checkAgainstOrt(BGE.onnx!, "bge-small");
  },
});

Deno.test({
  name: "bert: the safetensors MiniLM matches the ONNX MiniLM",
  ignore: !haveMiniLM || !haveMiniLMSt,
  fn: async () => {
    const onnx = await loadModel(MINILM.onnx!);
    const st = await loadModel(MINILM_ST.dir);
    assert.equal(st.weights.source.format, "safetensors");
    const enc = onnx.tokenizer!.encodeBatch(TEXTS);
    // Both tokenizers give the same ids for these texts.
    assert.deepEqual(st.tokenizer!.encodeBatch(TEXTS).inputIds, enc.inputIds);
    const [batch, seq] = enc.shape;
    const input = encoderInput({ ...enc, batch, seq }, onnx.weights);
    using a = new BertEncoder(onnx.weights);
    using b = new BertEncoder(st.weights);
    const d = maxAbsDiff(a.forward(input), b.forward(input));
    assert.ok(d <= BOUND, `safetensors vs ONNX MiniLM: max abs diff ${d} > ${BOUND}`);
  },
});

const GENERATED = [
  { label: "BERT-Mini", options: { preset: "bert-mini" }, lengths: [16, 5, 11, 1] },
  {
    label: "DistilBERT (Where mask, no token types)",
    options: { preset: "distilbert", config: { numLayers: 3, vocabSize: 5000 } },
    lengths: [9, 14, 3],
  },
  { label: "BERT-Base", options: { preset: "bert-base" }, lengths: [12, 7] },
  {
    label: "BERT-Mini, fused LayerNorm, opset 17, gelu_tanh",
    options: {
      preset: "bert-mini",
      opset: 17,
      layerNorm: "fused" as const,
      config: { hiddenAct: "gelu_tanh" as const, numLayers: 2 },
    },
    lengths: [8, 3],
  },
];

for (const { label, options, lengths } of GENERATED) {
  Deno.test(`bert: generated ${label} matches ONNX Runtime`, async () => {
    const { path } = await ensureTestModel(options);
    const weights = await importOnnx(path);
    const batch = randomBatch(lengths, {
      vocab: weights.config.vocabSize,
      typeVocab: weights.config.typeVocabSize,
      seed: lengths.length,
    });
    const r = await compareWithOrt(path, weights, batch, label);
    console.log(`${label} ${batch.batch}x${batch.seq}: max abs ${r.worstReal.toExponential(2)}`);
  });
}

Deno.test("bert: fused and separate QKV, and a custom factory, give the same states", async () => {
  const { path } = await ensureTestModel({ preset: "bert-mini", config: { numLayers: 2 } });
  const weights = await importOnnx(path);
  const batch = randomBatch([7, 3], { vocab: 30522, typeVocab: 2, seed: 5 });
  const input = encoderInput(batch, weights);
  const specs: LinearSpec[] = [];
  using fused = new BertEncoder(weights, {
    linear: (w, spec) => {
      specs.push(spec);
      return denseF32Linear(w, spec);
    },
  });
  using separate = new BertEncoder(weights, { fuseQkv: false });
  const d = maxAbsDiff(fused.forward(input), separate.forward(input));
  assert.ok(d <= 1e-5, `fused vs separate QKV differ by ${d}`);
  assert.deepEqual(
    specs.filter((s) => s.layer === 0).map((s) => `${s.role}:${s.activation}`),
    ["qkv:none", "attention-output:none", "intermediate:gelu", "output:none"],
  );
  assert.equal(specs[0].parts?.length, 3);
  assert.equal(separate.linears().filter((l) => l.layer === 1).length, 6);
});

Deno.test("bert: a padded sequence gives the same states as the same sequence alone", async () => {
  const { path } = await ensureTestModel({ preset: "bert-mini", config: { numLayers: 2 } });
  const weights = await importOnnx(path);
  using encoder = new BertEncoder(weights);
  const both = randomBatch([5, 12], { vocab: 30522, typeVocab: 2, seed: 9 });
  const alone: OrtBatch = {
    inputIds: both.inputIds.slice(0, 5),
    attentionMask: both.attentionMask.slice(0, 5),
    tokenTypeIds: both.tokenTypeIds.slice(0, 5),
    batch: 1,
    seq: 5,
  };
  const h = weights.config.hiddenSize;
  const padded = encoder.forward(encoderInput(both, weights)).slice(0, 5 * h);
  // The padded batch planned the workspace; the shorter call reuses it.
  const bytes = encoder.workspaceBytes;
  const single = encoder.forward(encoderInput(alone, weights));
  assert.equal(encoder.workspaceBytes, bytes);
  const d = maxAbsDiff(padded, single);
  assert.ok(d <= 1e-5, `padding changed the real tokens' states by ${d}`);
});

Deno.test("bert: bad inputs fail with clear errors", async () => {
  const { path } = await ensureTestModel({ preset: "bert-mini", config: { numLayers: 2 } });
  const weights = await importOnnx(path);
  const encoder = new BertEncoder(weights);
  const ids = new Int32Array(4).fill(7);
  assert.throws(
    () => encoder.forward({ inputIds: ids, batch: 1, seq: 513 }),
    /Sequence length 513 is outside 1\.\.512/,
  );
  assert.throws(() => encoder.forward({ inputIds: ids, batch: 2, seq: 4 }), /needs 8 values/);
  assert.throws(
    () => encoder.forward({ inputIds: [1, 2, 30522, 3], batch: 1, seq: 4 }),
    /Token id 30522 at position 2 is outside 0\.\.30521/,
  );
  assert.throws(
    () => encoder.forward({ inputIds: ids, attentionMask: [1, 1, 2, 0], batch: 1, seq: 4 }),
    /attentionMask\[2\] must be 0 or 1, got 2/,
  );
  assert.throws(
    () => encoder.forward({ inputIds: [1, 2.5, 3, 4], batch: 1, seq: 4 }),
    /inputIds\[1\] must be an integer, got 2\.5/,
  );
  assert.throws(
    () =>
      new BertEncoder(weights, {
        linear: (w) => denseF32Linear(w, { layer: 0, role: "query", activation: "gelu" }),
      }),
    /activation "gelu" for layer 0 qkv, expected "none"/,
  );
  encoder[Symbol.dispose]();
  assert.throws(
    () => encoder.forward({ inputIds: ids, batch: 1, seq: 4 }),
    /after it was disposed/,
  );
});

Deno.test("bert: concatDense fuses int8 forms only when their activations agree", () => {
  const part = (out: number, scale: number) => ({
    out,
    in: 2,
    weight: new Float32Array(out * 2).fill(scale),
    bias: new Float32Array(out).fill(out),
    quantized: {
      weight: new Int8Array(out * 2).fill(1),
      scale: new Float32Array([scale]),
      zeroPoint: null,
      activation: "dynamic-u8" as const,
    },
  });
  const fused = concatDense([part(2, 0.5), part(3, 0.25)])!;
  assert.deepEqual([fused.out, fused.in], [5, 2]);
  assert.deepEqual(Array.from(fused.quantized!.scale), [0.5, 0.5, 0.25, 0.25, 0.25]);
  assert.deepEqual(Array.from(fused.bias), [2, 2, 3, 3, 3]);
  const other = part(2, 1);
  other.quantized = { ...other.quantized, activation: "static" as "dynamic-u8" };
  assert.equal(concatDense([part(2, 0.5), other]), null);
});

Deno.test("bert: release ORT sessions", async () => {
  await releaseOrtSessions();
});

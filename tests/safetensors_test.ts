/**
 * Safetensors parsing and Hugging Face folder loading: the real all-MiniLM-L6-v2 safetensors
 * against its ONNX export, BERT/DistilBERT names with and without prefixes and with heads,
 * half-precision conversion, and clear errors on truncated or malformed files.
 */
import assert from "node:assert/strict";
import { bertWeightsFromSafetensors, type HfConfig, loadHfFolder } from "../formats/hf_folder.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { modelFiles } from "../hub/registry.ts";
import { parseSafetensors, readSafetensors, safeTensorToFloat32 } from "../formats/safetensors.ts";
import type { BertWeights, DenseWeight, NormWeight } from "../encoder/weights.ts";
import { type TestModelOptions, testModelWeights } from "./fixtures/write_test_model.ts";
import { assertSameArray, assertSameWeights } from "./model_asserts.ts";
import { inModelCache } from "./helpers.ts";

interface RawTensor {
  name: string;
  dtype: string;
  shape: number[];
  data: Uint8Array;
}

/** Serializes tensors in the safetensors layout (header, then data in order). */
function safetensorsBytes(tensors: RawTensor[], metadata = { format: "pt" }): Uint8Array {
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const t of tensors) {
    header[t.name] = {
      dtype: t.dtype,
      shape: t.shape,
      data_offsets: [offset, offset + t.data.byteLength],
    };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (json.length % 8)) % 8);
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let p = 8 + headerBytes.byteLength;
  for (const t of tensors) {
    out.set(t.data, p);
    p += t.data.byteLength;
  }
  return out;
}

function f32(name: string, shape: number[], values: Float32Array): RawTensor {
  return { name, dtype: "F32", shape, data: new Uint8Array(values.slice().buffer) };
}

/** The torch state dict of a set of weights, with Hugging Face names. */
function stateDict(w: BertWeights, prefix: string, oldNormNames = false): RawTensor[] {
  const h = w.config.hiddenSize;
  const distil = w.config.modelType === "distilbert";
  const out: RawTensor[] = [];
  const dense = (name: string, d: DenseWeight) => {
    out.push(f32(`${name}.weight`, [d.out, d.in], d.weight), f32(`${name}.bias`, [d.out], d.bias));
  };
  const norm = (name: string, n: NormWeight) => {
    out.push(
      f32(`${name}.${oldNormNames ? "gamma" : "weight"}`, [h], n.gamma),
      f32(`${name}.${oldNormNames ? "beta" : "bias"}`, [h], n.beta),
    );
  };
  const c = w.config;
  out.push(f32(`${prefix}embeddings.word_embeddings.weight`, [c.vocabSize, h], w.wordEmbeddings));
  out.push(
    f32(
      `${prefix}embeddings.position_embeddings.weight`,
      [c.maxPositionEmbeddings, h],
      w.positionEmbeddings,
    ),
  );
  if (w.tokenTypeEmbeddings) {
    out.push(
      f32(
        `${prefix}embeddings.token_type_embeddings.weight`,
        [c.typeVocabSize, h],
        w.tokenTypeEmbeddings,
      ),
    );
  }
  norm(`${prefix}embeddings.LayerNorm`, w.embeddingNorm);
  w.layers.forEach((l, i) => {
    if (distil) {
      const s = `${prefix}transformer.layer.${i}`;
      dense(`${s}.attention.q_lin`, l.query);
      dense(`${s}.attention.k_lin`, l.key);
      dense(`${s}.attention.v_lin`, l.value);
      dense(`${s}.attention.out_lin`, l.attentionOutput);
      norm(`${s}.sa_layer_norm`, l.attentionNorm);
      dense(`${s}.ffn.lin1`, l.intermediate);
      dense(`${s}.ffn.lin2`, l.output);
      norm(`${s}.output_layer_norm`, l.outputNorm);
    } else {
      const s = `${prefix}encoder.layer.${i}`;
      dense(`${s}.attention.self.query`, l.query);
      dense(`${s}.attention.self.key`, l.key);
      dense(`${s}.attention.self.value`, l.value);
      dense(`${s}.attention.output.dense`, l.attentionOutput);
      norm(`${s}.attention.output.LayerNorm`, l.attentionNorm);
      dense(`${s}.intermediate.dense`, l.intermediate);
      dense(`${s}.output.dense`, l.output);
      norm(`${s}.output.LayerNorm`, l.outputNorm);
    }
  });
  if (w.pooler) dense(`${prefix}pooler.dense`, w.pooler);
  if (w.preClassifier) dense("pre_classifier", w.preClassifier);
  if (w.head) {
    dense(w.head.kind === "question-answering" ? "qa_outputs" : "classifier", w.head.dense);
  }
  return out;
}

function hfConfig(w: BertWeights, architecture: string): HfConfig {
  const c = w.config;
  if (c.modelType === "distilbert") {
    return {
      model_type: "distilbert",
      architectures: [architecture],
      vocab_size: c.vocabSize,
      dim: c.hiddenSize,
      n_layers: c.numLayers,
      n_heads: c.numHeads,
      hidden_dim: c.intermediateSize,
      max_position_embeddings: c.maxPositionEmbeddings,
      activation: "gelu",
      pad_token_id: c.padTokenId,
    };
  }
  return {
    model_type: "bert",
    architectures: [architecture],
    vocab_size: c.vocabSize,
    hidden_size: c.hiddenSize,
    num_hidden_layers: c.numLayers,
    num_attention_heads: c.numHeads,
    intermediate_size: c.intermediateSize,
    max_position_embeddings: c.maxPositionEmbeddings,
    type_vocab_size: c.typeVocabSize,
    layer_norm_eps: c.layerNormEps,
    hidden_act: c.hiddenAct === "gelu" ? "gelu" : "gelu_new",
    pad_token_id: c.padTokenId,
    position_embedding_type: "absolute",
  };
}

const TINY = {
  vocabSize: 200,
  hiddenSize: 32,
  numHeads: 2,
  intermediateSize: 64,
  numLayers: 2,
  maxPositionEmbeddings: 16,
};

const MINILM = modelFiles("all-minilm-l6-v2");
const MINILM_ST = modelFiles("all-minilm-l6-v2-st");
const haveMiniLM = await inModelCache(MINILM.onnx, MINILM_ST.safetensors, MINILM_ST.config);

Deno.test({
  name: "safetensors: all-MiniLM-L6-v2 safetensors equals its ONNX export",
  ignore: !haveMiniLM,
  fn: async () => {
    const st = await loadHfFolder(MINILM_ST.dir);
    const onnx = await importOnnx(MINILM.onnx!);
    assert.equal(st.source.format, "safetensors");
    assert.equal(st.source.tokenizer, `${MINILM_ST.dir}/tokenizer.json`);
    // The safetensors file keeps the (unused) pooler, which the ONNX export dropped.
    assert.ok(st.pooler !== null && onnx.pooler === null);
    assertSameWeights({ ...st, pooler: null }, onnx);
  },
});

for (
  const [name, options, architecture, prefix] of [
    ["BERT, no prefix", {}, "BertModel", ""],
    [
      "BERT classification, bert. prefix",
      {
        task: "text-classification",
        numLabels: 3,
      },
      "BertForSequenceClassification",
      "bert.",
    ],
    [
      "BERT token classification",
      {
        task: "token-classification",
        numLabels: 4,
      },
      "BertForTokenClassification",
      "bert.",
    ],
    [
      "BERT question answering, tanh GELU",
      {
        task: "question-answering",
        config: { hiddenAct: "gelu_tanh" },
      },
      "BertForQuestionAnswering",
      "bert.",
    ],
    ["DistilBERT, no prefix", { preset: "distilbert" }, "DistilBertModel", ""],
    [
      "DistilBERT classification",
      {
        preset: "distilbert",
        task: "text-classification",
      },
      "DistilBertForSequenceClassification",
      "distilbert.",
    ],
  ] as [string, TestModelOptions, string, string][]
) {
  Deno.test(`hf folder: ${name}`, async () => {
    const expected = testModelWeights({
      ...options,
      seed: 11,
      config: { ...TINY, ...options.config },
    });
    const dir = await Deno.makeTempDir({ prefix: "sparsebert-hf-" });
    try {
      const config = hfConfig(expected, architecture);
      if (expected.head) {
        config.id2label = Object.fromEntries(
          Array.from({ length: expected.head.dense.out }, (_, i) => [String(i), `label_${i}`]),
        );
      }
      await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(config));
      await Deno.writeFile(
        `${dir}/model.safetensors`,
        safetensorsBytes(stateDict(expected, prefix)),
      );
      const w = await loadHfFolder(dir);
      assertSameWeights(w, expected);
      if (expected.head) {
        assert.deepEqual(
          w.head?.labels?.slice(0, 2),
          w.head?.kind === "question-answering" ? undefined : ["label_0", "label_1"],
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("hf folder: old gamma/beta names, sharded index, F16 and BF16 weights", async () => {
  const expected = testModelWeights({ seed: 5, config: TINY });
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-hf-" });
  try {
    await Deno.writeTextFile(`${dir}/config.json`, JSON.stringify(hfConfig(expected, "BertModel")));
    const tensors = stateDict(expected, "", true);
    const half = tensors.splice(0, tensors.length / 2);
    await Deno.writeFile(`${dir}/a.safetensors`, safetensorsBytes(half));
    await Deno.writeFile(`${dir}/b.safetensors`, safetensorsBytes(tensors));
    const weightMap = Object.fromEntries([
      ...half.map((t) => [t.name, "a.safetensors"]),
      ...tensors.map((t) => [t.name, "b.safetensors"]),
    ]);
    await Deno.writeTextFile(
      `${dir}/model.safetensors.index.json`,
      JSON.stringify({ weight_map: weightMap }),
    );
    assertSameWeights(await loadHfFolder(dir), expected);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
  // Half precision: exactly representable values convert exactly.
  const halves = new Uint16Array([0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x0000, 0x8000, 0x7c00]);
  const f16 = safeTensorToFloat32({
    name: "h",
    dtype: "F16",
    shape: [8],
    data: new Uint8Array(halves.buffer),
  });
  assertSameArray(
    f16,
    Float32Array.of(1, -2, 65504, 2 ** -24, 0.25 * (1 + 341 / 1024), 0, -0, Infinity),
    "F16",
  );
  const values = Float32Array.of(1.5, -3.25e-3, 1e30, -7);
  const bf = new Uint16Array(values.length);
  new Uint32Array(values.buffer).forEach((b, i) => bf[i] = b >>> 16);
  const bf16 = safeTensorToFloat32({
    name: "b",
    dtype: "BF16",
    shape: [4],
    data: new Uint8Array(bf.buffer),
  });
  const truncated = new Float32Array(
    new Uint32Array(values.buffer).map((b) => b & 0xffff0000).buffer,
  );
  assertSameArray(bf16, truncated, "BF16");
});

Deno.test("safetensors: truncated and malformed files fail with a clear message", async () => {
  const good = safetensorsBytes([
    f32("a", [2, 3], new Float32Array(6).fill(1)),
    f32("b", [4], new Float32Array(4).fill(2)),
  ]);
  const parsed = parseSafetensors(good, "good.safetensors");
  assert.deepEqual([...parsed.tensors.keys()], ["a", "b"]);
  assert.deepEqual(parsed.metadata, { format: "pt" });
  assert.throws(
    () => parseSafetensors(good.subarray(0, 5), "x.safetensors"),
    /"x.safetensors": only 5 bytes/,
  );
  assert.throws(
    () => parseSafetensors(good.subarray(0, 40), "x.safetensors"),
    /header of \d+ bytes runs past the end of the file .* truncated/,
  );
  assert.throws(
    () => parseSafetensors(good.subarray(0, good.length - 4), "x.safetensors"),
    /tensor "b" ends at byte 40 of a 36-byte data area: the file is truncated/,
  );
  const withHeader = (header: unknown) => {
    const json = new TextEncoder().encode(JSON.stringify(header));
    const out = new Uint8Array(8 + json.length + 64);
    new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
    out.set(json, 8);
    return out;
  };
  assert.throws(
    () => parseSafetensors(withHeader({ t: { dtype: "F12", shape: [1], data_offsets: [0, 4] } })),
    /tensor "t" has unknown dtype "F12"/,
  );
  assert.throws(
    () => parseSafetensors(withHeader({ t: { dtype: "F32", shape: [3], data_offsets: [0, 4] } })),
    /tensor "t" has 4 bytes, expected 12 for F32\[3\]/,
  );
  assert.throws(
    () =>
      parseSafetensors(withHeader({
        t: { dtype: "F32", shape: [2], data_offsets: [0, 8] },
        u: { dtype: "F32", shape: [2], data_offsets: [4, 12] },
      })),
    /tensors "t" and "u" overlap/,
  );
  const badJson = withHeader({});
  badJson.set(new TextEncoder().encode("{oops"), 8);
  assert.throws(() => parseSafetensors(badJson), /header is not valid JSON/);
  await assert.rejects(
    () => readSafetensors("/nonexistent/model.safetensors"),
    /Cannot read safetensors file "\/nonexistent\/model.safetensors"/,
  );
  assert.throws(
    () => safeTensorToFloat32({ name: "ids", dtype: "I64", shape: [1], data: new Uint8Array(8) }),
    /Tensor "ids" has dtype I64, expected a float dtype/,
  );
});

Deno.test("hf folder: wrong config or missing tensors fail naming them", async () => {
  const w = testModelWeights({ seed: 2, config: TINY });
  const tensors = parseSafetensors(safetensorsBytes(stateDict(w, "")), "m.safetensors");
  const config = hfConfig(w, "BertModel");
  assert.throws(
    () => bertWeightsFromSafetensors([tensors], { ...config, model_type: "roberta" }, "m"),
    /Unsupported model_type "roberta"/,
  );
  assert.throws(
    () => bertWeightsFromSafetensors([tensors], { ...config, hidden_act: "relu" }, "m"),
    /Unsupported activation "relu"/,
  );
  assert.throws(
    () => bertWeightsFromSafetensors([tensors], { ...config, num_hidden_layers: 3 }, "m"),
    /Tensor "encoder.layer.2.attention.self.query.weight" not found in "m"/,
  );
  assert.throws(
    () => bertWeightsFromSafetensors([tensors], { ...config, num_hidden_layers: 1 }, "m"),
    /"m" has more layers than num_hidden_layers = 1/,
  );
  assert.throws(
    () => bertWeightsFromSafetensors([tensors], { ...config, intermediate_size: 65 }, "m"),
    /Tensor "encoder.layer.0.intermediate.dense.weight" in "m" has shape \[64, 32\], expected \[65, 32\]/,
  );
  await assert.rejects(
    () => loadHfFolder("/nonexistent-model-dir"),
    /Cannot read Hugging Face config/,
  );
});

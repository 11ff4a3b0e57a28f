/**
 * ONNX import: the real MiniLM and bge-small exports, graph variants made by editing a written
 * model (weights behind Transpose, Mul scale, contrib Gelu/FastGelu nodes), and the errors for
 * truncated files, non-BERT graphs and broken patterns (quantized graphs: quantized_import_test.ts).
 */
import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import { importOnnx, importOnnxModel } from "../formats/onnx_import.ts";
import { decodeOnnxModel, readOnnxModel } from "../formats/onnx_proto.ts";
import { makeAttribute, makeTensor, tensorToFloat32 } from "../formats/onnx_tensors.ts";
import { DataType, type OnnxModel, type OnnxNode, type OnnxTensor } from "../formats/onnx_types.ts";
import { writeOnnxModel } from "../formats/onnx_write.ts";
import { modelFiles } from "../hub/registry.ts";
import { transpose2d } from "../encoder/weights.ts";
import { testModelWeights, writeTestModel } from "./fixtures/write_test_model.ts";
import { assertSameWeights } from "./model_asserts.ts";
import { inModelCache } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const MINILM_ST = modelFiles("all-minilm-l6-v2-st");
const MINILM_Q = modelFiles("all-minilm-l6-v2-q");
const BGE = modelFiles("bge-small-en-v15");

const haveMiniLM = await inModelCache(MINILM.onnx);
const haveMiniLMConfig = await inModelCache(MINILM_ST.config);
const haveMiniLMQ = await inModelCache(MINILM_Q.onnx);
const haveBge = await inModelCache(BGE.onnx);

Deno.test({
  name: "import: all-MiniLM-L6-v2 ONNX export matches its Hugging Face config",
  ignore: !haveMiniLM || !haveMiniLMConfig,
  fn: async () => {
    const w = await importOnnx(MINILM.onnx!);
    const hf = JSON.parse(await Deno.readTextFile(MINILM_ST.config!));
    assert.equal(w.config.modelType, hf.model_type);
    assert.equal(w.config.vocabSize, hf.vocab_size);
    assert.equal(w.config.hiddenSize, hf.hidden_size);
    assert.equal(w.config.numLayers, hf.num_hidden_layers);
    assert.equal(w.config.numHeads, hf.num_attention_heads);
    assert.equal(w.config.intermediateSize, hf.intermediate_size);
    assert.equal(w.config.maxPositionEmbeddings, hf.max_position_embeddings);
    assert.equal(w.config.typeVocabSize, hf.type_vocab_size);
    assert.equal(w.config.layerNormEps, hf.layer_norm_eps);
    assert.equal(w.config.hiddenAct, hf.hidden_act);
    assert.equal(w.pooler, null);
    assert.equal(w.head, null);
    assert.deepEqual(w.source.outputs, [{ name: "last_hidden_state", kind: "last_hidden_state" }]);
    assert.deepEqual(w.source.inputs, ["input_ids", "attention_mask", "token_type_ids"]);
    assert.equal(w.source.tokenizer, `${MINILM.dir}/tokenizer.json`);
  },
});

Deno.test({
  name: "import: bge-small-en-v1.5 ONNX export",
  ignore: !haveBge,
  fn: async () => {
    const model = await readOnnxModel(BGE.onnx!);
    const w = importOnnxModel(model, BGE.onnx!);
    // Independent facts from the graph: one Softmax per layer, hidden size in the output shape.
    const softmaxes = model.graph.nodes.filter((n) => n.opType === "Softmax").length;
    const hidden = model.graph.outputs[0].shape?.[2];
    assert.equal(w.config.numLayers, softmaxes);
    assert.equal(w.config.hiddenSize, hidden);
    assert.equal(w.config.hiddenSize % w.config.numHeads, 0);
    assert.equal(w.config.intermediateSize, 4 * w.config.hiddenSize);
    // Each Q weight is the transpose of the initializer feeding its MatMul (pattern, not names).
    const q = model.graph.nodes.find((n) =>
      n.name === "/encoder/layer.3/attention/self/query/MatMul"
    )!;
    const init = model.graph.initializers.find((t) => t.name === q.inputs[1])!;
    assert.match(init.name, /^onnx::MatMul_\d+$/);
    const expected = transpose2d(tensorToFloat32(init), init.dims[0], init.dims[1]);
    assert.deepEqual(w.layers[3].query.weight, expected);
  },
});

Deno.test({
  name: "import: a quantized graph imports with its int8 weights (see quantized_import_test.ts)",
  ignore: !haveMiniLMQ,
  fn: async () => {
    const w = await importOnnx(MINILM_Q.onnx!);
    assert.equal(w.layers[0].query.quantized?.form, "MatMulInteger");
  },
});

Deno.test("import: a truncated ONNX file fails naming the file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-import-" });
  try {
    const path = `${dir}/model.onnx`;
    await writeTestModel(path, { config: { vocabSize: 300, numLayers: 1 } });
    const bytes = await Deno.readFile(path);
    for (const cut of [7, Math.floor(bytes.length / 2), bytes.length - 1]) {
      const truncated = `${dir}/truncated-${cut}.onnx`;
      await Deno.writeFile(truncated, bytes.subarray(0, cut));
      await assert.rejects(
        () => importOnnx(truncated),
        (err: Error) => {
          assert.ok(err.message.includes(truncated), err.message);
          assert.match(err.message, /truncated or corrupt/);
          return true;
        },
      );
    }
    await assert.rejects(() => importOnnx(`${dir}/missing.onnx`), /Cannot read ONNX model/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

function graphModel(
  nodes: OnnxNode[],
  initializers: OnnxTensor[],
  inputs: string[],
  outputs: string[],
): OnnxModel {
  return {
    irVersion: 8,
    opsetImport: [{ domain: "", version: 17 }],
    producerName: "test",
    producerVersion: "",
    domain: "",
    modelVersion: 0,
    metadata: {},
    graph: {
      name: "g",
      nodes,
      initializers,
      inputs: inputs.map((name) => ({ name, elemType: DataType.INT64, shape: ["b", "s"] })),
      outputs: outputs.map((name) => ({ name, elemType: DataType.FLOAT, shape: null })),
      valueInfo: [],
    },
  };
}

function node(name: string, opType: string, inputs: string[], outputs: string[]): OnnxNode {
  return { name, opType, domain: "", inputs, outputs, attributes: [] };
}

Deno.test("import: non-BERT graphs fail naming the node and what was expected", async () => {
  // A one-op graph: no embedding lookup at all.
  const relu = graphModel([node("only_relu", "Relu", ["x"], ["y"])], [], ["x"], ["y"]);
  assert.throws(
    () => importOnnxModel(relu, "relu.onnx"),
    /Cannot import ONNX model "relu.onnx" as a BERT encoder: expected a graph input "input_ids"/,
  );
  // An embedding lookup followed by something that is not BERT.
  const table = makeTensor("table", DataType.FLOAT, [10, 4], new Array(40).fill(0.5));
  const lookup = graphModel(
    [node("lookup", "Gather", ["table", "input_ids"], ["e"]), node("act", "Relu", ["e"], ["y"])],
    [table],
    ["input_ids"],
    ["y"],
  );
  assert.throws(
    () => importOnnxModel(lookup, "lookup.onnx"),
    /at node "lookup" \(Gather\): expected an Add of the position embeddings .* found "act" \(Relu\)/,
  );
  // The file path is named for graphs read from disk too.
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-import-" });
  try {
    await writeOnnxModel(`${dir}/relu.onnx`, relu);
    await assert.rejects(() => importOnnx(`${dir}/relu.onnx`), new RegExp(`${dir}/relu.onnx`));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// Variants made by editing a written model.

const TINY = {
  vocabSize: 300,
  hiddenSize: 64,
  numHeads: 4,
  intermediateSize: 128,
  numLayers: 2,
  maxPositionEmbeddings: 32,
};

async function tinyModel(dir: string): Promise<{ path: string; model: OnnxModel }> {
  const path = `${dir}/tiny.onnx`;
  await writeTestModel(path, { seed: 3, config: TINY });
  return { path, model: await readOnnxModel(path) };
}

/** Writes `model` and returns ORT's last_hidden_state for a fixed padded batch. */
async function runOrt(path: string, model: OnnxModel): Promise<Float32Array> {
  await writeOnnxModel(path, model);
  const session = await ort.InferenceSession.create(path);
  try {
    const t = (v: number[]) =>
      new ort.Tensor("int64", BigInt64Array.from(v, (x) => BigInt(x)), [2, 4]);
    const out = await session.run({
      input_ids: t([101, 5, 9, 102, 101, 7, 102, 0]),
      attention_mask: t([1, 1, 1, 1, 1, 1, 1, 0]),
      token_type_ids: t([0, 0, 1, 1, 0, 0, 0, 0]),
    });
    return out.last_hidden_state.data as Float32Array;
  } finally {
    await session.release();
  }
}

function maxDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}

function withoutNodes(model: OnnxModel, drop: Set<OnnxNode>, add: OnnxNode[]): OnnxModel {
  return {
    ...model,
    graph: { ...model.graph, nodes: [...model.graph.nodes.filter((n) => !drop.has(n)), ...add] },
  };
}

/** Nodes in topological order (ORT requires it; edits append nodes at the end). */
function sorted(model: OnnxModel): OnnxModel {
  const produced = new Set([
    ...model.graph.inputs.map((i) => i.name),
    ...model.graph.initializers.map((t) => t.name),
  ]);
  const pending = [...model.graph.nodes];
  const out: OnnxNode[] = [];
  while (pending.length) {
    const i = pending.findIndex((n) => n.inputs.every((x) => !x || produced.has(x)));
    assert.ok(i >= 0, "graph has a cycle or a dangling input");
    const [n] = pending.splice(i, 1);
    out.push(n);
    for (const o of n.outputs) produced.add(o);
  }
  return { ...model, graph: { ...model.graph, nodes: out } };
}

Deno.test("import: MatMul weights behind a Transpose, Mul instead of Div scale", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-variant-" });
  try {
    const { path, model } = await tinyModel(dir);
    const reference = await runOrt(`${dir}/ref.onnx`, model);
    const inits = new Map(model.graph.initializers.map((t) => [t.name, t]));
    const added: OnnxNode[] = [];
    const newInits: OnnxTensor[] = [];
    const drop = new Set<OnnxNode>();
    for (const n of model.graph.nodes) {
      const w = inits.get(n.inputs[1]);
      if (n.opType === "MatMul" && w) {
        const t = transpose2d(tensorToFloat32(w), w.dims[0], w.dims[1]);
        newInits.push(makeTensor(`${w.name}_t`, DataType.FLOAT, [w.dims[1], w.dims[0]], t));
        added.push({
          ...node(`${n.name}_transpose`, "Transpose", [`${w.name}_t`], [w.name]),
          attributes: [makeAttribute("perm", [1, 0])],
        });
        inits.delete(w.name);
      }
      if (n.opType === "Div" && n.name.endsWith("attention/self/Div")) {
        const c = model.graph.nodes.find((m) => m.outputs[0] === n.inputs[1])!;
        const value = tensorToFloat32(c.attributes[0].t!)[0];
        const inv = `${n.name}_inverse`;
        added.push({
          ...node(`${n.name}_const`, "Constant", [], [inv]),
          attributes: [makeAttribute("value", makeTensor("", DataType.FLOAT, [], [1 / value]))],
        });
        added.push(node(`${n.name}_mul`, "Mul", [n.inputs[0], inv], n.outputs));
        drop.add(n);
        drop.add(c);
      }
    }
    assert.ok(drop.size === 2 * TINY.numLayers, "one attention Div per layer edited");
    const unsorted = withoutNodes(model, drop, added);
    unsorted.graph.initializers = [...inits.values(), ...newInits];
    const edited = sorted(unsorted);
    const out = await runOrt(`${dir}/edited.onnx`, edited);
    assert.ok(maxDiff(out, reference) < 1e-5, "the edit keeps the function");
    assertSameWeights(importOnnxModel(edited, path), testModelWeights({ seed: 3, config: TINY }));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("import: com.microsoft Gelu and FastGelu (with bias) nodes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-variant-" });
  try {
    const { path, model } = await tinyModel(dir);
    const reference = await runOrt(`${dir}/ref.onnx`, model);
    const expected = testModelWeights({ seed: 3, config: TINY });
    for (const op of ["Gelu", "FastGelu"] as const) {
      const drop = new Set<OnnxNode>();
      const added: OnnxNode[] = [];
      for (let l = 0; l < TINY.numLayers; l++) {
        const scope = `/encoder/layer.${l}/intermediate/`;
        const region = model.graph.nodes.filter((n) =>
          n.name.startsWith(`${scope}intermediate_act_fn/`)
        );
        const last = region.find((n) => n.name.endsWith("/Mul_1"))!;
        const biasAdd = model.graph.nodes.find((n) => n.name === `${scope}dense/Add`)!;
        region.forEach((n) => drop.add(n));
        const inputs = op === "Gelu"
          ? [biasAdd.outputs[0]]
          : [biasAdd.inputs[1], biasAdd.inputs[0]]; // FastGelu(MatMul output, bias)
        if (op === "FastGelu") drop.add(biasAdd);
        added.push({ ...node(`${scope}${op}`, op, inputs, last.outputs), domain: "com.microsoft" });
      }
      const edited = sorted(withoutNodes(model, drop, added));
      edited.opsetImport = [...model.opsetImport, { domain: "com.microsoft", version: 1 }];
      const out = await runOrt(`${dir}/${op}.onnx`, edited);
      const w = importOnnxModel(edited, path);
      if (op === "Gelu") {
        assert.ok(maxDiff(out, reference) < 1e-4, "Gelu is the exact GELU");
        assertSameWeights(w, expected);
      } else {
        // FastGelu is the tanh approximation; the bias moved into it.
        assert.equal(w.config.hiddenAct, "gelu_tanh");
        assert.deepEqual(w.layers[1].intermediate.bias, expected.layers[1].intermediate.bias);
        assert.deepEqual(w.layers[1].intermediate.weight, expected.layers[1].intermediate.weight);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("import: broken patterns fail naming the node", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-variant-" });
  try {
    const { path } = await tinyModel(dir);
    const bytes = await Deno.readFile(path);
    const edit = (fn: (m: OnnxModel) => void): OnnxModel => {
      const m = decodeOnnxModel(bytes, path);
      fn(m);
      return m;
    };
    const byName = (m: OnnxModel, name: string) => m.graph.nodes.find((n) => n.name === name)!;
    // Softmax replaced by Sigmoid.
    const sigmoid = edit((m) => {
      byName(m, "/encoder/layer.1/attention/self/Softmax").opType = "Sigmoid";
    });
    assert.throws(
      () => importOnnxModel(sigmoid, path),
      /at node "\/encoder\/layer.1\/attention\/self\/Sigmoid" \(Sigmoid\)|node "\/encoder\/layer.1\/attention\/self\/Softmax" \(Sigmoid\): expected the attention scores/,
    );
    // A wrong attention scale.
    const scale = edit((m) => {
      const div = byName(m, "/encoder/layer.0/attention/self/Div");
      const c = m.graph.nodes.find((n) => n.outputs[0] === div.inputs[1])!;
      c.attributes[0].t = makeTensor("", DataType.FLOAT, [], [7]);
    });
    assert.throws(
      () => importOnnxModel(scale, path),
      /node "\/encoder\/layer.0\/attention\/self\/MatMul" \(MatMul\): expected the attention scores scaled by 1\/sqrt\(16\)/,
    );
    // ReLU instead of GELU.
    const relu = edit((m) => {
      byName(m, "/encoder/layer.0/intermediate/intermediate_act_fn/Erf").opType = "Tanh";
    });
    assert.throws(
      () => importOnnxModel(relu, path),
      /expected a GELU .* found Add, Div, Mul, Mul, Tanh/,
    );
    // A missing residual connection.
    const residual = edit((m) => {
      const add = byName(m, "/encoder/layer.0/output/Add");
      add.inputs[1] = add.inputs[0];
    });
    assert.throws(
      () => importOnnxModel(residual, path),
      /node "\/encoder\/layer.0\/output\/dense\/Add" \(Add\): expected the residual Add/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

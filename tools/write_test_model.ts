/**
 * Writes BERT-family ONNX graphs in the Hugging Face / Optimum export layout with seeded random
 * weights, so that every runtime can run the same BERT-Mini / DistilBERT / Base / Large file.
 *
 * ```sh
 * deno run -A tools/write_test_model.ts --preset bert-mini --out .cache/test-models/bert-mini.onnx
 * deno run -A tools/write_test_model.ts --preset bert-base --sparsity 0.9 --pattern 4x1 --out b.onnx
 * ```
 *
 * The graph mirrors what `torch.onnx.export` of a Hugging Face model produces: dynamic-shape
 * Reshape subgraphs (Shape/Gather/Unsqueeze/Concat), `onnx::MatMul_N` weight names, decomposed
 * (or fused) LayerNorm, Erf GELU, the `(1 - mask) * min` (or `Where`) attention mask. Weights
 * are produced one tensor at a time while the file is written, so memory stays near the size
 * of the largest tensor.
 *
 * @module
 */

import { parseArgs } from "node:util";
import {
  DataType,
  type LazyTensor,
  makeAttribute,
  makeTensor,
  type OnnxAttribute,
  type OnnxModelInit,
  type OnnxNode,
  type OnnxTensor,
  type OnnxValueInfo,
  writeOnnxModel,
} from "../models/onnx_proto.ts";
import {
  type BertConfig,
  type BertLayerWeights,
  type BertWeights,
  type DenseWeight,
  type HeadWeights,
  type NormWeight,
  transpose2d,
} from "../models/weights.ts";

/** Named configurations. */
export const PRESETS: Readonly<Record<string, BertConfig>> = Object.freeze({
  "bert-mini": bertConfig(4, 256, 4),
  "bert-small": bertConfig(4, 512, 8),
  "bert-base": bertConfig(12, 768, 12),
  "bert-large": bertConfig(24, 1024, 16),
  "distilbert": { ...bertConfig(6, 768, 12), modelType: "distilbert", typeVocabSize: 0 },
});

function bertConfig(layers: number, hidden: number, heads: number): BertConfig {
  return {
    modelType: "bert",
    vocabSize: 30522,
    hiddenSize: hidden,
    numLayers: layers,
    numHeads: heads,
    intermediateSize: 4 * hidden,
    maxPositionEmbeddings: 512,
    typeVocabSize: 2,
    layerNormEps: 1e-12,
    hiddenAct: "gelu",
    padTokenId: 0,
  };
}

/** Task heads the writer can add. */
export type TestModelTask =
  | "feature-extraction"
  | "text-classification"
  | "token-classification"
  | "question-answering";

/** Options of the test-model writer. */
export interface TestModelOptions {
  /** A key of {@linkcode PRESETS} (default `bert-mini`). */
  preset?: string;
  /** Overrides of the preset's config (e.g. a smaller `vocabSize` for fast tests). */
  config?: Partial<BertConfig>;
  /** PRNG seed (default 0). */
  seed?: number;
  /** Fraction of zeros in the encoder linear weights (default 0). */
  sparsity?: number;
  /** `4x1`: 4 consecutive output channels x 1 input channel zeroed together (default). */
  pattern?: "4x1" | "unstructured";
  /** ONNX opset, 11 to 18 (default 14). */
  opset?: number;
  /** LayerNorm form (default `decomposed`; `fused` needs opset 17+). */
  layerNorm?: "decomposed" | "fused";
  /** Attention mask form (default `sub` for BERT, `where` for DistilBERT). */
  maskStyle?: "sub" | "where";
  /**
   * `eager` (default): the Hugging Face eager attention. `sdpa`: torch's decomposition of
   * `scaled_dot_product_attention` (sqrt of the scale on Q and K^T, computed from the shape,
   * and the SDPA float mask built with Where).
   */
  attention?: "eager" | "sdpa";
  /** Task head (default `feature-extraction`: no head, output `last_hidden_state`). */
  task?: TestModelTask;
  /** Labels of a classification head (default 2, or 9 for token classification). */
  numLabels?: number;
  /** `export`: torch-style names (default); `anonymous`: every initializer `onnx::Op_N`. */
  names?: "export" | "anonymous";
}

interface Resolved {
  config: BertConfig;
  seed: number;
  sparsity: number;
  pattern: "4x1" | "unstructured";
  opset: number;
  layerNorm: "decomposed" | "fused";
  maskStyle: "sub" | "where";
  attention: "eager" | "sdpa";
  task: TestModelTask;
  numLabels: number;
  names: "export" | "anonymous";
}

function resolve(options: TestModelOptions): Resolved {
  const presetName = options.preset ?? "bert-mini";
  const preset = PRESETS[presetName];
  if (preset === undefined) {
    throw new Error(
      `Unknown preset "${presetName}": known presets are ${Object.keys(PRESETS).join(", ")}`,
    );
  }
  const config: BertConfig = { ...preset, ...options.config };
  if (config.modelType === "distilbert") config.typeVocabSize = 0;
  const checkInt = (name: string, v: number, min: number): void => {
    if (!Number.isSafeInteger(v) || v < min) {
      throw new Error(`Invalid config: ${name} must be an integer >= ${min}, got ${v}`);
    }
  };
  checkInt("vocabSize", config.vocabSize, 1);
  checkInt("hiddenSize", config.hiddenSize, 1);
  checkInt("numLayers", config.numLayers, 1);
  checkInt("numHeads", config.numHeads, 1);
  checkInt("intermediateSize", config.intermediateSize, 1);
  checkInt("maxPositionEmbeddings", config.maxPositionEmbeddings, 1);
  checkInt("typeVocabSize", config.typeVocabSize, 0);
  if (config.hiddenSize % config.numHeads !== 0) {
    throw new Error(
      `Invalid config: hiddenSize ${config.hiddenSize} is not a multiple of numHeads ${config.numHeads}`,
    );
  }
  const sparsity = options.sparsity ?? 0;
  if (!(sparsity >= 0 && sparsity < 1)) {
    throw new Error(`Invalid sparsity ${sparsity}: expected a fraction in [0, 1)`);
  }
  const pattern = options.pattern ?? "4x1";
  if (pattern !== "4x1" && pattern !== "unstructured") {
    throw new Error(`Invalid sparsity pattern "${pattern}": expected "4x1" or "unstructured"`);
  }
  if (pattern === "4x1" && sparsity > 0) {
    for (
      const [name, out] of [["hiddenSize", config.hiddenSize], [
        "intermediateSize",
        config.intermediateSize,
      ]] as const
    ) {
      if (out % 4 !== 0) {
        throw new Error(`Pattern 4x1 needs ${name} to be a multiple of 4, got ${out}`);
      }
    }
  }
  const opset = options.opset ?? 14;
  if (!Number.isInteger(opset) || opset < 11 || opset > 18) {
    throw new Error(`Unsupported opset ${opset}: the writer supports opsets 11 to 18`);
  }
  const layerNorm = options.layerNorm ?? "decomposed";
  if (layerNorm === "fused" && opset < 17) {
    throw new Error(`Fused LayerNormalization needs opset 17 or later, got opset ${opset}`);
  }
  if (config.hiddenAct !== "gelu" && config.hiddenAct !== "gelu_tanh") {
    throw new Error(`Unsupported hiddenAct "${config.hiddenAct}": expected "gelu" or "gelu_tanh"`);
  }
  const task = options.task ?? "feature-extraction";
  const tasks: TestModelTask[] = [
    "feature-extraction",
    "text-classification",
    "token-classification",
    "question-answering",
  ];
  if (!tasks.includes(task)) {
    throw new Error(`Unknown task "${task}": expected one of ${tasks.join(", ")}`);
  }
  const numLabels = task === "question-answering"
    ? 2
    : options.numLabels ?? (task === "token-classification" ? 9 : 2);
  checkInt("numLabels", numLabels, 1);
  return {
    config,
    seed: options.seed ?? 0,
    sparsity,
    pattern,
    opset,
    layerNorm,
    maskStyle: options.maskStyle ?? (config.modelType === "distilbert" ? "where" : "sub"),
    attention: options.attention ?? "eager",
    task,
    numLabels,
    names: options.names ?? "export",
  };
}

/** The config a set of options resolves to. */
export function testModelConfig(options: TestModelOptions = {}): BertConfig {
  return resolve(options).config;
}

// ---------------------------------------------------------------------------------------------
// Deterministic weights: every tensor has its own xoshiro128** stream seeded from (seed, key).

function hashKey(seed: number, key: string): number {
  let h = (0x811c9dc5 ^ seed) >>> 0;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193) >>> 0;
  return h;
}

class Rng {
  #s = new Uint32Array(4);
  constructor(seed: number) {
    let x = seed >>> 0;
    for (let i = 0; i < 4; i++) {
      // splitmix32
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.#s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  /** Next uint32. */
  next(): number {
    const s = this.#s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }
  /** Uniform in [0, 1). */
  uniform(): number {
    return this.next() / 4294967296;
  }
  /** Uniform integer in [0, n). */
  below(n: number): number {
    return Math.floor(this.uniform() * n);
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** `n` values of mean `mean` and standard deviation `std` (uniform distribution). */
function fill(seed: number, key: string, n: number, mean: number, std: number): Float32Array {
  const rng = new Rng(hashKey(seed, key));
  const half = std * Math.sqrt(3);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = mean + (2 * rng.uniform() - 1) * half;
  return out;
}

/** Zeroes an exact fraction of a torch-layout `[out, in]` weight. */
function sparsify(
  w: Float32Array,
  out: number,
  inn: number,
  r: Resolved,
  key: string,
): void {
  if (r.sparsity === 0) return;
  const rng = new Rng(hashKey(r.seed, `${key}#mask`));
  const blocks = r.pattern === "4x1" ? (out / 4) * inn : out * inn;
  const zeros = Math.round(r.sparsity * blocks);
  // Partial Fisher-Yates: the first `zeros` entries of a random permutation.
  const perm = new Uint32Array(blocks);
  for (let i = 0; i < blocks; i++) perm[i] = i;
  for (let i = 0; i < zeros; i++) {
    const j = i + rng.below(blocks - i);
    const tmp = perm[i];
    perm[i] = perm[j];
    perm[j] = tmp;
    const b = perm[i];
    if (r.pattern === "4x1") {
      const row = (b / inn | 0) * 4;
      const col = b % inn;
      for (let k = 0; k < 4; k++) w[(row + k) * inn + col] = 0;
    } else {
      w[b] = 0;
    }
  }
}

function denseWeight(r: Resolved, key: string, out: number, inn: number, sparse: boolean) {
  const weight = fill(r.seed, `${key}.weight`, out * inn, 0, 0.02);
  if (sparse) sparsify(weight, out, inn, r, key);
  return weight;
}

function denseBias(r: Resolved, key: string, out: number): Float32Array {
  return fill(r.seed, `${key}.bias`, out, 0, 0.02);
}

function dense(r: Resolved, key: string, out: number, inn: number, sparse: boolean): DenseWeight {
  return {
    out,
    in: inn,
    weight: denseWeight(r, key, out, inn, sparse),
    bias: denseBias(r, key, out),
  };
}

function norm(r: Resolved, key: string): NormWeight {
  const h = r.config.hiddenSize;
  return {
    gamma: fill(r.seed, `${key}.gamma`, h, 1, 0.05),
    beta: fill(r.seed, `${key}.beta`, h, 0, 0.02),
    eps: r.config.layerNormEps,
  };
}

/** Generators for each tensor, so that the file writer and the in-memory copy agree. */
function generators(r: Resolved) {
  const c = r.config;
  const h = c.hiddenSize;
  return {
    word: () => fill(r.seed, "embeddings.word", c.vocabSize * h, 0, 0.02),
    position: () => fill(r.seed, "embeddings.position", c.maxPositionEmbeddings * h, 0, 0.02),
    tokenType: () => fill(r.seed, "embeddings.token_type", c.typeVocabSize * h, 0, 0.02),
    embeddingNorm: () => norm(r, "embeddings.norm"),
    linear: (layer: number, which: string) => {
      const out = which === "intermediate" ? c.intermediateSize : h;
      const inn = which === "output" ? c.intermediateSize : h;
      return dense(r, `layer.${layer}.${which}`, out, inn, true);
    },
    linearBias: (layer: number, which: string) => {
      const out = which === "intermediate" ? c.intermediateSize : h;
      return denseBias(r, `layer.${layer}.${which}`, out);
    },
    norm: (layer: number, which: string) => norm(r, `layer.${layer}.${which}`),
    pooler: () => dense(r, "pooler", h, h, false),
    head: () => dense(r, "head", r.numLabels, h, false),
  };
}

const LINEARS = ["query", "key", "value", "attentionOutput", "intermediate", "output"] as const;

/**
 * The weights a test model holds, in memory (torch layout), exactly as
 * {@linkcode writeTestModel} writes them. Use for small configs only.
 */
export function testModelWeights(options: TestModelOptions = {}): BertWeights {
  const r = resolve(options);
  const g = generators(r);
  const layers: BertLayerWeights[] = [];
  for (let l = 0; l < r.config.numLayers; l++) {
    layers.push({
      query: g.linear(l, "query"),
      key: g.linear(l, "key"),
      value: g.linear(l, "value"),
      attentionOutput: g.linear(l, "attentionOutput"),
      attentionNorm: g.norm(l, "attentionNorm"),
      intermediate: g.linear(l, "intermediate"),
      output: g.linear(l, "output"),
      outputNorm: g.norm(l, "outputNorm"),
    });
  }
  const distil = r.config.modelType === "distilbert";
  const withPooler = r.task === "text-classification";
  let head: HeadWeights | null = null;
  if (r.task !== "feature-extraction") {
    head = {
      kind: r.task === "text-classification" ? "classification" : r.task,
      dense: g.head(),
    };
  }
  return {
    config: r.config,
    wordEmbeddings: g.word(),
    positionEmbeddings: g.position(),
    tokenTypeEmbeddings: r.config.typeVocabSize > 0 ? g.tokenType() : null,
    embeddingNorm: g.embeddingNorm(),
    layers,
    pooler: withPooler && !distil ? g.pooler() : null,
    preClassifier: withPooler && distil ? g.pooler() : null,
    head,
    source: { format: "onnx", path: "" },
  };
}

// ---------------------------------------------------------------------------------------------
// Graph construction

const FLOAT32_MIN = -3.4028234663852886e38;

class GraphBuilder {
  readonly nodes: OnnxNode[] = [];
  readonly initializers: (OnnxTensor | LazyTensor)[] = [];
  #counts = new Map<string, number>();
  #anon = 0;
  constructor(readonly opset: number, readonly anonymous: boolean, public nextId: number) {}

  #unique(scope: string, op: string): string {
    const key = `${scope}/${op}`;
    const k = this.#counts.get(key) ?? 0;
    this.#counts.set(key, k + 1);
    return k === 0 ? key : `${key}_${k}`;
  }

  /** Adds a node named like torch's exporter; returns its output names. */
  node(
    scope: string,
    op: string,
    inputs: string[],
    attributes: OnnxAttribute[] = [],
    outputs = 1,
    outputNames?: string[],
  ): string[] {
    const name = this.#unique(scope, op);
    const outs = outputNames ??
      Array.from({ length: outputs }, (_, i) => `${name}_output_${i}`);
    this.nodes.push({ name, opType: op, domain: "", inputs, outputs: outs, attributes });
    return outs;
  }

  /** One-output node. */
  op(scope: string, op: string, inputs: string[], attributes: OnnxAttribute[] = []): string {
    return this.node(scope, op, inputs, attributes)[0];
  }

  /** A Constant node holding a tensor. */
  constant(scope: string, dataType: number, dims: number[], values: number[]): string {
    return this.op(scope, "Constant", [], [
      makeAttribute("value", makeTensor("", dataType, dims, values)),
    ]);
  }

  scalar(scope: string, value: number): string {
    return this.constant(scope, DataType.FLOAT, [], [value]);
  }

  ints(scope: string, values: number[]): string {
    return this.constant(scope, DataType.INT64, [values.length], values);
  }

  /** An initializer; anonymous mode renames it `onnx::<Op>_N`. */
  init(name: string, tensor: OnnxTensor | LazyTensor, consumerOp: string): string {
    if (this.anonymous) name = `onnx::${consumerOp}_${this.#anon++ + 9000}`;
    tensor.name = name;
    this.initializers.push(tensor);
    return name;
  }

  lazyFloat(name: string, dims: number[], produce: () => Float32Array, op: string): string {
    return this.init(name, {
      name,
      dataType: DataType.FLOAT,
      dims,
      produce: () => new Uint8Array(produce().buffer),
    }, op);
  }

  matmulWeight(dims: number[], produce: () => Float32Array): string {
    const name = `onnx::MatMul_${this.nextId++}`;
    return this.lazyFloat(name, dims, produce, "MatMul");
  }

  unsqueeze(scope: string, x: string, axes: number[]): string {
    if (this.opset >= 13) return this.op(scope, "Unsqueeze", [x, this.ints(scope, axes)]);
    return this.op(scope, "Unsqueeze", [x], [makeAttribute("axes", axes)]);
  }

  squeeze(scope: string, x: string, axes: number[], outputName?: string): string {
    const outs = outputName ? [outputName] : undefined;
    if (this.opset >= 13) {
      return this.node(scope, "Squeeze", [x, this.ints(scope, axes)], [], 1, outs)[0];
    }
    return this.node(scope, "Squeeze", [x], [makeAttribute("axes", axes)], 1, outs)[0];
  }

  reduceMean(scope: string, x: string): string {
    if (this.opset >= 18) {
      return this.op(scope, "ReduceMean", [x, this.ints(scope, [-1])], [
        makeAttribute("keepdims", 1),
      ]);
    }
    return this.op(scope, "ReduceMean", [x], [makeAttribute("axes", [-1])]);
  }

  /** `dim` of a value's shape, as a 1-D int64 tensor (Shape -> Gather -> Unsqueeze). */
  dim(scope: string, x: string, index: number): string {
    const shape = this.op(scope, "Shape", [x]);
    const idx = this.constant(scope, DataType.INT64, [], [index]);
    const d = this.op(scope, "Gather", [shape, idx], [makeAttribute("axis", 0)]);
    return this.unsqueeze(scope, d, [0]);
  }
}

function layerNorm(
  b: GraphBuilder,
  r: Resolved,
  scope: string,
  x: string,
  gamma: string,
  beta: string,
  outName?: string,
): string {
  const outs = outName ? [outName] : undefined;
  if (r.layerNorm === "fused") {
    return b.node(
      scope,
      "LayerNormalization",
      [x, gamma, beta],
      [
        makeAttribute("axis", -1),
        makeAttribute("epsilon", r.config.layerNormEps, "float"),
      ],
      1,
      outs,
    )[0];
  }
  const mean = b.reduceMean(scope, x);
  const d = b.op(scope, "Sub", [x, mean]);
  const sq = b.op(scope, "Pow", [d, b.scalar(scope, 2)]);
  const v = b.reduceMean(scope, sq);
  const ve = b.op(scope, "Add", [v, b.scalar(scope, r.config.layerNormEps)]);
  const s = b.op(scope, "Sqrt", [ve]);
  const n = b.op(scope, "Div", [d, s]);
  const m = b.op(scope, "Mul", [n, gamma]);
  return b.node(scope, "Add", [m, beta], [], 1, outs)[0];
}

/**
 * Builds the ONNX model of a test configuration. Initializers are lazy: their values are
 * generated while the file is written.
 */
export function buildTestModel(options: TestModelOptions = {}): OnnxModelInit {
  const r = resolve(options);
  const c = r.config;
  const h = c.hiddenSize;
  const headSize = h / c.numHeads;
  const distil = c.modelType === "distilbert";
  const g = generators(r);
  const b = new GraphBuilder(r.opset, r.names === "anonymous", 1000 + 17 * c.numLayers);
  const withTask = r.task !== "feature-extraction";
  const root = withTask ? (distil ? "/distilbert" : "/bert") : "";
  const prefix = withTask ? (distil ? "distilbert." : "bert.") : "";
  const float = (name: string, dims: number[], fn: () => Float32Array, op: string): string =>
    b.lazyFloat(prefix + name, dims, fn, op);
  // Norm parameters are generated on demand; each norm is small.
  const normInits = (name: string, fn: () => NormWeight): [string, string] => [
    float(`${name}.weight`, [h], () => fn().gamma, "Mul"),
    float(`${name}.bias`, [h], () => fn().beta, "Add"),
  ];

  // Extended attention mask.
  const maskScope = root;
  let maskAdd: string | null = null;
  let maskCond: string | null = null;
  if (r.attention === "sdpa") {
    const u1 = b.unsqueeze(maskScope, "attention_mask", [1]);
    const u2 = b.unsqueeze(maskScope, u1, [2]);
    const cast = b.op(maskScope, "Cast", [u2], [makeAttribute("to", DataType.FLOAT)]);
    const inverted = b.op(maskScope, "Sub", [b.scalar(maskScope, 1), cast]);
    const cond = b.op(maskScope, "Cast", [inverted], [makeAttribute("to", DataType.BOOL)]);
    maskAdd = b.op(maskScope, "Where", [cond, b.scalar(maskScope, FLOAT32_MIN), inverted]);
  } else if (r.maskStyle === "sub") {
    const u1 = b.unsqueeze(maskScope, "attention_mask", [1]);
    const u2 = b.unsqueeze(maskScope, u1, [2]);
    const cast = b.op(maskScope, "Cast", [u2], [makeAttribute("to", DataType.FLOAT)]);
    const sub = b.op(maskScope, "Sub", [b.scalar(maskScope, 1), cast]);
    maskAdd = b.op(maskScope, "Mul", [sub, b.scalar(maskScope, FLOAT32_MIN)]);
  } else {
    const zero = b.constant(maskScope, DataType.INT64, [], [0]);
    const eq = b.op(maskScope, "Equal", ["attention_mask", zero]);
    const u1 = b.unsqueeze(maskScope, eq, [1]);
    maskCond = b.unsqueeze(maskScope, u1, [2]);
  }

  // Embeddings.
  const es = `${root}/embeddings`;
  const seqLen = b.dim(es, "input_ids", 1);
  const positionIds = b.init(
    `${prefix}embeddings.position_ids`,
    makeTensor(
      "",
      DataType.INT64,
      [1, c.maxPositionEmbeddings],
      Array.from({ length: c.maxPositionEmbeddings }, (_, i) => i),
    ),
    "Slice",
  );
  const sliced = b.op(es, "Slice", [
    positionIds,
    b.ints(es, [0]),
    seqLen,
    b.ints(es, [1]),
    b.ints(es, [1]),
  ]);
  const wordTable = float(
    "embeddings.word_embeddings.weight",
    [c.vocabSize, h],
    g.word,
    "Gather",
  );
  let sum = b.op(`${es}/word_embeddings`, "Gather", [wordTable, "input_ids"]);
  if (c.typeVocabSize > 0) {
    const ttTable = float(
      "embeddings.token_type_embeddings.weight",
      [c.typeVocabSize, h],
      g.tokenType,
      "Gather",
    );
    const tt = b.op(`${es}/token_type_embeddings`, "Gather", [ttTable, "token_type_ids"]);
    sum = b.op(es, "Add", [sum, tt]);
  }
  const posTable = float(
    "embeddings.position_embeddings.weight",
    [c.maxPositionEmbeddings, h],
    g.position,
    "Gather",
  );
  const pos = b.op(`${es}/position_embeddings`, "Gather", [posTable, sliced]);
  sum = b.op(es, "Add", [sum, pos]);
  const [eg, eb] = normInits("embeddings.LayerNorm", g.embeddingNorm);
  let hidden = layerNorm(b, r, `${es}/LayerNorm`, sum, eg, eb);

  // Encoder layers.
  const names = distil
    ? {
      layer: (l: number) => `${root}/transformer/layer.${l}`,
      init: (l: number) => `transformer.layer.${l}`,
      q: "attention/q_lin",
      k: "attention/k_lin",
      v: "attention/v_lin",
      o: "attention/out_lin",
      attn: "attention",
      attnNorm: "sa_layer_norm",
      inter: "ffn/lin1",
      act: "ffn/activation",
      out: "ffn/lin2",
      outNorm: "output_layer_norm",
      residual1: "",
      residual2: "",
    }
    : {
      layer: (l: number) => `${root}/encoder/layer.${l}`,
      init: (l: number) => `encoder.layer.${l}`,
      q: "attention/self/query",
      k: "attention/self/key",
      v: "attention/self/value",
      o: "attention/output/dense",
      attn: "attention/self",
      attnNorm: "attention/output/LayerNorm",
      inter: "intermediate/dense",
      act: "intermediate/intermediate_act_fn",
      out: "output/dense",
      outNorm: "output/LayerNorm",
      residual1: "attention/output",
      residual2: "output",
    };
  const dot = (s: string) => s.replaceAll("/", ".");
  const outputName = (l: number): string | undefined =>
    l === c.numLayers - 1 && !withTask ? "last_hidden_state" : undefined;
  for (let l = 0; l < c.numLayers; l++) {
    const ls = names.layer(l);
    const li = names.init(l);
    const linear = (x: string, which: (typeof LINEARS)[number], scopeName: string): string => {
      const scope = `${ls}/${scopeName}`;
      const out = which === "intermediate" ? c.intermediateSize : h;
      const inn = which === "output" ? c.intermediateSize : h;
      const w = b.matmulWeight([inn, out], () => {
        const d = g.linear(l, which);
        return transpose2d(d.weight, d.out, d.in);
      });
      const bias = float(
        `${li}.${dot(scopeName)}.bias`,
        [out],
        () => g.linearBias(l, which),
        "Add",
      );
      const mm = b.op(scope, "MatMul", [x, w]);
      return b.op(scope, "Add", [bias, mm]);
    };
    const as = `${ls}/${names.attn}`;
    const heads = (x: string, perm: number[]): string => {
      const shape = distil
        ? b.op(as, "Concat", [
          b.dim(as, x, 0),
          b.ints(as, [-1]),
          b.ints(as, [c.numHeads]),
          b.ints(as, [headSize]),
        ], [makeAttribute("axis", 0)])
        : b.op(as, "Concat", [
          b.dim(as, x, 0),
          b.dim(as, x, 1),
          b.ints(as, [c.numHeads]),
          b.ints(as, [headSize]),
        ], [makeAttribute("axis", 0)]);
      const reshaped = b.op(as, "Reshape", [x, shape]);
      return b.op(as, "Transpose", [reshaped], [makeAttribute("perm", perm)]);
    };
    const scale = Math.sqrt(headSize);
    let scores: string;
    let v: string;
    if (r.attention === "sdpa") {
      const q = heads(linear(hidden, "query", names.q), [0, 2, 1, 3]);
      const k = heads(linear(hidden, "key", names.k), [0, 2, 1, 3]);
      v = heads(linear(hidden, "value", names.v), [0, 2, 1, 3]);
      const int64Max = b.op(as, "Constant", [], [
        makeAttribute("value", makeTensor("", DataType.INT64, [1], [9223372036854775807n])),
      ]);
      const last = b.op(as, "Slice", [b.op(as, "Shape", [q]), b.ints(as, [-1]), int64Max]);
      const size = b.op(as, "Cast", [last], [makeAttribute("to", DataType.FLOAT)]);
      const factor = b.op(as, "Div", [b.scalar(as, 1), b.op(as, "Sqrt", [size])]);
      const root = b.op(as, "Sqrt", [factor]);
      const kt = b.op(as, "Transpose", [k], [makeAttribute("perm", [0, 1, 3, 2])]);
      scores = b.op(as, "MatMul", [b.op(as, "Mul", [q, root]), b.op(as, "Mul", [kt, root])]);
    } else if (distil) {
      // DistilBERT: q / sqrt(d) before the product, k transposed after the head split.
      const q = heads(linear(hidden, "query", names.q), [0, 2, 1, 3]);
      const k = heads(linear(hidden, "key", names.k), [0, 2, 1, 3]);
      v = heads(linear(hidden, "value", names.v), [0, 2, 1, 3]);
      const qs = b.op(as, "Div", [q, b.scalar(as, scale)]);
      const kt = b.op(as, "Transpose", [k], [makeAttribute("perm", [0, 1, 3, 2])]);
      scores = b.op(as, "MatMul", [qs, kt]);
    } else {
      const k = heads(linear(hidden, "key", names.k), [0, 2, 3, 1]);
      v = heads(linear(hidden, "value", names.v), [0, 2, 1, 3]);
      const q = heads(linear(hidden, "query", names.q), [0, 2, 1, 3]);
      const qk = b.op(as, "MatMul", [q, k]);
      scores = b.op(as, "Div", [qk, b.scalar(as, scale)]);
    }
    let masked: string;
    if (maskAdd !== null) {
      masked = b.op(as, "Add", [scores, maskAdd]);
    } else {
      masked = b.op(as, "Where", [maskCond!, b.scalar(as, FLOAT32_MIN), scores]);
    }
    const probs = b.op(as, "Softmax", [masked], [makeAttribute("axis", r.opset >= 13 ? -1 : 3)]);
    const ctx = b.op(as, "MatMul", [probs, v]);
    const ctxT = b.op(as, "Transpose", [ctx], [makeAttribute("perm", [0, 2, 1, 3])]);
    const merged = b.op(as, "Reshape", [
      ctxT,
      b.op(as, "Concat", [b.dim(as, ctxT, 0), b.dim(as, ctxT, 1), b.ints(as, [h])], [
        makeAttribute("axis", 0),
      ]),
    ]);
    const attnOut = linear(merged, "attentionOutput", names.o);
    const res1 = b.op(`${ls}${names.residual1 ? "/" + names.residual1 : ""}`, "Add", [
      attnOut,
      hidden,
    ]);
    const [ag, ab] = normInits(`${li}.${dot(names.attnNorm)}`, () => g.norm(l, "attentionNorm"));
    const attnNormed = layerNorm(b, r, `${ls}/${names.attnNorm}`, res1, ag, ab);
    const inter = linear(attnNormed, "intermediate", names.inter);
    const act = `${ls}/${names.act}`;
    let gelu: string;
    if (c.hiddenAct === "gelu") {
      const dv = b.op(act, "Div", [inter, b.scalar(act, Math.SQRT2)]);
      const erf = b.op(act, "Erf", [dv]);
      const one = b.op(act, "Add", [erf, b.scalar(act, 1)]);
      const mul = b.op(act, "Mul", [inter, one]);
      gelu = b.op(act, "Mul", [mul, b.scalar(act, 0.5)]);
    } else {
      const cube = b.op(act, "Pow", [inter, b.scalar(act, 3)]);
      const scaled = b.op(act, "Mul", [b.scalar(act, 0.044715), cube]);
      const inner = b.op(act, "Add", [inter, scaled]);
      const k = b.op(act, "Mul", [b.scalar(act, Math.sqrt(2 / Math.PI)), inner]);
      const th = b.op(act, "Tanh", [k]);
      const one = b.op(act, "Add", [b.scalar(act, 1), th]);
      const half = b.op(act, "Mul", [b.scalar(act, 0.5), inter]);
      gelu = b.op(act, "Mul", [half, one]);
    }
    const ffOut = linear(gelu, "output", names.out);
    const res2 = b.op(`${ls}${names.residual2 ? "/" + names.residual2 : ""}`, "Add", [
      ffOut,
      attnNormed,
    ]);
    const [og, ob] = normInits(`${li}.${dot(names.outNorm)}`, () => g.norm(l, "outputNorm"));
    hidden = layerNorm(b, r, `${ls}/${names.outNorm}`, res2, og, ob, outputName(l));
  }

  // Task heads.
  const outputs: OnnxValueInfo[] = [];
  const dyn = ["batch_size", "sequence_length"];
  if (r.task === "feature-extraction") {
    outputs.push({ name: "last_hidden_state", elemType: DataType.FLOAT, shape: [...dyn, h] });
  } else if (r.task === "text-classification") {
    const poolScope = distil ? "" : `${root}/pooler`;
    const cls = b.op(
      poolScope,
      "Gather",
      [hidden, b.constant(poolScope, DataType.INT64, [], [0])],
      [
        makeAttribute("axis", 1),
      ],
    );
    const poolName = distil ? "pre_classifier" : "bert.pooler.dense";
    const pw = b.lazyFloat(`${poolName}.weight`, [h, h], () => g.pooler().weight, "Gemm");
    const pb = b.lazyFloat(`${poolName}.bias`, [h], () => g.pooler().bias, "Gemm");
    const gemmScope = distil ? "/pre_classifier" : `${root}/pooler/dense`;
    const pooled = b.op(gemmScope, "Gemm", [cls, pw, pb], [
      makeAttribute("alpha", 1, "float"),
      makeAttribute("beta", 1, "float"),
      makeAttribute("transB", 1),
    ]);
    const activated = distil
      ? b.op("", "Relu", [pooled])
      : b.op(`${root}/pooler/activation`, "Tanh", [pooled]);
    const cw = b.lazyFloat("classifier.weight", [r.numLabels, h], () => g.head().weight, "Gemm");
    const cb = b.lazyFloat("classifier.bias", [r.numLabels], () => g.head().bias, "Gemm");
    b.node(
      "/classifier",
      "Gemm",
      [activated, cw, cb],
      [
        makeAttribute("alpha", 1, "float"),
        makeAttribute("beta", 1, "float"),
        makeAttribute("transB", 1),
      ],
      1,
      ["logits"],
    );
    outputs.push({ name: "logits", elemType: DataType.FLOAT, shape: ["batch_size", r.numLabels] });
  } else {
    const scope = r.task === "question-answering" ? "/qa_outputs" : "/classifier";
    const w = b.matmulWeight([h, r.numLabels], () => {
      const d = g.head();
      return transpose2d(d.weight, d.out, d.in);
    });
    const bias = b.lazyFloat(`${scope.slice(1)}.bias`, [r.numLabels], () => g.head().bias, "Add");
    const mm = b.op(scope, "MatMul", [hidden, w]);
    if (r.task === "token-classification") {
      b.node(scope, "Add", [bias, mm], [], 1, ["logits"]);
      outputs.push({ name: "logits", elemType: DataType.FLOAT, shape: [...dyn, r.numLabels] });
    } else {
      const logits = b.op(scope, "Add", [bias, mm]);
      let parts: string[];
      if (r.opset >= 13) {
        parts = b.node("", "Split", [logits, b.ints("", [1, 1])], [makeAttribute("axis", -1)], 2);
      } else {
        parts = b.node("", "Split", [logits], [
          makeAttribute("axis", -1),
          makeAttribute("split", [1, 1]),
        ], 2);
      }
      b.squeeze("", parts[0], [-1], "start_logits");
      b.squeeze("", parts[1], [-1], "end_logits");
      outputs.push({ name: "start_logits", elemType: DataType.FLOAT, shape: dyn });
      outputs.push({ name: "end_logits", elemType: DataType.FLOAT, shape: dyn });
    }
  }

  const inputs: OnnxValueInfo[] = [
    { name: "input_ids", elemType: DataType.INT64, shape: dyn },
    { name: "attention_mask", elemType: DataType.INT64, shape: dyn },
  ];
  if (c.typeVocabSize > 0) {
    inputs.push({ name: "token_type_ids", elemType: DataType.INT64, shape: dyn });
  }
  const irVersion = r.opset <= 11 ? 6 : r.opset <= 14 ? 7 : 8;
  return {
    irVersion,
    opsetImport: [{ domain: "", version: r.opset }],
    producerName: "sparsebert-write-test-model",
    producerVersion: "0.1.0",
    domain: "",
    modelVersion: 0,
    metadata: {
      "sparsebert.config": JSON.stringify(c),
      "sparsebert.seed": String(r.seed),
      "sparsebert.sparsity": String(r.sparsity),
      "sparsebert.pattern": r.pattern,
      "sparsebert.task": r.task,
    },
    graph: {
      name: "main_graph",
      nodes: b.nodes,
      initializers: b.initializers,
      inputs,
      outputs,
      valueInfo: [],
    },
  };
}

/** Options of {@linkcode writeTestModel} beyond the model options. */
export interface WriteTestModelOptions extends TestModelOptions {
  /** Write initializers of 1 KiB or more to `<out>.data` next to the model. */
  externalData?: boolean;
}

/** What {@linkcode writeTestModel} wrote. */
export interface WriteTestModelResult {
  /** The `.onnx` file. */
  path: string;
  /** The external data file, or `null`. */
  externalDataPath: string | null;
  /** The model config. */
  config: BertConfig;
  /** Bytes of the `.onnx` file. */
  bytes: number;
  /** Bytes of the external data file. */
  externalBytes: number;
  /** fp32 parameters written. */
  parameters: number;
}

/** Writes a test model to `path` (temporary file + rename). */
export async function writeTestModel(
  path: string,
  options: WriteTestModelOptions = {},
): Promise<WriteTestModelResult> {
  const model = buildTestModel(options);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  if (dir) await Deno.mkdir(dir, { recursive: true });
  const base = path.slice(path.lastIndexOf("/") + 1);
  const location = options.externalData ? `${base}.data` : null;
  const { bytes, externalBytes } = await writeOnnxModel(path, model, {
    externalData: location ? { location } : undefined,
  });
  let parameters = 0;
  for (const t of model.graph.initializers) {
    if (t.dataType === DataType.FLOAT) parameters += t.dims.reduce((a, b) => a * b, 1);
  }
  return {
    path,
    externalDataPath: location ? `${dir}/${location}` : null,
    config: resolve(options).config,
    bytes,
    externalBytes,
    parameters,
  };
}

/** Bumped whenever the writer's output for the same options changes (cache key). */
const WRITER_VERSION = 1;

/** The default folder of cached test models: `.cache/test-models` in this repository. */
export function testModelsDir(): string {
  const fromEnv = Deno.env.get("SPARSEBERT_TEST_MODELS_DIR");
  if (fromEnv) return fromEnv;
  return decodeURIComponent(new URL("../.cache/test-models", import.meta.url).pathname);
}

/**
 * Returns the path of a cached test model for these options, writing it first when it is not
 * there yet (`.cache/test-models/<preset>-<hash>.onnx`, keyed by every option that changes the
 * file). Safe to call from many tests: the file appears atomically.
 */
export async function ensureTestModel(
  options: WriteTestModelOptions = {},
  dir: string = testModelsDir(),
): Promise<{ path: string; config: BertConfig }> {
  const r = resolve(options);
  const key = JSON.stringify({ v: WRITER_VERSION, ...r, external: options.externalData ?? false });
  const name = `${options.preset ?? "bert-mini"}-${hashKey(0, key).toString(16).padStart(8, "0")}`;
  const path = `${dir}/${name}.onnx`;
  const needed = options.externalData ? [path, `${path}.data`] : [path];
  let present = true;
  for (const p of needed) {
    try {
      await Deno.stat(p);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
      present = false;
    }
  }
  if (!present) await writeTestModel(path, options);
  return { path, config: r.config };
}

const HELP = `Usage: deno run -A tools/write_test_model.ts [options]

Writes a BERT-family ONNX graph (Hugging Face export layout) with seeded random weights.

Options:
  --preset NAME        ${Object.keys(PRESETS).join(" | ")} (default bert-mini)
  --out PATH           output .onnx file (default .cache/test-models/<preset>.onnx)
  --seed N             PRNG seed (default 0)
  --sparsity F         fraction of zeros in the encoder linear weights (default 0)
  --pattern P          4x1 | unstructured (default 4x1: 4 output channels x 1 input channel)
  --opset N            11..18 (default 14)
  --layernorm FORM     decomposed | fused (fused needs --opset 17+)
  --gelu FORM          erf | tanh (default erf)
  --mask FORM          sub | where (default sub; where for distilbert)
  --attention FORM     eager | sdpa (torch's scaled_dot_product_attention export)
  --task TASK          feature-extraction | text-classification | token-classification |
                       question-answering (default feature-extraction)
  --num-labels N       labels of a classification head
  --vocab-size N       override the vocabulary size (default 30522)
  --layers N           override the number of layers
  --names FORM         export | anonymous (initializer names)
  --external-data      write weights to <out>.data
  --json               print a JSON summary instead of text
  -h, --help           show this help
`;

/** Runs the command line; returns the exit code. */
export async function main(args: string[]): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      options: {
        preset: { type: "string", default: "bert-mini" },
        out: { type: "string" },
        seed: { type: "string", default: "0" },
        sparsity: { type: "string", default: "0" },
        pattern: { type: "string", default: "4x1" },
        opset: { type: "string", default: "14" },
        layernorm: { type: "string", default: "decomposed" },
        gelu: { type: "string", default: "erf" },
        mask: { type: "string" },
        attention: { type: "string", default: "eager" },
        task: { type: "string", default: "feature-extraction" },
        "num-labels": { type: "string" },
        "vocab-size": { type: "string" },
        layers: { type: "string" },
        names: { type: "string", default: "export" },
        "external-data": { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }).values;
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  const num = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (v.trim() === "" || !Number.isFinite(n)) {
      throw new Error(`--${name} must be a number, got "${v}"`);
    }
    return n;
  };
  try {
    if (values.gelu !== "erf" && values.gelu !== "tanh") {
      throw new Error(`--gelu must be "erf" or "tanh", got "${values.gelu}"`);
    }
    const config: Partial<BertConfig> = { hiddenAct: values.gelu === "erf" ? "gelu" : "gelu_tanh" };
    const vocab = num("vocab-size", values["vocab-size"]);
    if (vocab !== undefined) config.vocabSize = vocab;
    const layers = num("layers", values.layers);
    if (layers !== undefined) config.numLayers = layers;
    const options: WriteTestModelOptions = {
      preset: values.preset,
      config,
      seed: num("seed", values.seed),
      sparsity: num("sparsity", values.sparsity),
      pattern: values.pattern as "4x1" | "unstructured",
      opset: num("opset", values.opset),
      layerNorm: values.layernorm as "decomposed" | "fused",
      maskStyle: values.mask as "sub" | "where" | undefined,
      attention: values.attention as "eager" | "sdpa",
      task: values.task as TestModelTask,
      numLabels: num("num-labels", values["num-labels"]),
      names: values.names as "export" | "anonymous",
      externalData: values["external-data"],
    };
    if (options.layerNorm !== "decomposed" && options.layerNorm !== "fused") {
      throw new Error(`--layernorm must be "decomposed" or "fused", got "${options.layerNorm}"`);
    }
    if (options.attention !== "eager" && options.attention !== "sdpa") {
      throw new Error(`--attention must be "eager" or "sdpa", got "${options.attention}"`);
    }
    if (options.names !== "export" && options.names !== "anonymous") {
      throw new Error(`--names must be "export" or "anonymous", got "${options.names}"`);
    }
    if (options.maskStyle !== undefined && !["sub", "where"].includes(options.maskStyle)) {
      throw new Error(`--mask must be "sub" or "where", got "${options.maskStyle}"`);
    }
    const out = values.out ?? `.cache/test-models/${values.preset}.onnx`;
    const started = performance.now();
    const result = await writeTestModel(out, options);
    const seconds = (performance.now() - started) / 1000;
    if (values.json) {
      console.log(JSON.stringify({ ok: true, ...result, seconds }, null, 2));
    } else {
      console.log(
        `wrote ${result.path} (${(result.bytes / 2 ** 20).toFixed(1)} MiB` +
          (result.externalDataPath
            ? ` + ${result.externalDataPath} ${(result.externalBytes / 2 ** 20).toFixed(1)} MiB`
            : "") +
          `, ${(result.parameters / 1e6).toFixed(1)}M parameters, ${seconds.toFixed(1)} s)`,
      );
    }
    return 0;
  } catch (err) {
    const message = (err as Error).message;
    if (values.json) console.log(JSON.stringify({ ok: false, error: message }));
    else console.error(`error: ${message}`);
    return 1;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}

/**
 * Imports a BERT-family encoder from an ONNX file by recognising the graph pattern, not by
 * initializer names (real exports call weights `onnx::MatMul_123`).
 *
 * The walk starts at the `Gather` of `input_ids` in the word embedding table and follows the
 * data flow: embedding sum (word + position + token type) and LayerNorm, then per layer the
 * Q/K/V projections (told apart by where they enter the attention products), the scaled and
 * masked softmax, the context projection, residual adds and LayerNorms, the feed-forward block
 * and its GELU, until the hidden state reaches the graph output or a task head.
 *
 * Recognised forms: decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add)
 * and fused `LayerNormalization`; MatMul + Add linears (weight maybe behind a Transpose) and
 * Gemm; eager attention (Div or Mul scale after Q K^T, or DistilBERT's scaled Q) and torch's
 * SDPA decomposition (sqrt-scale on Q and K^T computed from the shape); `(1 - mask) * c` and
 * `Where` masks; Erf GELU, tanh GELU, `Gelu`, `FastGelu`, `BiasGelu` nodes; DistilBERT (no token
 * types); tanh pooler, DistilBERT pre-classifier, classification / token-classification /
 * question-answering heads. Anything else fails with the node name, its op type and what was
 * expected.
 *
 * Quantized graphs (ONNX Runtime's dynamic `MatMulInteger` form, its contrib fusions, static
 * `QLinearMatMul` and QDQ) are first rewritten into fp32 by `onnx_dequantize.ts`; each linear
 * then carries its int8 form in `DenseWeight.quantized` next to the dequantized fp32 values.
 * Every linear records the initializer it came from and its measured sparsity.
 *
 * @module
 */

import {
  DataType,
  makeTensor,
  type OnnxModel,
  type OnnxNode,
  type OnnxTensor,
  readOnnxModel,
  tensorSize,
  tensorToFloat32,
  tensorToNumbers,
} from "./onnx_proto.ts";
import { dequantizeOnnxModel, type OnnxQuantRecord } from "./onnx_dequantize.ts";
import { type QuantizedWeight, recordSparsity, transposeInt8 } from "./quantized.ts";
import {
  type BertConfig,
  type BertLayerWeights,
  type BertWeights,
  type DenseWeight,
  type HeadWeights,
  type NormWeight,
  type OutputKind,
  transpose2d,
  validateBertWeights,
} from "./weights.ts";

/** Options of {@linkcode importOnnx}. */
export interface ImportOnnxOptions {
  /**
   * A Hugging Face `config.json` for pad token id, model type and labels. Default: the
   * `config.json` next to the ONNX file when there is one; `null` to ignore it.
   */
  configPath?: string | null;
}

/** The parts of a Hugging Face `config.json` the importer uses. */
export interface HfConfigHints {
  /** `model_type`. */
  model_type?: string;
  /** `pad_token_id`. */
  pad_token_id?: number;
  /** `id2label`. */
  id2label?: Record<string, string>;
  /** `hidden_size` (cross-checked). */
  hidden_size?: number;
  /** `num_attention_heads` (cross-checked). */
  num_attention_heads?: number;
  /** `n_heads` (DistilBERT, cross-checked). */
  n_heads?: number;
  /** `num_hidden_layers` (cross-checked). */
  num_hidden_layers?: number;
  /** `n_layers` (DistilBERT, cross-checked). */
  n_layers?: number;
}

const FUSED_ORT_OPS = new Set([
  "Attention",
  "MultiHeadAttention",
  "EmbedLayerNormalization",
  "SkipLayerNormalization",
  "SkipSimplifiedLayerNormalization",
  "FusedMatMul",
]);

/**
 * Reads an ONNX file (with its external data, if any) and imports the BERT-family encoder.
 *
 * @throws Error naming the file and, for an unrecognised graph, the node (name and op type)
 *   where matching failed and what was expected there.
 */
export async function importOnnx(
  path: string,
  options: ImportOnnxOptions = {},
): Promise<BertWeights> {
  return (await analyzeOnnx(path, options)).weights;
}

/**
 * Like {@linkcode importOnnx}, but returns the whole {@linkcode OnnxAnalysis} and the decoded
 * source model (used by the prune, quantize and evaluate tools).
 */
export async function analyzeOnnx(
  path: string,
  options: ImportOnnxOptions = {},
): Promise<OnnxAnalysis & { source: OnnxModel }> {
  const model = await readOnnxModel(path);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  let hints: HfConfigHints | null = null;
  const configPath = options.configPath === undefined ? `${dir}/config.json` : options.configPath;
  if (configPath !== null) {
    try {
      hints = JSON.parse(await Deno.readTextFile(configPath)) as HfConfigHints;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound) || options.configPath) {
        throw new Error(`Cannot read config "${configPath}": ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
  }
  const analysis = analyzeOnnxModel(model, path, hints);
  analysis.weights.source.tokenizer = await findTokenizer(path) ?? undefined;
  return { ...analysis, source: model };
}

/**
 * Imports the encoder from an already decoded model (external data resolved).
 *
 * @param model The decoded model.
 * @param path Used in error messages and `source.path`.
 * @param hints Optional Hugging Face config values (pad token, labels, model type).
 */
export function importOnnxModel(
  model: OnnxModel,
  path: string,
  hints: HfConfigHints | null = null,
): BertWeights {
  return analyzeOnnxModel(model, path, hints).weights;
}

/** Names of the six linears of an encoder layer. */
export type LayerLinearName =
  | "query"
  | "key"
  | "value"
  | "attentionOutput"
  | "intermediate"
  | "output";

/** The linears of an encoder layer, in graph order. */
export const LAYER_LINEARS: readonly LayerLinearName[] = Object.freeze([
  "query",
  "key",
  "value",
  "attentionOutput",
  "intermediate",
  "output",
]);

/** Where a linear's input and output live in the (fp32) graph. */
export interface LinearValues {
  /** The MatMul/Gemm data input. */
  input: string;
  /** The linear's output after the bias add. */
  output: string;
}

/** What {@linkcode analyzeOnnxModel} found besides the weights. */
export interface OnnxAnalysis {
  /** The imported weights. */
  weights: BertWeights;
  /**
   * The fp32 graph the weights were matched on: the model itself, or its dequantized rewrite
   * when the model was quantized. Value names below refer to this graph.
   */
  graph: OnnxModel;
  /** Whether the model was quantized. */
  quantized: boolean;
  /** The embedding LayerNorm output (input of layer 0). */
  embeddingOutput: string;
  /** Per encoder layer: its linears' values and its output (after the second LayerNorm). */
  layers: { linears: Record<LayerLinearName, LinearValues>; output: string }[];
}

/**
 * Imports the encoder and also reports the graph values of every layer and linear (used by
 * calibration: activations are read by adding these values as graph outputs).
 */
export function analyzeOnnxModel(
  model: OnnxModel,
  path: string,
  hints: HfConfigHints | null = null,
): OnnxAnalysis {
  const dq = dequantizeOnnxModel(model, path);
  const matcher = new Matcher(dq.model, path, hints);
  const weights = matcher.run();
  const dense = (d: DenseWeight | null | undefined): void => {
    if (!d) return;
    const rec = d.initializer ? dq.records.get(d.initializer.name) : undefined;
    if (rec) d.quantized = toTorchLayout(rec, d, path);
    recordSparsity(d);
  };
  for (const l of weights.layers) for (const k of LAYER_LINEARS) dense(l[k]);
  dense(weights.pooler);
  dense(weights.preClassifier);
  dense(weights.head?.dense);
  return {
    weights,
    graph: dq.model,
    quantized: dq.quantized,
    embeddingOutput: matcher.trace.embeddingOutput,
    layers: matcher.trace.layers,
  };
}

/** The torch-layout int8 form of a recorded ONNX weight. */
function toTorchLayout(rec: OnnxQuantRecord, d: DenseWeight, path: string): QuantizedWeight {
  const transposed = d.initializer!.transposed;
  // ONNX MatMul layout is [in, out] with per-channel scales on axis 1; behind a Transpose the
  // initializer is [out, in] with scales on axis 0.
  const outAxis = transposed ? 0 : 1;
  const [rows, cols] = rec.dims;
  if (rows * cols !== d.out * d.in || rec.dims[outAxis] !== d.out) {
    throw new Error(
      `Cannot import ONNX model "${path}": quantized weight "${
        d.initializer!.name
      }" has dims [${rec.dims}], expected the [${d.in}, ${d.out}] weight of its MatMul`,
    );
  }
  if (rec.scale.length > 1 && rec.axis !== outAxis) {
    throw new Error(
      `Cannot import ONNX model "${path}": quantized weight "${
        d.initializer!.name
      }" has per-input-channel scales (axis ${rec.axis}); only per-output-channel or per-tensor scales are supported`,
    );
  }
  const q: QuantizedWeight = {
    weight: transposed ? rec.values : transposeInt8(rec.values, rows, cols),
    scale: rec.scale,
    zeroPoint: rec.zeroPoint,
    activation: rec.activation,
    form: rec.form,
  };
  if (rec.granularity !== undefined) q.granularity = rec.granularity;
  if (rec.activationQmax !== undefined) q.activationQmax = rec.activationQmax;
  if (rec.inputScale !== undefined) q.inputScale = rec.inputScale;
  if (rec.inputZeroPoint !== undefined) q.inputZeroPoint = rec.inputZeroPoint;
  return q;
}

function describe(node: OnnxNode): string {
  return `"${node.name || "<unnamed>"}" (${node.opType})`;
}

type Partial1D = (number | null)[];

interface LinearMatch {
  dense: DenseWeight;
  /** The value after the bias add (or the MatMul output when there is no bias). */
  out: string;
  /** The MatMul or Gemm node. */
  node: OnnxNode;
}

interface NormMatch {
  norm: NormWeight;
  out: string;
  /** The last node of the LayerNorm. */
  node: OnnxNode;
}

interface HeadPath {
  end: OnnxNode;
  index: number;
  shape: Partial1D | null;
  order: number[];
  scale: number;
  reshape: OnnxNode | null;
}

class Matcher {
  readonly #model: OnnxModel;
  readonly #path: string;
  readonly #hints: HfConfigHints | null;
  readonly #producer = new Map<string, OnnxNode>();
  readonly #consumers = new Map<string, OnnxNode[]>();
  readonly #inits = new Map<string, OnnxTensor>();
  readonly #graphInputs = new Set<string>();
  readonly #constCache = new Map<string, Partial1D | null>();
  #maskValue: number | undefined;

  constructor(model: OnnxModel, path: string, hints: HfConfigHints | null) {
    this.#model = model;
    this.#path = path;
    this.#hints = hints;
    const g = model.graph;
    for (const t of g.initializers) this.#inits.set(t.name, t);
    for (const i of g.inputs) if (!this.#inits.has(i.name)) this.#graphInputs.add(i.name);
    for (const n of g.nodes) {
      for (const o of n.outputs) if (o) this.#producer.set(o, n);
      for (const i of n.inputs) {
        if (!i) continue;
        const list = this.#consumers.get(i);
        if (list) list.push(n);
        else this.#consumers.set(i, [n]);
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Errors and graph queries

  #fail(node: OnnxNode | null, expected: string): never {
    const at = node ? `at node ${describe(node)}: ` : "";
    throw new Error(`Cannot import ONNX model "${this.#path}" as a BERT encoder: ${at}${expected}`);
  }

  #after(value: string): string {
    const p = this.#producer.get(value);
    if (p) return `after node ${describe(p)}`;
    return this.#graphInputs.has(value) ? `after graph input "${value}"` : `after "${value}"`;
  }

  #failAfter(value: string, expected: string): never {
    const found = this.#next(value).map(describe).join(", ") || "no consumer";
    const p = this.#producer.get(value) ?? null;
    this.#fail(p, `expected ${expected} consuming "${value}", found ${found}`);
  }

  /** Consumers of a value, ignoring Shape nodes (dynamic-shape bookkeeping). */
  #next(value: string): OnnxNode[] {
    return (this.#consumers.get(value) ?? []).filter((n) => n.opType !== "Shape");
  }

  #attr(node: OnnxNode, name: string): OnnxNode["attributes"][number] | undefined {
    return node.attributes.find((a) => a.name === name);
  }

  #attrInt(node: OnnxNode, name: string, fallback: number): number {
    return this.#attr(node, name)?.i ?? fallback;
  }

  #attrFloat(node: OnnxNode, name: string, fallback: number): number {
    const a = this.#attr(node, name);
    return a ? a.f : fallback;
  }

  /** An initializer or Constant-node tensor behind a value (through Identity), or null. */
  #constTensor(value: string): OnnxTensor | null {
    const init = this.#inits.get(value);
    if (init) return init;
    const p = this.#producer.get(value);
    if (!p) return null;
    if (p.opType === "Constant") {
      const t = this.#attr(p, "value")?.t;
      if (t) return t;
      const f = this.#attr(p, "value_float");
      if (f) return numberTensor(DataType.FLOAT, [], [f.f]);
      const fs = this.#attr(p, "value_floats");
      if (fs) return numberTensor(DataType.FLOAT, [fs.floats.length], fs.floats);
      const i = this.#attr(p, "value_int");
      if (i) return numberTensor(DataType.INT64, [], [i.i]);
      const is = this.#attr(p, "value_ints");
      if (is) return numberTensor(DataType.INT64, [is.ints.length], is.ints);
      return null;
    }
    if (p.opType === "Identity") return this.#constTensor(p.inputs[0]);
    return null;
  }

  /** A constant scalar (one-element tensor, possibly computed from shapes), or null. */
  #scalar(value: string): number | null {
    const v = this.#evalConst(value);
    if (v === null || v.length !== 1 || v[0] === null) return null;
    return v[0];
  }

  /**
   * Float32 weights of a constant tensor, or a Transpose of one (returned already transposed),
   * with the initializer's name when it is a graph initializer.
   */
  #matrix(
    value: string,
  ): { data: Float32Array; dims: number[]; transposed: boolean; name: string | null } | null {
    const t = this.#constTensor(value);
    if (t) {
      if (t.dims.length !== 2 || !isFloat(t.dataType)) return null;
      const name = this.#inits.get(value) === t ? value : null;
      return { data: tensorToFloat32(t), dims: t.dims, transposed: false, name };
    }
    const p = this.#producer.get(value);
    if (p?.opType === "Transpose") {
      const src = this.#constTensor(p.inputs[0]);
      const perm = this.#attr(p, "perm")?.ints ?? [1, 0];
      if (src && src.dims.length === 2 && isFloat(src.dataType) && sameInts(perm, [1, 0])) {
        const name = this.#inits.get(p.inputs[0]) === src ? p.inputs[0] : null;
        return {
          data: tensorToFloat32(src),
          dims: [src.dims[1], src.dims[0]],
          transposed: true,
          name,
        };
      }
    }
    return null;
  }

  /** `[in, out]` of a MatMul weight (constant or transposed constant), without converting it. */
  #weightDims(value: string): number[] | null {
    const t = this.#constTensor(value);
    if (t) return t.dims.length === 2 ? t.dims : null;
    const p = this.#producer.get(value);
    const src = p?.opType === "Transpose" ? this.#constTensor(p.inputs[0]) : null;
    return src && src.dims.length === 2 ? [src.dims[1], src.dims[0]] : null;
  }

  #isWeight(value: string): boolean {
    const t = this.#constTensor(value);
    if (t) return t.dims.length === 2 && isFloat(t.dataType);
    const p = this.#producer.get(value);
    if (p?.opType !== "Transpose") return false;
    const src = this.#constTensor(p.inputs[0]);
    return src !== null && src.dims.length === 2 && isFloat(src.dataType);
  }

  #vector(value: string, length: number, what: string, node: OnnxNode): Float32Array {
    const t = this.#constTensor(value);
    if (!t || !isFloat(t.dataType)) {
      this.#fail(node, `expected a constant ${what} of ${length} values as input "${value}"`);
    }
    if (tensorSize(t) !== length) {
      this.#fail(
        node,
        `expected ${what} "${value}" to have ${length} values, found dims [${t.dims.join(", ")}]`,
      );
    }
    return tensorToFloat32(t);
  }

  /** Graph inputs that a value depends on (backwards walk, bounded). */
  #inputsReaching(value: string, limit = 200): { inputs: Set<string>; ops: Set<string> } {
    const inputs = new Set<string>();
    const ops = new Set<string>();
    const seen = new Set<string>();
    const stack = [value];
    while (stack.length && seen.size < limit) {
      const v = stack.pop()!;
      if (seen.has(v)) continue;
      seen.add(v);
      if (this.#graphInputs.has(v)) inputs.add(v);
      const p = this.#producer.get(v);
      if (!p) continue;
      ops.add(p.opType);
      for (const i of p.inputs) if (i) stack.push(i);
    }
    return { inputs, ops };
  }

  // -------------------------------------------------------------------------------------------
  // Constant folding of small shape/scalar computations (partial: unknown entries are null)

  #evalConst(value: string, depth = 0): Partial1D | null {
    if (this.#constCache.has(value)) return this.#constCache.get(value)!;
    const result = depth > 40 ? null : this.#evalConstUncached(value, depth + 1);
    this.#constCache.set(value, result);
    return result;
  }

  #evalConstUncached(value: string, depth: number): Partial1D | null {
    const t = this.#constTensor(value);
    if (t) return tensorSize(t) <= 4096 ? tensorToNumbers(t) : null;
    const p = this.#producer.get(value);
    if (!p) return null;
    const input = (i: number): Partial1D | null =>
      p.inputs[i] ? this.#evalConst(p.inputs[i], depth) : null;
    switch (p.opType) {
      case "Identity":
      case "Unsqueeze":
      case "Squeeze":
      case "Reshape":
      case "Flatten":
        return input(0);
      case "Cast": {
        const v = input(0);
        const to = this.#attrInt(p, "to", DataType.FLOAT);
        if (v === null || isFloat(to)) return v;
        return v.map((x) => (x === null ? null : Math.trunc(x)));
      }
      case "Shape": {
        const shape = this.#staticShape(p.inputs[0], depth);
        if (shape === null) return null;
        const start = this.#attr(p, "start")?.i ?? 0;
        const end = this.#attr(p, "end")?.i ?? shape.length;
        return sliceRange(shape, start, end, 1);
      }
      case "Concat": {
        const out: Partial1D = [];
        for (let i = 0; i < p.inputs.length; i++) {
          const v = input(i);
          if (v !== null) out.push(...v);
          else if (this.#producer.get(p.inputs[i])?.opType === "Unsqueeze") out.push(null);
          else return null;
        }
        return out;
      }
      case "Gather": {
        const data = input(0);
        const idx = input(1);
        if (data === null || idx === null || this.#attrInt(p, "axis", 0) !== 0) return null;
        return idx.map((i) => (i === null ? null : data[i < 0 ? i + data.length : i] ?? null));
      }
      case "Slice": {
        const data = input(0);
        const starts = input(1);
        const ends = input(2);
        const steps = p.inputs[4] ? input(4) : [1];
        if (!data || !starts || !ends || !steps) return null;
        if (starts[0] === null || ends[0] === null || steps[0] === null) return null;
        return sliceRange(data, starts[0], ends[0], steps[0]);
      }
      case "Sqrt":
      case "Reciprocal":
      case "Neg": {
        const v = input(0);
        if (v === null) return null;
        const f = p.opType === "Sqrt"
          ? Math.sqrt
          : p.opType === "Neg"
          ? (x: number) => -x
          : (x: number) => 1 / x;
        return v.map((x) => (x === null ? null : Math.fround(f(x))));
      }
      case "Add":
      case "Sub":
      case "Mul":
      case "Div":
      case "Pow": {
        const a = input(0);
        const b = input(1);
        if (a === null || b === null) return null;
        const n = Math.max(a.length, b.length);
        if ((a.length !== 1 && a.length !== n) || (b.length !== 1 && b.length !== n)) return null;
        const out: Partial1D = [];
        for (let i = 0; i < n; i++) {
          const x = a[a.length === 1 ? 0 : i];
          const y = b[b.length === 1 ? 0 : i];
          if (x === null || y === null) {
            out.push(null);
            continue;
          }
          const r = p.opType === "Add"
            ? x + y
            : p.opType === "Sub"
            ? x - y
            : p.opType === "Mul"
            ? x * y
            : p.opType === "Div"
            ? x / y
            : x ** y;
          out.push(Math.fround(r));
        }
        return out;
      }
      default:
        return null;
    }
  }

  /** Static shape of a value where the graph makes it knowable (Reshape/Transpose chains). */
  #staticShape(value: string, depth: number): Partial1D | null {
    if (depth > 40) return null;
    const t = this.#constTensor(value);
    if (t) return [...t.dims];
    const p = this.#producer.get(value);
    if (!p) {
      const info = this.#model.graph.inputs.find((i) => i.name === value);
      return info?.shape?.map((d) => (typeof d === "number" ? d : null)) ?? null;
    }
    switch (p.opType) {
      case "Reshape": {
        const target = this.#evalConst(p.inputs[1], depth + 1);
        if (target === null) return null;
        const src = this.#staticShape(p.inputs[0], depth + 1);
        return target.map((d, i) => (d === 0 ? src?.[i] ?? null : d === -1 ? null : d));
      }
      case "Transpose": {
        const src = this.#staticShape(p.inputs[0], depth + 1);
        if (src === null) return null;
        const perm = this.#attr(p, "perm")?.ints ?? src.map((_, i) => src.length - 1 - i);
        return perm.map((i) => src[i] ?? null);
      }
      case "Mul":
      case "Div":
      case "Add":
      case "Sub":
      case "Cast":
      case "Identity":
      case "Softmax":
        return this.#staticShape(p.inputs[0], depth + 1);
      default:
        return null;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Building blocks

  /** MatMul(x, W[in,out]) [+ Add(bias)] or Gemm(x, W, b) as a torch-layout dense layer. */
  #linear(node: OnnxNode, x: string): LinearMatch {
    if (node.opType === "Gemm") return this.#gemm(node, x);
    if (node.opType !== "MatMul" || node.inputs[0] !== x) {
      this.#fail(node, `expected MatMul of "${x}" with a constant weight`);
    }
    const m = this.#matrix(node.inputs[1]);
    if (m === null) {
      this.#fail(node, `expected a constant 2-D float weight as input "${node.inputs[1]}"`);
    }
    const [inn, out] = m.dims;
    const weight = m.transposed ? m.data : transpose2d(m.data, inn, out);
    const dense: DenseWeight = { out, in: inn, weight, bias: new Float32Array(out) };
    if (m.name !== null) dense.initializer = { name: m.name, transposed: m.transposed };
    const mmOut = node.outputs[0];
    const next = this.#next(mmOut);
    if (next.length === 1 && next[0].opType === "Add") {
      const add = next[0];
      const other = add.inputs[0] === mmOut ? add.inputs[1] : add.inputs[0];
      const bias = this.#constTensor(other);
      if (bias && tensorSize(bias) === out && isFloat(bias.dataType)) {
        dense.bias = tensorToFloat32(bias);
        return { dense, out: add.outputs[0], node };
      }
    }
    return { dense, out: mmOut, node };
  }

  #gemm(node: OnnxNode, x: string): LinearMatch {
    if (node.inputs[0] !== x || this.#attrInt(node, "transA", 0) !== 0) {
      this.#fail(node, `expected Gemm with "${x}" as its untransposed input A`);
    }
    if (this.#attrFloat(node, "alpha", 1) !== 1 || this.#attrFloat(node, "beta", 1) !== 1) {
      this.#fail(node, "expected Gemm with alpha = beta = 1");
    }
    const t = this.#constTensor(node.inputs[1]);
    if (!t || t.dims.length !== 2 || !isFloat(t.dataType)) {
      this.#fail(node, `expected a constant 2-D float weight as input B "${node.inputs[1]}"`);
    }
    const transB = this.#attrInt(node, "transB", 0) === 1;
    const data = tensorToFloat32(t);
    const [out, inn] = transB ? t.dims : [t.dims[1], t.dims[0]];
    const weight = transB ? data : transpose2d(data, inn, out);
    const bias = node.inputs[2]
      ? this.#vector(node.inputs[2], out, "Gemm bias", node)
      : new Float32Array(out);
    const dense: DenseWeight = { out, in: inn, weight, bias };
    if (this.#inits.get(node.inputs[1]) === t) {
      dense.initializer = { name: node.inputs[1], transposed: transB };
    }
    return { dense, out: node.outputs[0], node };
  }

  /** The unique constant-weight MatMul/Gemm consuming `x` as its data input. */
  #linearConsumers(x: string): OnnxNode[] {
    return this.#next(x).filter((n) =>
      (n.opType === "MatMul" || n.opType === "Gemm") && n.inputs[0] === x &&
      this.#isWeight(n.inputs[1])
    );
  }

  #reduceMeanLastAxis(node: OnnxNode): boolean {
    if (node.opType !== "ReduceMean") return false;
    const axes = this.#attr(node, "axes")?.ints ??
      (node.inputs[1] ? this.#evalConst(node.inputs[1]) : null);
    return axes !== null && axes.length === 1 && (axes[0] === -1 || axes[0] === 2);
  }

  /** LayerNorm over the last axis of `x`, fused or decomposed. */
  #layerNorm(x: string, what: string): NormMatch {
    const consumers = this.#next(x);
    const fused = consumers.find((n) =>
      (n.opType === "LayerNormalization" || n.opType === "SimplifiedLayerNormalization") &&
      n.inputs[0] === x
    );
    if (fused) {
      if (fused.opType === "SimplifiedLayerNormalization") {
        this.#fail(fused, `expected a LayerNorm with mean subtraction for ${what} (RMSNorm found)`);
      }
      const axis = this.#attrInt(fused, "axis", -1);
      if (axis !== -1 && axis !== 2) this.#fail(fused, `expected LayerNorm over the last axis`);
      const h = this.#hidden;
      const gamma = this.#vector(fused.inputs[1], h, "LayerNorm scale", fused);
      const beta = fused.inputs[2]
        ? this.#vector(fused.inputs[2], h, "LayerNorm bias", fused)
        : new Float32Array(h);
      const eps = fp32Decimal(this.#attrFloat(fused, "epsilon", 1e-5));
      return { norm: { gamma, beta, eps }, out: fused.outputs[0], node: fused };
    }
    const mean = consumers.find((n) => this.#reduceMeanLastAxis(n) && n.inputs[0] === x);
    if (!mean) {
      this.#failAfter(x, `a LayerNormalization or ReduceMean over the last axis (${what})`);
    }
    const sub = this.#next(x).find((n) =>
      n.opType === "Sub" && n.inputs[0] === x && n.inputs[1] === mean.outputs[0]
    );
    if (!sub) this.#failAfter(mean.outputs[0], `Sub(x, mean) of the ${what} LayerNorm`);
    const d = sub.outputs[0];
    const sq = this.#next(d).find((n) =>
      (n.opType === "Pow" && n.inputs[0] === d && this.#scalar(n.inputs[1]) === 2) ||
      (n.opType === "Mul" && n.inputs[0] === d && n.inputs[1] === d)
    );
    if (!sq) this.#failAfter(d, `Pow(x - mean, 2) of the ${what} LayerNorm`);
    const variance = this.#next(sq.outputs[0]).find((n) => this.#reduceMeanLastAxis(n));
    if (!variance) this.#failAfter(sq.outputs[0], `ReduceMean (variance) of the ${what} LayerNorm`);
    const addEps = this.#next(variance.outputs[0]).find((n) => n.opType === "Add");
    if (!addEps) {
      this.#failAfter(variance.outputs[0], `Add(variance, eps) of the ${what} LayerNorm`);
    }
    const eps = this.#scalar(otherInput(addEps, variance.outputs[0]));
    if (eps === null || !(eps > 0)) {
      this.#fail(addEps, `expected a positive constant epsilon for the ${what} LayerNorm`);
    }
    const sqrt = this.#next(addEps.outputs[0]).find((n) => n.opType === "Sqrt");
    if (!sqrt) this.#failAfter(addEps.outputs[0], `Sqrt of the ${what} LayerNorm`);
    let normalized: string;
    const div = this.#next(sqrt.outputs[0]).find((n) =>
      n.opType === "Div" && n.inputs[0] === d && n.inputs[1] === sqrt.outputs[0]
    );
    if (div) {
      normalized = div.outputs[0];
    } else {
      const recip = this.#next(sqrt.outputs[0]).find((n) => n.opType === "Reciprocal");
      const mul = recip &&
        this.#next(recip.outputs[0]).find((n) => n.opType === "Mul" && n.inputs.includes(d));
      if (!mul) this.#failAfter(sqrt.outputs[0], `Div(x - mean, std) of the ${what} LayerNorm`);
      normalized = mul.outputs[0];
    }
    const h = this.#hidden;
    const scale = this.#next(normalized).find((n) => n.opType === "Mul");
    if (!scale) this.#failAfter(normalized, `Mul by the ${what} LayerNorm weight`);
    const gamma = this.#vector(otherInput(scale, normalized), h, "LayerNorm weight", scale);
    const shift = this.#next(scale.outputs[0]).find((n) => n.opType === "Add");
    if (!shift) this.#failAfter(scale.outputs[0], `Add of the ${what} LayerNorm bias`);
    const beta = this.#vector(otherInput(shift, scale.outputs[0]), h, "LayerNorm bias", shift);
    return { norm: { gamma, beta, eps: fp32Decimal(eps) }, out: shift.outputs[0], node: shift };
  }

  #hidden = 0;

  /** Graph values found on the walk (see {@linkcode OnnxAnalysis}). */
  readonly trace: {
    embeddingOutput: string;
    layers: { linears: Record<LayerLinearName, LinearValues>; output: string }[];
  } = { embeddingOutput: "", layers: [] };

  // -------------------------------------------------------------------------------------------
  // The walk

  run(): BertWeights {
    this.#rejectUnsupportedOps();
    const emb = this.#embeddings();
    this.trace.embeddingOutput = emb.norm.out;
    const layers: BertLayerWeights[] = [];
    let x = emb.norm.out;
    let numHeads = 0;
    let act: BertConfig["hiddenAct"] | null = null;
    let intermediateSize = 0;
    for (let l = 0; l < 1000; l++) {
      const linears = this.#linearConsumers(x);
      // One consumer is a task head (or a fused QKV projection, rejected in #layer).
      if (linears.length === 0) break;
      if (
        linears.length === 1 && this.#weightDims(linears[0].inputs[1])?.[1] !== 3 * this.#hidden
      ) {
        break;
      }
      const layer = this.#layer(x, linears, l);
      if (numHeads && layer.numHeads !== numHeads) {
        this.#fail(layer.first, `expected ${numHeads} heads like layer 0, found ${layer.numHeads}`);
      }
      if (act && layer.act !== act) {
        this.#fail(layer.first, `expected activation ${act} like layer 0, found ${layer.act}`);
      }
      numHeads = layer.numHeads;
      act = layer.act;
      intermediateSize = layer.weights.intermediate.out;
      layers.push(layer.weights);
      x = layer.out;
    }
    if (layers.length === 0) {
      this.#failAfter(x, "the Q/K/V MatMuls of encoder layer 0");
    }
    const tail = this.#tail(x);
    const hints = this.#hints;
    const typeVocabSize = emb.tokenType ? emb.tokenType.length / this.#hidden : 0;
    const config: BertConfig = {
      modelType: hints?.model_type === "distilbert" || typeVocabSize === 0 ? "distilbert" : "bert",
      vocabSize: emb.word.length / this.#hidden,
      hiddenSize: this.#hidden,
      numLayers: layers.length,
      numHeads,
      intermediateSize,
      maxPositionEmbeddings: emb.position.length / this.#hidden,
      typeVocabSize,
      layerNormEps: emb.norm.norm.eps,
      hiddenAct: act!,
      padTokenId: hints?.pad_token_id ?? 0,
    };
    this.#crossCheck(config);
    if (tail.head && hints?.id2label) {
      const labels = Array.from(
        { length: tail.head.dense.out },
        (_, i) => hints.id2label![String(i)] ?? `LABEL_${i}`,
      );
      tail.head.labels = labels;
    }
    const weights: BertWeights = {
      config,
      wordEmbeddings: emb.word,
      positionEmbeddings: emb.position,
      tokenTypeEmbeddings: emb.tokenType,
      embeddingNorm: emb.norm.norm,
      layers,
      pooler: tail.pooler,
      preClassifier: tail.preClassifier,
      head: tail.head,
      attentionMaskValue: this.#maskValue,
      source: {
        format: "onnx",
        path: this.#path,
        outputs: tail.outputs,
        inputs: this.#model.graph.inputs.filter((i) => this.#graphInputs.has(i.name)).map((i) =>
          i.name
        ),
      },
    };
    validateBertWeights(weights);
    return weights;
  }

  #crossCheck(c: BertConfig): void {
    const h = this.#hints;
    if (!h) return;
    const check = (name: string, hint: number | undefined, actual: number): void => {
      if (hint !== undefined && hint !== actual) {
        throw new Error(
          `ONNX model "${this.#path}" does not match its config.json: ${name} is ${hint} there but the graph has ${actual}`,
        );
      }
    };
    check("hidden_size", h.hidden_size, c.hiddenSize);
    check("num_attention_heads", h.num_attention_heads ?? h.n_heads, c.numHeads);
    check("num_hidden_layers", h.num_hidden_layers ?? h.n_layers, c.numLayers);
  }

  #rejectUnsupportedOps(): void {
    const nodes = this.#model.graph.nodes;
    const fused = nodes.find((n) => FUSED_ORT_OPS.has(n.opType));
    if (fused) {
      this.#fail(
        fused,
        "this graph was fused by the ONNX Runtime transformer optimizer, which is not supported; use the plain export",
      );
    }
  }

  #embeddings(): {
    word: Float32Array;
    position: Float32Array;
    tokenType: Float32Array | null;
    norm: NormMatch;
  } {
    const isTableGather = (n: OnnxNode, ids: string): boolean => {
      if (n.opType !== "Gather" || n.inputs[1] !== ids) return false;
      if (this.#attrInt(n, "axis", 0) !== 0) return false;
      const t = this.#constTensor(n.inputs[0]);
      return t !== null && t.dims.length === 2 && isFloat(t.dataType);
    };
    let idsName = "input_ids";
    if (!this.#graphInputs.has(idsName)) {
      const candidates = [...this.#graphInputs].filter((i) =>
        (this.#consumers.get(i) ?? []).some((n) => isTableGather(n, i))
      );
      if (candidates.length !== 1) {
        this.#fail(
          null,
          `expected a graph input "input_ids" (inputs: ${[...this.#graphInputs].join(", ")})`,
        );
      }
      idsName = candidates[0];
    }
    const wordGather = (this.#consumers.get(idsName) ?? []).find((n) => isTableGather(n, idsName));
    if (!wordGather) {
      this.#failAfter(idsName, "a Gather from a constant 2-D word embedding table");
    }
    const wordTable = this.#constTensor(wordGather.inputs[0])!;
    this.#hidden = wordTable.dims[1];
    const h = this.#hidden;
    // Follow the Add chain to the sum that feeds the LayerNorm.
    let sum = wordGather.outputs[0];
    for (let i = 0; i < 8; i++) {
      const next = this.#next(sum);
      if (next.length === 1 && next[0].opType === "Add") sum = next[0].outputs[0];
      else break;
    }
    const leaves: string[] = [];
    const collect = (v: string, depth: number): void => {
      const p = this.#producer.get(v);
      if (p?.opType === "Add" && depth < 8) {
        collect(p.inputs[0], depth + 1);
        collect(p.inputs[1], depth + 1);
      } else {
        leaves.push(v);
      }
    };
    collect(sum, 0);
    let position: Float32Array | null = null;
    let tokenType: Float32Array | null = null;
    let pending: { table: OnnxTensor; gather: OnnxNode } | null = null;
    for (const leaf of leaves) {
      if (leaf === wordGather.outputs[0]) continue;
      const g = this.#producer.get(leaf);
      const table = g?.opType === "Gather" ? this.#constTensor(g.inputs[0]) : null;
      if (!g || !table || table.dims.length !== 2 || table.dims[1] !== h) {
        this.#fail(
          g ?? this.#producer.get(sum) ?? null,
          `expected the embedding sum to add Gathers from [rows, ${h}] tables (word, position, token type), found "${leaf}"`,
        );
      }
      const { inputs, ops } = this.#inputsReaching(g.inputs[1]);
      if (ops.has("CumSum")) {
        this.#fail(g, "RoBERTa-style position ids (CumSum over the mask) are not supported");
      }
      if ([...inputs].some((i) => i.includes("token_type"))) {
        tokenType = tensorToFloat32(table);
      } else if (inputs.has("input_ids") || inputs.has(idsName)) {
        // Positions computed from the input shape (Shape -> Slice of position_ids / Range).
        position = this.#positionTable(g, table);
      } else if ([...inputs].some((i) => i.includes("position"))) {
        position = tensorToFloat32(table);
      } else {
        pending = { table, gather: g };
      }
    }
    if (pending) {
      const values = this.#evalConst(pending.gather.inputs[1]);
      if (position === null && values === null) {
        position = this.#positionTable(pending.gather, pending.table);
      } else if (tokenType === null && values !== null && values.every((v) => v === 0)) {
        tokenType = tensorToFloat32(pending.table);
      } else {
        this.#fail(pending.gather, "expected position or token type ids as Gather indices");
      }
    }
    if (position === null) {
      this.#failAfter(sum, "an Add of the position embeddings (Gather from the position table)");
    }
    const norm = this.#layerNorm(sum, "embedding");
    return { word: tensorToFloat32(wordTable), position, tokenType, norm };
  }

  #positionTable(gather: OnnxNode, table: OnnxTensor): Float32Array {
    // When the indices slice a constant position_ids buffer, it must be 0, 1, 2, ...
    const p = this.#producer.get(gather.inputs[1]);
    if (p?.opType === "Slice") {
      const src = this.#constTensor(p.inputs[0]);
      if (src && tensorSize(src) <= 1 << 16) {
        const ids = tensorToNumbers(src);
        if (!ids.every((v, i) => v === i)) {
          this.#fail(p, "expected position ids 0, 1, 2, ... in the sliced position_ids constant");
        }
      }
    }
    return tensorToFloat32(table);
  }

  #layer(
    x: string,
    linears: OnnxNode[],
    index: number,
  ): {
    weights: BertLayerWeights;
    out: string;
    numHeads: number;
    act: BertConfig["hiddenAct"];
    first: OnnxNode;
  } {
    const h = this.#hidden;
    if (linears.length !== 3) {
      const what = linears.length === 1 && this.#weightDims(linears[0].inputs[1])?.[1] === 3 * h
        ? "a fused QKV projection is not supported"
        : `expected 3 Q/K/V projections in layer ${index}, found ${linears.length}`;
      this.#fail(linears[0], what);
    }
    const proj = linears.map((n) => this.#linear(n, x));
    for (const p of proj) {
      if (p.dense.out !== h || p.dense.in !== h) {
        this.#fail(
          p.node,
          `expected a [${h}, ${h}] Q/K/V projection, found [${p.dense.in}, ${p.dense.out}]`,
        );
      }
    }
    const paths = proj.map((p) => this.#headPath(p.out));
    // Q and K meet in the score MatMul; V enters the context MatMul as its second input.
    let qi = -1;
    let ki = -1;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        if (
          i !== j && paths[i].end === paths[j].end && paths[i].index === 0 && paths[j].index === 1
        ) {
          qi = i;
          ki = j;
        }
      }
    }
    if (qi < 0) {
      this.#fail(paths[0].end, "expected the query and key projections to meet in one MatMul");
    }
    const vi = 3 - qi - ki;
    const q = paths[qi];
    const k = paths[ki];
    const v = paths[vi];
    const scoresMatMul = q.end;
    if (v.index !== 1) this.#fail(v.end, "expected the value heads as the second MatMul input");
    if (!sameInts(q.order, [0, 2, 1, 3])) {
      this.#fail(
        q.reshape ?? q.end,
        `expected query heads transposed to [batch, heads, seq, head]`,
      );
    }
    if (!sameInts(k.order, [0, 2, 3, 1])) {
      this.#fail(k.reshape ?? k.end, `expected key heads transposed to [batch, heads, head, seq]`);
    }
    if (!sameInts(v.order, [0, 2, 1, 3])) {
      this.#fail(
        v.reshape ?? v.end,
        `expected value heads transposed to [batch, heads, seq, head]`,
      );
    }
    const numHeads = this.#heads(q);
    for (const p of [k, v]) {
      if (this.#heads(p) !== numHeads) this.#fail(p.reshape, `expected ${numHeads} heads`);
    }
    const headSize = h / numHeads;
    // Scores: scale, mask, softmax.
    let value = scoresMatMul.outputs[0];
    let scale = q.scale * k.scale;
    let softmax: OnnxNode | null = null;
    for (let step = 0; step < 8 && softmax === null; step++) {
      const next = this.#next(value);
      if (next.length !== 1) this.#failAfter(value, "a single scale, mask or Softmax");
      const n = next[0];
      if (n.opType === "Div" || n.opType === "Mul") {
        const s = n.inputs[0] === value ? this.#scalar(n.inputs[1]) : null;
        const s2 = n.opType === "Mul" && n.inputs[1] === value ? this.#scalar(n.inputs[0]) : s;
        if (s2 === null) this.#fail(n, "expected the attention scores scaled by a constant");
        scale *= n.opType === "Div" ? 1 / s2 : s2;
      } else if (n.opType === "Add") {
        this.#checkMask(n, otherInput(n, value));
      } else if (n.opType === "Where") {
        if (n.inputs[2] !== value) this.#fail(n, "expected Where(mask, fill, scores)");
        this.#checkMask(n, n.inputs[0], n.inputs[1]);
      } else if (n.opType === "Softmax") {
        const axis = this.#attrInt(n, "axis", -1);
        if (axis !== -1 && axis !== 3) this.#fail(n, "expected Softmax over the last axis");
        softmax = n;
      } else {
        this.#fail(n, "expected the attention scores to be scaled, masked and passed to Softmax");
      }
      value = n.outputs[0];
    }
    if (softmax === null) this.#failAfter(value, "Softmax of the attention scores");
    const expectedScale = 1 / Math.sqrt(headSize);
    if (Math.abs(scale - expectedScale) > 1e-4 * expectedScale) {
      this.#fail(
        scoresMatMul,
        `expected the attention scores scaled by 1/sqrt(${headSize}) = ${expectedScale}, found ${scale}`,
      );
    }
    const probsNext = this.#next(softmax.outputs[0]);
    if (
      probsNext.length !== 1 || probsNext[0] !== v.end || v.end.inputs[0] !== softmax.outputs[0]
    ) {
      this.#failAfter(softmax.outputs[0], "the context MatMul(probs, value heads)");
    }
    // Context: transpose back, merge heads, output projection.
    value = v.end.outputs[0];
    let order = [0, 1, 2, 3];
    let attnOut: LinearMatch | null = null;
    for (let step = 0; step < 6 && attnOut === null; step++) {
      const lin = this.#linearConsumers(value);
      if (lin.length === 1) {
        attnOut = this.#linear(lin[0], value);
        break;
      }
      const next = this.#next(value);
      if (next.length !== 1) this.#failAfter(value, "the attention output projection");
      const n = next[0];
      if (n.opType === "Transpose") {
        const perm = this.#attr(n, "perm")?.ints ?? [3, 2, 1, 0];
        order = perm.map((i) => order[i]);
      } else if (n.opType !== "Reshape") {
        this.#fail(n, "expected Transpose/Reshape merging the heads before the output projection");
      }
      value = n.outputs[0];
    }
    if (attnOut === null) this.#failAfter(value, "the attention output projection");
    if (!sameInts(order, [0, 2, 1, 3])) {
      this.#fail(attnOut.node, "expected the context transposed back to [batch, seq, heads, head]");
    }
    const res1 = this.#residual(attnOut.out, x);
    const attnNorm = this.#layerNorm(res1, `layer ${index} attention`);
    // Feed-forward.
    const interNodes = this.#linearConsumers(attnNorm.out);
    if (interNodes.length !== 1) {
      this.#failAfter(attnNorm.out, `the feed-forward MatMul of layer ${index}`);
    }
    const inter = this.#linear(interNodes[0], attnNorm.out);
    const act = this.#activation(inter);
    const output = this.#linear(act.next, act.out);
    if (output.dense.out !== h || output.dense.in !== inter.dense.out) {
      this.#fail(output.node, `expected a [${inter.dense.out}, ${h}] feed-forward output weight`);
    }
    const res2 = this.#residual(output.out, attnNorm.out);
    const outNorm = this.#layerNorm(res2, `layer ${index} output`);
    const values = (m: LinearMatch): LinearValues => ({ input: m.node.inputs[0], output: m.out });
    this.trace.layers.push({
      linears: {
        query: values(proj[qi]),
        key: values(proj[ki]),
        value: values(proj[vi]),
        attentionOutput: values(attnOut),
        intermediate: values(inter),
        output: values(output),
      },
      output: outNorm.out,
    });
    return {
      weights: {
        query: proj[qi].dense,
        key: proj[ki].dense,
        value: proj[vi].dense,
        attentionOutput: attnOut.dense,
        attentionNorm: attnNorm.norm,
        intermediate: inter.dense,
        output: output.dense,
        outputNorm: outNorm.norm,
      },
      out: outNorm.out,
      numHeads,
      act: act.kind,
      first: linears[0],
    };
  }

  /** Follows a Q/K/V projection output through Reshape/Transpose/scale to its MatMul. */
  #headPath(start: string): HeadPath {
    let value = start;
    const path: HeadPath = {
      end: null as unknown as OnnxNode,
      index: -1,
      shape: null,
      order: [0, 1, 2, 3],
      scale: 1,
      reshape: null,
    };
    for (let step = 0; step < 8; step++) {
      const next = this.#next(value);
      if (next.length !== 1) {
        this.#failAfter(value, "a single Reshape splitting the heads");
      }
      const n = next[0];
      if (n.opType === "Reshape" && path.reshape === null) {
        path.reshape = n;
        path.shape = this.#evalConst(n.inputs[1]);
      } else if (n.opType === "Transpose" && path.reshape !== null) {
        const perm = this.#attr(n, "perm")?.ints ?? [3, 2, 1, 0];
        path.order = perm.map((i) => path.order[i]);
      } else if ((n.opType === "Mul" || n.opType === "Div") && path.reshape !== null) {
        const s = n.inputs[0] === value
          ? this.#scalar(n.inputs[1])
          : n.opType === "Mul"
          ? this.#scalar(n.inputs[0])
          : null;
        if (s === null) this.#fail(n, "expected the heads scaled by a constant");
        path.scale *= n.opType === "Div" ? 1 / s : s;
      } else if (n.opType === "MatMul" && path.reshape !== null) {
        path.end = n;
        path.index = n.inputs.indexOf(value);
        return path;
      } else {
        this.#fail(n, "expected Reshape/Transpose of the projected heads into an attention MatMul");
      }
      value = n.outputs[0];
    }
    this.#failAfter(value, "an attention MatMul");
  }

  #heads(path: HeadPath): number {
    const shape = path.shape;
    const h = this.#hidden;
    if (shape === null || shape.length !== 4) {
      this.#fail(
        path.reshape,
        "expected a 4-D Reshape [batch, seq, heads, head size] with constant head dims",
      );
    }
    let heads = shape[2];
    let size = shape[3];
    if ((heads === null || heads === -1) && size !== null && size > 0) heads = h / size;
    if ((size === null || size === -1) && heads !== null && heads > 0) size = h / heads;
    if (heads === null || size === null || heads <= 0 || heads * size !== h) {
      this.#fail(
        path.reshape,
        `expected Reshape dims [.., .., heads, head size] with heads x head size = ${h}, found [${
          shape.join(", ")
        }]`,
      );
    }
    return heads;
  }

  #checkMask(node: OnnxNode, maskValue: string, fill?: string): void {
    const { inputs } = this.#inputsReaching(maskValue);
    const maskInput = [...inputs].find((i) => i.includes("mask"));
    if (!maskInput) {
      this.#fail(node, `expected the attention mask to come from the attention_mask input`);
    }
    if (fill !== undefined) {
      const f = this.#scalar(fill);
      if (f === null) this.#fail(node, "expected a constant fill value in the mask Where");
      this.#maskValue = f;
      return;
    }
    // (1 - mask) * c: find the Mul by a constant on the mask path.
    let v = maskValue;
    for (let i = 0; i < 6 && this.#maskValue === undefined; i++) {
      const p = this.#producer.get(v);
      if (!p) break;
      if (p.opType === "Mul") {
        const c = this.#scalar(p.inputs[1]) ?? this.#scalar(p.inputs[0]);
        if (c !== null) this.#maskValue = c;
      } else if (p.opType === "Where") {
        const c = this.#scalar(p.inputs[1]) ?? this.#scalar(p.inputs[2]);
        if (c !== null && c < 0) this.#maskValue = c;
      }
      v = p.inputs[0];
    }
  }

  #residual(a: string, b: string): string {
    const add = this.#next(a).find((n) =>
      n.opType === "Add" &&
      ((n.inputs[0] === a && n.inputs[1] === b) || (n.inputs[0] === b && n.inputs[1] === a))
    );
    if (!add) this.#failAfter(a, `the residual Add with "${b}"`);
    return add.outputs[0];
  }

  /** The activation between the feed-forward linears. */
  #activation(
    inter: LinearMatch,
  ): { kind: BertConfig["hiddenAct"]; out: string; next: OnnxNode } {
    const start = inter.out;
    // Collect the region between the two feed-forward MatMuls.
    const region: OnnxNode[] = [];
    const seen = new Set<OnnxNode>();
    let terminal: OnnxNode | null = null;
    const queue = [start];
    while (queue.length) {
      const v = queue.shift()!;
      for (const n of this.#next(v)) {
        if (seen.has(n)) continue;
        if ((n.opType === "MatMul" || n.opType === "Gemm") && this.#isWeight(n.inputs[1])) {
          if (terminal && terminal !== n) {
            this.#fail(n, "expected one feed-forward output MatMul after the activation");
          }
          terminal = n;
          continue;
        }
        seen.add(n);
        region.push(n);
        if (region.length > 16) {
          this.#fail(n, "expected a GELU between the feed-forward MatMuls (too many nodes)");
        }
        queue.push(...n.outputs);
      }
    }
    if (terminal === null) {
      this.#failAfter(start, "a GELU followed by the feed-forward output MatMul");
    }
    const actOut = terminal.inputs[0];
    const ops = region.map((n) => n.opType).sort();
    const consts = region.flatMap((n) =>
      n.inputs.map((i) => this.#scalar(i)).filter((v): v is number => v !== null)
    );
    const near = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-4 * Math.abs(b);
    const has = (c: number): boolean => consts.some((v) => near(v, c));
    const fail = (): never =>
      this.#fail(
        region[0] ?? terminal,
        `expected a GELU (Erf or tanh form, or a Gelu/FastGelu node) between the feed-forward MatMuls, found ${
          ops.join(", ")
        }`,
      );
    if (region.length === 1) {
      const n = region[0];
      if (n.outputs[0] !== actOut) fail();
      let kind: BertConfig["hiddenAct"];
      if (n.opType === "Gelu") {
        const approx = this.#attr(n, "approximate")?.s;
        kind = approx && new TextDecoder().decode(approx) === "tanh" ? "gelu_tanh" : "gelu";
      } else if (n.opType === "FastGelu") {
        kind = "gelu_tanh";
      } else if (n.opType === "BiasGelu") {
        kind = "gelu";
      } else {
        return fail();
      }
      if (n.inputs[1]) {
        const bias = this.#vector(n.inputs[1], inter.dense.out, "GELU bias", n);
        for (let i = 0; i < bias.length; i++) inter.dense.bias[i] += bias[i];
      }
      return { kind, out: actOut, next: terminal };
    }
    const erf = ops.filter((o) => o === "Erf").length;
    const tanh = ops.filter((o) => o === "Tanh").length;
    if (erf === 1 && tanh === 0 && region.length <= 6) {
      if (!(has(Math.SQRT2) || has(Math.SQRT1_2)) || !has(1) || !has(0.5)) fail();
      return { kind: "gelu", out: actOut, next: terminal };
    }
    if (tanh === 1 && erf === 0 && region.length <= 10) {
      if (!has(0.044715) || !has(Math.sqrt(2 / Math.PI)) || !has(1)) fail();
      return { kind: "gelu_tanh", out: actOut, next: terminal };
    }
    return fail();
  }

  /** Graph outputs, pooler and head after the last layer. */
  #tail(x: string): {
    pooler: DenseWeight | null;
    preClassifier: DenseWeight | null;
    head: HeadWeights | null;
    outputs: { name: string; kind: OutputKind }[];
  } {
    const outputs: { name: string; kind: OutputKind }[] = [];
    const graphOutputs = new Set(this.#model.graph.outputs.map((o) => o.name));
    let pooler: DenseWeight | null = null;
    let preClassifier: DenseWeight | null = null;
    let head: HeadWeights | null = null;
    const h = this.#hidden;
    const aliasOutput = (v: string, kind: OutputKind): boolean => {
      if (graphOutputs.has(v)) {
        outputs.push({ name: v, kind });
        return true;
      }
      const id = this.#next(v).find((n) =>
        n.opType === "Identity" && graphOutputs.has(n.outputs[0])
      );
      if (id) outputs.push({ name: id.outputs[0], kind });
      return id !== undefined;
    };
    aliasOutput(x, "last_hidden_state");
    for (const n of this.#next(x)) {
      if (n.opType === "Identity" && graphOutputs.has(n.outputs[0])) continue;
      if (n.opType === "Gather" || n.opType === "Slice") {
        // [CLS] token: Gather(x, 0, axis=1) or Slice [0:1] on axis 1 (+ Squeeze).
        let cls = n.outputs[0];
        if (n.opType === "Gather") {
          if (this.#attrInt(n, "axis", 0) !== 1 || this.#scalar(n.inputs[1]) !== 0) {
            this.#fail(n, "expected Gather of token 0 on axis 1 (the [CLS] token)");
          }
        } else {
          const sq = this.#next(cls).find((m) => m.opType === "Squeeze");
          if (!sq) this.#failAfter(cls, "Squeeze of the [CLS] token slice");
          cls = sq.outputs[0];
        }
        const lin = this.#linearConsumers(cls);
        if (lin.length !== 1) this.#failAfter(cls, "the pooler / pre-classifier dense layer");
        const dense = this.#linear(lin[0], cls);
        if (dense.dense.out !== h) this.#fail(dense.node, `expected a [${h}, ${h}] pooler weight`);
        const act = this.#next(dense.out);
        if (act.length !== 1 || (act[0].opType !== "Tanh" && act[0].opType !== "Relu")) {
          this.#failAfter(dense.out, "Tanh (BERT pooler) or Relu (DistilBERT pre-classifier)");
        }
        const pooled = act[0].outputs[0];
        if (act[0].opType === "Tanh") {
          pooler = dense.dense;
          aliasOutput(pooled, "pooler_output");
        } else {
          preClassifier = dense.dense;
        }
        const cl = this.#linearConsumers(pooled);
        if (cl.length === 1) {
          const c = this.#linear(cl[0], pooled);
          head = { kind: "classification", dense: c.dense };
          if (!aliasOutput(c.out, "logits")) {
            this.#failAfter(c.out, "the classification logits graph output");
          }
        } else if (act[0].opType === "Relu") {
          this.#failAfter(pooled, "the classifier after the pre-classifier");
        }
        continue;
      }
      if ((n.opType === "MatMul" || n.opType === "Gemm") && this.#isWeight(n.inputs[1])) {
        const c = this.#linear(n, x);
        if (aliasOutput(c.out, "logits")) {
          head = { kind: "token-classification", dense: c.dense };
          continue;
        }
        const split = this.#next(c.out);
        if (c.dense.out === 2 && split.length === 1 && split[0].opType === "Split") {
          head = { kind: "question-answering", dense: c.dense };
          const kinds: OutputKind[] = ["start_logits", "end_logits"];
          split[0].outputs.forEach((o, i) => {
            const sq = this.#next(o).find((m) => m.opType === "Squeeze");
            if (!sq || !aliasOutput(sq.outputs[0], kinds[i])) {
              this.#failAfter(o, `Squeeze to the ${kinds[i]} graph output`);
            }
          });
          continue;
        }
        this.#failAfter(c.out, "a logits graph output or a Split into start/end logits");
      }
      this.#fail(
        n,
        "expected the last hidden state to go to the graph output, a [CLS] pooler or a classifier MatMul",
      );
    }
    if (outputs.length === 0) {
      this.#failAfter(x, "the last hidden state or a task head as a graph output");
    }
    return { pooler, preClassifier, head, outputs };
  }
}

/** The shortest decimal that rounds to the same fp32 value (e.g. 1e-12, not 9.99999996e-13). */
function fp32Decimal(v: number): number {
  const f = Math.fround(v);
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(f.toPrecision(digits));
    if (Math.fround(d) === f) return d;
  }
  return f;
}

function otherInput(node: OnnxNode, value: string): string {
  return node.inputs[0] === value ? node.inputs[1] : node.inputs[0];
}

function isFloat(dataType: number): boolean {
  return dataType === DataType.FLOAT || dataType === DataType.FLOAT16 ||
    dataType === DataType.BFLOAT16 || dataType === DataType.DOUBLE;
}

function sameInts(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function sliceRange(data: Partial1D, start: number, end: number, step: number): Partial1D {
  const n = data.length;
  const clamp = (v: number): number => Math.min(Math.max(v < 0 ? v + n : v, 0), n);
  const out: Partial1D = [];
  if (step > 0) { for (let i = clamp(start); i < clamp(end); i += step) out.push(data[i]); }
  return out;
}

function numberTensor(dataType: number, dims: number[], values: number[]): OnnxTensor {
  return makeTensor("", dataType, dims, values);
}

/**
 * The tokenizer beside a model file: `<stem>-tokenizer.json` or `<stem>.tokenizer.json` (as the
 * langchain4j jars ship them), else `tokenizer.json` in the same folder; null when none exists.
 */
export async function findTokenizer(modelPath: string): Promise<string | null> {
  const slash = modelPath.lastIndexOf("/");
  const dir = slash >= 0 ? modelPath.slice(0, slash) || "/" : ".";
  const file = modelPath.slice(slash + 1);
  const stem = file.includes(".") ? file.slice(0, file.lastIndexOf(".")) : file;
  for (const candidate of [`${stem}-tokenizer.json`, `${stem}.tokenizer.json`, "tokenizer.json"]) {
    try {
      if ((await Deno.stat(`${dir}/${candidate}`)).isFile) return `${dir}/${candidate}`;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return null;
}

/**
 * One-shot pruning of a BERT-family ONNX model's encoder linears, written back as the same
 * ONNX graph with zeros in the weight initializers (so every runtime runs the same weights).
 *
 * - Patterns: `unstructured` (single weights) or `4x1` blocks (4 consecutive output channels x
 *   1 input channel, the unit the sparse int8 kernel skips; a short last group of rows counts
 *   as a block, as in `ops/sparsity.ts`).
 * - Methods: `magnitude` (score |W_ij|) and `wanda` (Sun et al. 2023: score
 *   |W_ij| * ||X_j||_2, with X_j input feature j of the linear over the calibration tokens). A
 *   block's score is the L2 norm of its elements' scores.
 * - Scope: `per-layer` (every linear reaches the target sparsity) or `global` (one threshold
 *   over all encoder linears).
 *
 * Exactly `round(sparsity * units)` units are zeroed per scope (ties broken by position);
 * weights that are already zero score 0 and are pruned first, so an already sparse model stays
 * at least as sparse. Int8 initializers (a quantized input model) are set to their zero point.
 *
 * @module
 */

import { captureActivations, type EncoderBatch, forEachToken } from "./calibrate.ts";
import { analyzeOnnx, type OnnxAnalysis } from "../formats/onnx_import.ts";
import { LAYER_LINEARS, type LayerLinearName } from "../formats/onnx_layer.ts";
import {
  DataType,
  dataTypeName,
  elementSize,
  type OnnxModel,
  type OnnxTensor,
} from "../formats/onnx_types.ts";
import { writeOnnxModel } from "../formats/onnx_write.ts";
import { columnSums } from "../formats/onnx_int8_tensors.ts";
import { measureSparsity } from "../encoder/quantized.ts";
import type { DenseWeight, WeightSparsity } from "../encoder/weights.ts";

/** Options of {@linkcode pruneAnalysis} and {@linkcode pruneModel}. */
export interface PruneOptions {
  /** Target fraction of zero units, in `[0, 1)`. */
  sparsity: number;
  /** `per-layer` (default) or `global`. */
  scope?: "per-layer" | "global";
  /** `4x1` (default) or `unstructured`. */
  pattern?: "4x1" | "unstructured";
  /** `magnitude` (default) or `wanda` (needs `calibration`). */
  method?: "magnitude" | "wanda";
  /** Calibration batches for `wanda`. */
  calibration?: EncoderBatch[];
  /** ORT threads for calibration (default 1). */
  threads?: number;
  /** Progress callback (`done` of `total` steps of `phase`). */
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** What pruning did to one linear. */
export interface PrunedLinear {
  /** Encoder layer. */
  layer: number;
  /** Which linear. */
  linear: LayerLinearName;
  /** `[out, in]`. */
  shape: [number, number];
  /** The initializer written. */
  initializer: string;
  /** Sparsity before. */
  before: WeightSparsity;
  /** Sparsity after. */
  after: WeightSparsity;
}

/** What {@linkcode pruneModel} did. */
export interface PruneReport {
  /** Input model. */
  input: string;
  /** Output model. */
  output: string;
  /** Target sparsity. */
  sparsity: number;
  /** Scope. */
  scope: "per-layer" | "global";
  /** Pattern. */
  pattern: "4x1" | "unstructured";
  /** Method. */
  method: "magnitude" | "wanda";
  /** Calibration tokens used (wanda). */
  calibrationTokens: number;
  /** Per linear. */
  linears: PrunedLinear[];
  /** Over all encoder linears (weighted by size). */
  total: WeightSparsity;
  /** Bytes written (model + external data). */
  bytes: number;
}

interface Target {
  layer: number;
  linear: LayerLinearName;
  dense: DenseWeight;
  input: string;
}

/** Checks and fills in defaults; throws on bad values with the value quoted. */
export function resolvePruneOptions(options: PruneOptions): Required<
  Pick<PruneOptions, "sparsity" | "scope" | "pattern" | "method">
> {
  const { sparsity } = options;
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new RangeError(`Invalid sparsity ${sparsity}: expected a fraction in [0, 1)`);
  }
  const scope = options.scope ?? "per-layer";
  if (scope !== "per-layer" && scope !== "global") {
    throw new RangeError(`Invalid scope "${scope}": expected "per-layer" or "global"`);
  }
  const pattern = options.pattern ?? "4x1";
  if (pattern !== "4x1" && pattern !== "unstructured") {
    throw new RangeError(`Invalid pattern "${pattern}": expected "4x1" or "unstructured"`);
  }
  const method = options.method ?? "magnitude";
  if (method !== "magnitude" && method !== "wanda") {
    throw new RangeError(`Invalid method "${method}": expected "magnitude" or "wanda"`);
  }
  if (method === "wanda" && !(options.calibration && options.calibration.length > 0)) {
    throw new Error("Wanda pruning needs calibration texts (--calibration)");
  }
  return { sparsity, scope, pattern, method };
}

/**
 * Scores of the pruning units of a torch-layout weight: per element, or per 4x1 block (block
 * `b * in + i` covers rows `4b..4b+3` at column `i`). `norms` (Wanda) scales column `i` by
 * `||X_i||`.
 */
export function unitScores(
  dense: DenseWeight,
  pattern: "4x1" | "unstructured",
  norms: Float64Array | null,
): Float32Array {
  const { out, in: inn, weight } = dense;
  if (norms !== null && norms.length !== inn) {
    throw new RangeError(`Expected ${inn} input norms, got ${norms.length}`);
  }
  if (pattern === "unstructured") {
    const s = new Float32Array(out * inn);
    for (let o = 0; o < out; o++) {
      for (let i = 0; i < inn; i++) {
        const w = Math.abs(weight[o * inn + i]);
        s[o * inn + i] = norms === null ? w : w * norms[i];
      }
    }
    return s;
  }
  const blockRows = Math.ceil(out / 4);
  const sq = new Float64Array(blockRows * inn);
  for (let o = 0; o < out; o++) {
    const b = o >> 2;
    for (let i = 0; i < inn; i++) {
      const w = weight[o * inn + i];
      sq[b * inn + i] += w * w;
    }
  }
  const s = new Float32Array(blockRows * inn);
  for (let u = 0; u < s.length; u++) {
    const n = norms === null ? 1 : norms[u % inn];
    s[u] = Math.sqrt(sq[u]) * n;
  }
  return s;
}

/**
 * Marks the `count` lowest scores of `scores` (ties broken by position) in a new 0/1 array
 * (1 = prune).
 */
export function lowestUnits(scores: Float32Array, count: number): Uint8Array {
  const prune = new Uint8Array(scores.length);
  if (count <= 0) return prune;
  if (count >= scores.length) return prune.fill(1);
  for (let i = 0; i < scores.length; i++) {
    if (!(scores[i] >= 0)) {
      throw new RangeError(`Score ${i} is ${scores[i]}: weights must be finite`);
    }
  }
  const sorted = Float32Array.from(scores).sort();
  const threshold = sorted[count - 1];
  let left = count;
  for (let i = 0; i < scores.length; i++) {
    if (scores[i] < threshold) {
      prune[i] = 1;
      left--;
    }
  }
  for (let i = 0; i < scores.length && left > 0; i++) {
    if (scores[i] === threshold) {
      prune[i] = 1;
      left--;
    }
  }
  return prune;
}

/** Zeroes the pruned units of a torch-layout weight in place; returns the element mask. */
function applyUnits(
  dense: DenseWeight,
  pattern: "4x1" | "unstructured",
  units: Uint8Array,
): Uint8Array {
  const { out, in: inn } = dense;
  const mask = new Uint8Array(out * inn);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inn; i++) {
      const u = pattern === "unstructured" ? o * inn + i : (o >> 2) * inn + i;
      if (units[u]) mask[o * inn + i] = 1;
    }
  }
  for (let k = 0; k < mask.length; k++) if (mask[k]) dense.weight[k] = 0;
  if (dense.quantized) {
    const q = dense.quantized;
    for (let o = 0; o < out; o++) {
      const z = q.zeroPoint === null ? 0 : q.zeroPoint[q.zeroPoint.length === 1 ? 0 : o];
      for (let i = 0; i < inn; i++) if (mask[o * inn + i]) q.weight[o * inn + i] = z;
    }
  }
  return mask;
}

/** Writes the pruned elements into the initializer (zero, or the zero point for int8). */
function writeMask(t: OnnxTensor, dense: DenseWeight, mask: Uint8Array, path: string): void {
  const { out, in: inn } = dense;
  const transposed = dense.initializer!.transposed;
  const int8 = t.dataType === DataType.INT8 || t.dataType === DataType.UINT8;
  const size = elementSize(t.dataType);
  const isFloat = t.dataType === DataType.FLOAT || t.dataType === DataType.FLOAT16 ||
    t.dataType === DataType.BFLOAT16 || t.dataType === DataType.DOUBLE;
  if (!isFloat && !int8) {
    throw new Error(
      `Cannot prune "${path}": initializer "${t.name}" is ${dataTypeName(t.dataType)}`,
    );
  }
  const zp = (o: number): number => {
    if (!int8) return 0;
    const q = dense.quantized;
    const z = q?.zeroPoint ? q.zeroPoint[q.zeroPoint.length === 1 ? 0 : o] : 0;
    return t.dataType === DataType.UINT8 ? z + 128 : z;
  };
  const raw = t.rawData;
  if (raw === null && t.externalData !== null) {
    throw new Error(`Cannot prune "${path}": external data of "${t.name}" was not loaded`);
  }
  for (let o = 0; o < out; o++) {
    const z = zp(o);
    for (let i = 0; i < inn; i++) {
      if (!mask[o * inn + i]) continue;
      const idx = transposed ? o * inn + i : i * out + o;
      if (raw !== null) {
        if (int8) raw[idx] = z & 0xff;
        else raw.fill(0, idx * size, (idx + 1) * size);
      } else if (t.floatData) t.floatData[idx] = 0;
      else if (t.doubleData) t.doubleData[idx] = 0;
      else if (t.int32Data) t.int32Data[idx] = z;
      else throw new Error(`Cannot prune "${path}": initializer "${t.name}" holds no data`);
    }
  }
}

/**
 * sparsebert's per-token int8 form subtracts `zp_row * colsum(W)` after the MatMulInteger:
 * after pruning an int8 weight, its column-sum constant must follow.
 */
function updateColumnSums(source: OnnxModel, weight: OnnxTensor, path: string): void {
  const g = source.graph;
  for (const mm of g.nodes) {
    if (mm.opType !== "MatMulInteger" || mm.inputs[1] !== weight.name) continue;
    const sub = g.nodes.find((n) => n.opType === "Sub" && n.inputs[0] === mm.outputs[0]);
    if (sub === undefined) continue;
    const corr = g.nodes.find((n) => n.opType === "Mul" && n.outputs[0] === sub.inputs[1]);
    const sums = g.initializers.find((t) => corr?.inputs.includes(t.name));
    if (sums === undefined || sums.dataType !== DataType.INT32 || sums.rawData === null) {
      throw new Error(
        `Cannot prune "${path}": the zero point correction of weight "${weight.name}" has no int32 column sums`,
      );
    }
    const raw = weight.rawData!;
    const unsigned = weight.dataType === DataType.UINT8;
    const values = unsigned
      ? Int32Array.from(raw, (v) => v - 128)
      : Int32Array.from(new Int8Array(raw.buffer, raw.byteOffset, raw.byteLength));
    const zpTensor = g.initializers.find((t) => t.name === mm.inputs[3]);
    let zp: Int32Array | null = null;
    if (zpTensor) {
      const z = zpTensor.rawData!;
      zp = unsigned
        ? Int32Array.from(z, (v) => v - 128)
        : Int32Array.from(new Int8Array(z.buffer, z.byteOffset, z.byteLength));
    }
    const fresh = columnSums(values, [weight.dims[0], weight.dims[1]], zp);
    sums.rawData = new Uint8Array(fresh.buffer);
  }
}

/** Squared L2 norms of each linear input's features over the calibration tokens. */
async function inputNorms(
  a: OnnxAnalysis,
  targets: Target[],
  options: PruneOptions,
): Promise<{ norms: Map<string, Float64Array>; tokens: number }> {
  const inputs = [...new Set(targets.map((t) => t.input))];
  const sums = new Map<string, Float64Array>();
  let tokens = 0;
  await captureActivations(a.graph, inputs, options.calibration!, options, (batch, values) => {
    for (const [k, v] of inputs.entries()) {
      const t = values[v];
      const dim = t.dims.at(-1)!;
      let s = sums.get(v);
      if (s === undefined) sums.set(v, s = new Float64Array(dim));
      forEachToken(batch, dim, (off) => {
        if (k === 0) tokens++;
        for (let i = 0; i < dim; i++) s![i] += t.data[off + i] * t.data[off + i];
      });
    }
  });
  const norms = new Map<string, Float64Array>();
  for (const [v, s] of sums) norms.set(v, s.map(Math.sqrt));
  return { norms, tokens };
}

/**
 * Prunes the encoder linears of an analysed model and writes the zeros into `source` (the
 * decoded model the analysis came from), in place. The analysed weights are pruned too.
 */
export async function pruneAnalysis(
  a: OnnxAnalysis,
  source: OnnxModel,
  path: string,
  options: PruneOptions,
): Promise<Omit<PruneReport, "input" | "output" | "bytes">> {
  const { sparsity, scope, pattern, method } = resolvePruneOptions(options);
  const targets: Target[] = [];
  a.weights.layers.forEach((l, layer) => {
    for (const linear of LAYER_LINEARS) {
      targets.push({
        layer,
        linear,
        dense: l[linear],
        input: a.layers[layer].linears[linear].input,
      });
    }
  });
  const inits = new Map(source.graph.initializers.map((t) => [t.name, t]));
  for (const t of targets) {
    const name = t.dense.initializer?.name;
    if (name === undefined || !inits.has(name)) {
      throw new Error(
        `Cannot prune "${path}": the ${t.linear} weight of layer ${t.layer} is not a graph initializer`,
      );
    }
  }
  const { norms, tokens } = method === "wanda"
    ? await inputNorms(a, targets, options)
    : { norms: null, tokens: 0 };
  const before = targets.map((t) => measureSparsity(t.dense.weight, t.dense));
  options.onProgress?.("score", 0, targets.length);
  const scores = targets.map((t, k) => {
    const s = unitScores(t.dense, pattern, norms?.get(t.input) ?? null);
    options.onProgress?.("score", k + 1, targets.length);
    return s;
  });
  let units: Uint8Array[];
  if (scope === "per-layer") {
    units = scores.map((s) => lowestUnits(s, Math.round(sparsity * s.length)));
  } else {
    const total = scores.reduce((n, s) => n + s.length, 0);
    const all = new Float32Array(total);
    let off = 0;
    for (const s of scores) {
      all.set(s, off);
      off += s.length;
    }
    const pruned = lowestUnits(all, Math.round(sparsity * total));
    off = 0;
    units = scores.map((s) => {
      const u = pruned.subarray(off, off + s.length);
      off += s.length;
      return u;
    });
  }
  const linears: PrunedLinear[] = [];
  let zeros = 0;
  let zeroBlocks = 0;
  let elements = 0;
  let blocks = 0;
  options.onProgress?.("write", 0, targets.length);
  for (const [k, t] of targets.entries()) {
    const mask = applyUnits(t.dense, pattern, units[k]);
    const init = inits.get(t.dense.initializer!.name)!;
    writeMask(init, t.dense, mask, path);
    if (init.dataType === DataType.INT8 || init.dataType === DataType.UINT8) {
      updateColumnSums(source, init, path);
    }
    const after = measureSparsity(t.dense.weight, t.dense);
    t.dense.sparsity = after;
    const n = t.dense.out * t.dense.in;
    const nb = Math.ceil(t.dense.out / 4) * t.dense.in;
    zeros += after.element * n;
    zeroBlocks += after.block4x1 * nb;
    elements += n;
    blocks += nb;
    linears.push({
      layer: t.layer,
      linear: t.linear,
      shape: [t.dense.out, t.dense.in],
      initializer: t.dense.initializer!.name,
      before: before[k],
      after,
    });
    options.onProgress?.("write", k + 1, targets.length);
  }
  return {
    sparsity,
    scope,
    pattern,
    method,
    calibrationTokens: tokens,
    linears,
    total: { element: zeros / elements, block4x1: zeroBlocks / blocks },
  };
}

/**
 * Reads an ONNX model, prunes its encoder linears and writes the same graph with the zeros
 * (external data next to it when the source had external data).
 */
export async function pruneModel(
  input: string,
  output: string,
  options: PruneOptions,
): Promise<PruneReport> {
  resolvePruneOptions(options);
  const analysis = await analyzeOnnx(input);
  const source = analysis.source;
  const report = await pruneAnalysis(analysis, source, input, options);
  const external = source.graph.initializers.some((t) => t.externalData !== null);
  const base = output.slice(output.lastIndexOf("/") + 1);
  const written = await writeOnnxModel(output, source, {
    externalData: external ? { location: `${base}.data` } : undefined,
  });
  return { input, output, ...report, bytes: written.bytes + written.externalBytes };
}

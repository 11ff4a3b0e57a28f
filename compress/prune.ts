/**
 * One-shot pruning of a BERT-family ONNX model's encoder linears, written back as the same
 * ONNX graph with zeros in the weight initializers (so every runtime runs the same weights).
 *
 * - Patterns: `unstructured` (single weights) or `4x1` blocks (4 consecutive output channels x
 *   1 input channel, the unit the sparse int8 kernel skips; a short last group of rows counts
 *   as a block, as in `ops/sparsity.ts`).
 * - Methods: `magnitude` (score |W_ij|) and `wanda` (Sun et al. 2023: score
 *   |W_ij| * ||X_j||_2, with X_j input feature j of the linear over the calibration tokens). A
 *   block's score is the L2 norm of its elements' scores. `obs` (SparseGPT, Frantar & Alistarh
 *   2023; the sweep is in `compress/obs.ts`) chooses the mask by the optimal brain surgeon
 *   saliency from each linear's Hessian `2 X^T X` and updates the kept weights to compensate;
 *   it needs an fp32 model and the per-layer scope. By default its
 *   inputs are read sequentially: each linear's calibration inputs come from the model whose
 *   earlier linears are already pruned.
 * - Scope: `per-layer` (every linear reaches the target sparsity) or `global` (one threshold
 *   over all encoder linears).
 *
 * Exactly `round(sparsity * units)` units are zeroed per scope (ties broken by position; `obs`
 * spreads a layer's count over its column blocks, see `obsPrune`); weights that are already zero
 * score 0 and are pruned first, so an already sparse model stays at least as sparse. Int8
 * initializers (a quantized input model) are set to their zero point.
 *
 * @module
 */

import {
  type CalibrationRunOptions,
  captureActivations,
  type EncoderBatch,
  forEachToken,
} from "./calibrate.ts";
import { addOuterProduct, dampen, inverseUpperFactor, obsPrune, symmetrize } from "./obs.ts";
import { concatFloat32, lowestUnits } from "./prune_units.ts";
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

export { lowestUnits };

/** A pruning method: `magnitude`, `wanda` or `obs`. */
export type PruneMethod = "magnitude" | "wanda" | "obs";

/** Where `obs` reads each linear's calibration inputs. */
export type ObsInputs = "sequential" | "dense";

/** Options of {@linkcode pruneAnalysis} and {@linkcode pruneModel}. */
export interface PruneOptions extends CalibrationRunOptions {
  /** Target fraction of zero units, in `[0, 1)`. */
  sparsity: number;
  /** `per-layer` (default) or `global`. */
  scope?: "per-layer" | "global";
  /** `4x1` (default) or `unstructured`. */
  pattern?: "4x1" | "unstructured";
  /** `magnitude` (default), `wanda` or `obs` (both need `calibration`). */
  method?: PruneMethod;
  /** Calibration batches for `wanda` and `obs`. */
  calibration?: EncoderBatch[];
  /**
   * `obs`: `sequential` (default: a linear's inputs come from the model with the linears before
   * it already pruned) or `dense` (every input from the dense model).
   */
  obsInputs?: ObsInputs;
  /** `obs`: input columns per block of the sweep (default 128). */
  obsBlockSize?: number;
  /** `obs`: dampening, the fraction of the Hessian's mean diagonal added to it (default 0.01). */
  obsDampening?: number;
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
  method: PruneMethod;
  /** Calibration tokens used (wanda, obs). */
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

/**
 * Checks and fills in defaults; throws on bad values with the value quoted. With
 * `check.calibration` false, a method's need for calibration batches is not checked (the CLI
 * checks its options before it has read the texts).
 */
export function resolvePruneOptions(
  options: PruneOptions,
  check: { calibration?: boolean } = {},
): Required<
  Pick<PruneOptions, "sparsity" | "scope" | "pattern" | "method" | "obsInputs">
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
  if (method !== "magnitude" && method !== "wanda" && method !== "obs") {
    throw new RangeError(`Invalid method "${method}": expected "magnitude", "wanda" or "obs"`);
  }
  const calibrated = options.calibration !== undefined && options.calibration.length > 0;
  if (method !== "magnitude" && check.calibration !== false && !calibrated) {
    throw new Error(
      `${method === "obs" ? "OBS" : "Wanda"} pruning needs calibration texts (--calibration)`,
    );
  }
  if (method === "obs" && scope !== "per-layer") {
    throw new RangeError(`OBS pruning supports the per-layer scope only, got "${scope}"`);
  }
  const obsInputs = options.obsInputs ?? "sequential";
  if (obsInputs !== "sequential" && obsInputs !== "dense") {
    throw new RangeError(`Invalid OBS inputs "${obsInputs}": expected "sequential" or "dense"`);
  }
  return { sparsity, scope, pattern, method, obsInputs };
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
  const raw = loadedRaw(t, path);
  for (let o = 0; o < out; o++) {
    const z = zp(o);
    for (let i = 0; i < inn; i++) {
      if (!mask[o * inn + i]) continue;
      const idx = initializerIndex(dense, o, i);
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

/**
 * Runs the calibration batches through `graph` and folds every real token's value of each
 * graph value in `inputs` into one accumulator per value (`create(dim)`, then `add` per token).
 */
async function perInput<T>(
  graph: OnnxModel,
  inputs: string[],
  options: PruneOptions,
  create: (dim: number) => T,
  add: (acc: T, data: Float32Array, offset: number, dim: number) => void,
): Promise<{ values: Map<string, T>; tokens: number }> {
  const acc = new Map<string, T>();
  let tokens = 0;
  await captureActivations(graph, inputs, options.calibration!, options, (batch, values) => {
    for (const [k, v] of inputs.entries()) {
      const t = values[v];
      const dim = t.dims.at(-1)!;
      let a = acc.get(v);
      if (a === undefined) acc.set(v, a = create(dim));
      forEachToken(batch, dim, (off) => {
        if (k === 0) tokens++;
        add(a!, t.data, off, dim);
      });
    }
  });
  return { values: acc, tokens };
}

/** L2 norms of each linear input's features over the calibration tokens. */
async function inputNorms(
  a: OnnxAnalysis,
  targets: Target[],
  options: PruneOptions,
): Promise<{ norms: Map<string, Float64Array>; tokens: number }> {
  const inputs = [...new Set(targets.map((t) => t.input))];
  const { values, tokens } = await perInput(
    a.graph,
    inputs,
    options,
    (dim) => new Float64Array(dim),
    (s, data, off, dim) => {
      for (let i = 0; i < dim; i++) s[i] += data[off + i] * data[off + i];
    },
  );
  const norms = new Map<string, Float64Array>();
  for (const [v, s] of values) norms.set(v, s.map(Math.sqrt));
  return { norms, tokens };
}

/** Hessians `2 X^T X` of the graph values `inputs` over the calibration tokens. */
async function inputHessians(
  graph: OnnxModel,
  inputs: string[],
  options: PruneOptions,
): Promise<{ hessians: Map<string, Float64Array>; tokens: number }> {
  const { values, tokens } = await perInput(
    graph,
    inputs,
    options,
    (dim) => new Float64Array(dim * dim),
    (h, data, off, dim) => addOuterProduct(h, dim, data, off),
  );
  for (const h of values.values()) {
    const n = Math.round(Math.sqrt(h.length));
    symmetrize(h, n);
    for (let i = 0; i < h.length; i++) h[i] *= 2;
  }
  return { hessians: values, tokens };
}

/** Index of weight `[o, i]` in its initializer (`[out, in]` when transposed, else `[in, out]`). */
function initializerIndex(dense: DenseWeight, o: number, i: number): number {
  return dense.initializer!.transposed ? o * dense.in + i : i * dense.out + o;
}

/** The initializer's raw bytes (null when it holds typed fields); throws on unloaded data. */
function loadedRaw(t: OnnxTensor, path: string): Uint8Array | null {
  if (t.rawData === null && t.externalData !== null) {
    throw new Error(`Cannot prune "${path}": external data of "${t.name}" was not loaded`);
  }
  return t.rawData;
}

/** Writes all of a fp32 weight's values (after OBS) into its FLOAT or DOUBLE initializer. */
export function writeWeights(t: OnnxTensor, dense: DenseWeight, path: string): void {
  const { out, in: inn, weight } = dense;
  const raw = loadedRaw(t, path);
  const view = raw === null ? null : new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const double = t.dataType === DataType.DOUBLE;
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inn; i++) {
      const idx = initializerIndex(dense, o, i);
      const v = weight[o * inn + i];
      if (view !== null) {
        if (double) view.setFloat64(idx * 8, v, true);
        else view.setFloat32(idx * 4, v, true);
      } else if (t.floatData) t.floatData[idx] = v;
      else if (t.doubleData) t.doubleData[idx] = v;
      else throw new Error(`Cannot prune "${path}": initializer "${t.name}" holds no data`);
    }
  }
}

/**
 * OBS pruning of every target (see `compress/obs.ts`), writing each linear's updated weights
 * into its initializer as soon as it is pruned. Targets sharing an input (query, key, value)
 * share its Hessian. With `sequential` inputs, each input's Hessian is read from the graph with
 * every earlier linear already pruned (so 4 ONNX Runtime passes per layer); with `dense`
 * inputs, all Hessians are read from the dense model in one pass first.
 *
 * @returns calibration tokens per pass.
 */
async function pruneObs(
  a: OnnxAnalysis,
  targets: Target[],
  inits: Map<string, OnnxTensor>,
  path: string,
  options: PruneOptions & ReturnType<typeof resolvePruneOptions>,
): Promise<number> {
  if (a.quantized) {
    throw new Error(
      `OBS pruning needs fp32 weights, and "${path}" is quantized: prune the fp32 model, then quantize it`,
    );
  }
  for (const t of targets) {
    const init = inits.get(t.dense.initializer!.name)!;
    if (init.dataType !== DataType.FLOAT && init.dataType !== DataType.DOUBLE) {
      throw new Error(
        `OBS pruning of "${path}" needs FLOAT or DOUBLE weights: initializer "${init.name}" is ${
          dataTypeName(init.dataType)
        }`,
      );
    }
  }
  const groups: Target[][] = [];
  for (const t of targets) {
    const last = groups.at(-1);
    if (last !== undefined && last[0].layer === t.layer && last[0].input === t.input) last.push(t);
    else groups.push([t]);
  }
  const sequential = options.obsInputs === "sequential";
  const dense = sequential
    ? null
    : await inputHessians(a.graph, [...new Set(targets.map((t) => t.input))], options);
  let tokens = dense?.tokens ?? 0;
  let done = 0;
  for (const group of groups) {
    const input = group[0].input;
    let h: Float64Array;
    if (dense !== null) {
      h = dense.hessians.get(input)!;
      dense.hessians.delete(input);
    } else {
      // a.graph is the source model (fp32), so it holds the weights written so far.
      const read = await inputHessians(a.graph, [input], options);
      h = read.hessians.get(input)!;
      tokens = read.tokens;
    }
    const n = group[0].dense.in;
    dampen(h, n, options.obsDampening ?? 0.01);
    const hinvUpper = inverseUpperFactor(h, n);
    for (const t of group) {
      const { out, in: inn } = t.dense;
      const weight = Float64Array.from(t.dense.weight);
      const units = (options.pattern === "4x1" ? Math.ceil(out / 4) : out) * inn;
      obsPrune({
        weight,
        out,
        in: inn,
        hinvUpper,
        pattern: options.pattern,
        count: Math.round(options.sparsity * units),
        blockSize: options.obsBlockSize,
      });
      t.dense.weight.set(weight);
      writeWeights(inits.get(t.dense.initializer!.name)!, t.dense, path);
      options.onProgress?.("obs", ++done, targets.length);
    }
  }
  return tokens;
}

/** Unit masks of `magnitude` and `wanda`: the lowest scores per linear or over all linears. */
async function scoreUnits(
  a: OnnxAnalysis,
  targets: Target[],
  options: PruneOptions & ReturnType<typeof resolvePruneOptions>,
): Promise<{ units: Uint8Array[]; tokens: number }> {
  const { sparsity, scope, pattern, method } = options;
  const { norms, tokens } = method === "wanda"
    ? await inputNorms(a, targets, options)
    : { norms: null, tokens: 0 };
  options.onProgress?.("score", 0, targets.length);
  const scores = targets.map((t, k) => {
    const s = unitScores(t.dense, pattern, norms?.get(t.input) ?? null);
    options.onProgress?.("score", k + 1, targets.length);
    return s;
  });
  if (scope !== "global") {
    return { units: scores.map((s) => lowestUnits(s, Math.round(sparsity * s.length))), tokens };
  }
  const all = concatFloat32(scores);
  const pruned = lowestUnits(all, Math.round(sparsity * all.length));
  let off = 0;
  const units = scores.map((s) => {
    const u = pruned.subarray(off, off + s.length);
    off += s.length;
    return u;
  });
  return { units, tokens };
}

/**
 * Prunes the encoder linears of an analysed model and writes the zeros into `source` (the
 * decoded model the analysis came from), in place. The analysed weights are pruned too (with
 * `obs`, the kept weights are updated in both).
 */
export async function pruneAnalysis(
  a: OnnxAnalysis,
  source: OnnxModel,
  path: string,
  options: PruneOptions,
): Promise<Omit<PruneReport, "input" | "output" | "bytes">> {
  const resolved = { ...options, ...resolvePruneOptions(options) };
  const { sparsity, scope, pattern, method } = resolved;
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
  const before = targets.map((t) => measureSparsity(t.dense.weight, t.dense));
  let units: Uint8Array[] | null = null;
  let tokens: number;
  if (method === "obs") tokens = await pruneObs(a, targets, inits, path, resolved);
  else ({ units, tokens } = await scoreUnits(a, targets, resolved));
  const linears: PrunedLinear[] = [];
  let zeros = 0;
  let zeroBlocks = 0;
  let elements = 0;
  let blocks = 0;
  options.onProgress?.("write", 0, targets.length);
  for (const [k, t] of targets.entries()) {
    const init = inits.get(t.dense.initializer!.name)!;
    if (units !== null) {
      const mask = applyUnits(t.dense, pattern, units[k]);
      writeMask(init, t.dense, mask, path);
      if (init.dataType === DataType.INT8 || init.dataType === DataType.UINT8) {
        updateColumnSums(source, init, path);
      }
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

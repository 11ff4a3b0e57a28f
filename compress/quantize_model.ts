/**
 * Int8 quantization of a BERT-family ONNX model: per-output-channel symmetric int8 weights for
 * every encoder linear, activations quantized dynamically (per token or per tensor) or
 * statically (u8 scales calibrated on the user's texts), and a per-layer error report.
 *
 * No scheme may saturate the int16 pair sums of AVX2's `vpmaddubsw` (ONNX Runtime's u8 x s8
 * MatMulInteger on this machine class does saturate silently: 255 * 127 * 2 > 32767), so
 * activation and weight ranges are chosen to keep `2 * qmax_x * qmax_w <= 32767`:
 * - `dynamic`, `per-token` (default): u7 activations (0..127, the kernels' default) with 8-bit
 *   weights. ONNX has no per-row `DynamicQuantizeLinear` and ONNX Runtime's `MatMulInteger`
 *   takes only a scalar `a_zero_point`, so the per-row quantization is written with standard
 *   ops (`ReduceMax`/`ReduceMin`, `Round`, `Clip`, `Cast`) and the row zero points are removed
 *   exactly in int32 after the MatMul: `Sub(acc, zp * colsum(W))`, then `Mul(x_scale)`,
 *   `Mul(W_scale)`.
 * - `dynamic`, `per-tensor`: ONNX Runtime's `quantize_dynamic` layout
 *   (`DynamicQuantizeLinear` -> `MatMulInteger` -> `Cast` -> `Mul(Mul(x_scale, W_scale))`),
 *   u8 activations with 7-bit weights (ORT's "reduce range").
 * - `static`: u8 activations with calibrated scales and 7-bit weights, written as QDQ
 *   (`QuantizeLinear` -> `DequantizeLinear` on the input, per-axis `DequantizeLinear` of the
 *   int8 weight, `MatMul`) when the opset is 13 or later; below 13 (per-axis
 *   `DequantizeLinear` does not exist, and raising the opset would change other ops) as
 *   `QuantizeLinear` -> `MatMulInteger` -> `Cast` -> `Mul(x_scale * W_scale)`.
 *
 * Only the encoder's linears are quantized; embeddings, attention products, LayerNorm, the
 * pooler and task heads stay fp32.
 *
 * @module
 */

import {
  type CalibrationRunOptions,
  captureActivations,
  type EncoderBatch,
  forEachToken,
} from "./calibrate.ts";
import { columnSums } from "../formats/onnx_int8_tensors.ts";
import { analyzeOnnx, type OnnxAnalysis } from "../formats/onnx_import.ts";
import { LAYER_LINEARS, type LayerLinearName } from "../formats/onnx_layer.ts";
import { makeAttribute, makeTensor, rawTensor } from "../formats/onnx_tensors.ts";
import { DataType, type OnnxModel, type OnnxNode, type OnnxTensor } from "../formats/onnx_types.ts";
import { writeOnnxModel } from "../formats/onnx_write.ts";
import {
  dequantizeWeight,
  quantizeWeight,
  roundHalfEven,
  transposeInt8,
  u8Params,
} from "../encoder/quantized.ts";
import type { DenseWeight, QuantizedWeight } from "../encoder/weights.ts";

/** Options of {@linkcode quantizeAnalysis} and {@linkcode quantizeModel}. */
export interface QuantizeOptions extends CalibrationRunOptions {
  /** `dynamic` (default): ranges measured at run time; `static`: calibrated u8 scales. */
  activations?: "dynamic" | "static";
  /** Dynamic ranges per token (default) or per tensor. Static is always per tensor. */
  granularity?: "per-token" | "per-tensor";
  /**
   * Weight bits: default 8 for per-token (u7 activations), 7 otherwise (u8 activations). 8-bit
   * weights with u8 activations can saturate in ONNX Runtime on AVX2 (a warning is reported).
   */
  weightBits?: 7 | 8;
  /**
   * Calibration batches: required for static activations; used by the per-layer error report
   * (no report without them).
   */
  calibration?: EncoderBatch[];
  /**
   * Re-quantize weights that are already int8 (default false: an int8 input keeps its int8
   * weights, scales and zero points exactly).
   */
  requantize?: boolean;
  /** Token rows per linear used by the error report (default 64). */
  errorTokens?: number;
}

/** Error of one quantized linear on the calibration inputs, against its fp32 output. */
export interface LinearError {
  /** Encoder layer index. */
  layer: number;
  /** Which linear of the layer. */
  linear: LayerLinearName;
  /** `[out, in]`. */
  shape: [number, number];
  /** Largest |y_int8 - y_fp32| over the sampled tokens. */
  maxAbsError: number;
  /** ||y_int8 - y_fp32|| / ||y_fp32|| over the sampled tokens. */
  relativeError: number;
  /** Token rows used. */
  tokens: number;
}

/** What {@linkcode quantizeModel} did. */
export interface QuantizeReport {
  /** Input model. */
  input: string;
  /** Output model. */
  output: string;
  /** Activation scheme. */
  activations: "dynamic" | "static";
  /** Range granularity of the activations. */
  granularity: "per-token" | "per-tensor";
  /** Largest activation code (127 or 255). */
  activationQmax: number;
  /** ONNX layout written. */
  format: "MatMulInteger" | "QDQ";
  /** Weight bits of freshly quantized weights. */
  weightBits: 7 | 8;
  /** Linears quantized. */
  linears: number;
  /** Linears whose existing int8 weights were kept. */
  keptInt8: number;
  /** Per-linear error (empty without calibration). */
  errors: LinearError[];
  /** Warnings (e.g. a scheme that can saturate in ONNX Runtime). */
  warnings: string[];
  /** Bytes written (model + external data). */
  bytes: number;
}

interface LinearSite {
  layer: number;
  linear: LayerLinearName;
  dense: DenseWeight;
  /** The MatMul/Gemm node in the fp32 graph. */
  node: OnnxNode;
  input: string;
}

interface Scheme {
  activations: "dynamic" | "static";
  granularity: "per-token" | "per-tensor";
  qmax: number;
  weightBits: 7 | 8;
  qdq: boolean;
}

/** Finds every encoder linear's MatMul/Gemm node in the analysed fp32 graph. */
function linearSites(a: OnnxAnalysis, path: string): LinearSite[] {
  const nodes = a.graph.graph.nodes;
  const producer = new Map<string, OnnxNode>();
  for (const n of nodes) for (const o of n.outputs) producer.set(o, n);
  const sites: LinearSite[] = [];
  a.weights.layers.forEach((l, layer) => {
    for (const linear of LAYER_LINEARS) {
      const dense = l[linear];
      const input = a.layers[layer].linears[linear].input;
      const init = dense.initializer;
      const node = nodes.find((n) => {
        if ((n.opType !== "MatMul" && n.opType !== "Gemm") || n.inputs[0] !== input) return false;
        if (init === undefined) return false;
        if (n.inputs[1] === init.name) return true;
        const p = producer.get(n.inputs[1]);
        return p?.opType === "Transpose" && p.inputs[0] === init.name;
      });
      if (node === undefined) {
        throw new Error(
          `Cannot quantize "${path}": the ${linear} weight of layer ${layer} is not an initializer of a MatMul/Gemm`,
        );
      }
      sites.push({ layer, linear, dense, node, input });
    }
  });
  return sites;
}

function int8Tensor(name: string, dims: number[], values: Int8Array): OnnxTensor {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return rawTensor(name, DataType.INT8, dims, bytes);
}

class Names {
  readonly #used: Set<string>;
  constructor(model: OnnxModel) {
    const g = model.graph;
    this.#used = new Set([
      ...g.initializers.map((t) => t.name),
      ...g.inputs.map((i) => i.name),
      ...g.nodes.flatMap((n) => [...n.outputs, n.name]),
    ]);
  }
  unique(base: string): string {
    let name = base;
    for (let i = 1; this.#used.has(name); i++) name = `${base}_${i}`;
    this.#used.add(name);
    return name;
  }
}

function node(
  name: string,
  opType: string,
  inputs: string[],
  outputs: string[],
  attributes: OnnxNode["attributes"] = [],
): OnnxNode {
  return { name, opType, domain: "", inputs, outputs, attributes };
}

/** The int8 form used for a linear: its existing one, or a fresh symmetric per-channel one. */
function int8For(
  dense: DenseWeight,
  scheme: Scheme,
  options: QuantizeOptions,
): { q: QuantizedWeight; kept: boolean } {
  if (dense.quantized && !options.requantize) return { q: dense.quantized, kept: true };
  const { weight, scale } = quantizeWeight(dense.weight, dense, {
    maxQ: scheme.weightBits === 7 ? 63 : 127,
  });
  return { q: { weight, scale, zeroPoint: null, activation: "dynamic-u8" }, kept: false };
}

/** Static activation ranges of every linear input (real tokens only). */
async function calibrateRanges(
  a: OnnxAnalysis,
  inputs: string[],
  batches: EncoderBatch[],
  options: QuantizeOptions,
): Promise<Map<string, { min: number; max: number }>> {
  const ranges = new Map<string, { min: number; max: number }>();
  for (const v of inputs) ranges.set(v, { min: 0, max: 0 });
  await captureActivations(a.graph, inputs, batches, options, (batch, values) => {
    for (const v of inputs) {
      const t = values[v];
      const dim = t.dims.at(-1)!;
      const r = ranges.get(v)!;
      forEachToken(batch, dim, (off) => {
        for (let i = off; i < off + dim; i++) {
          const x = t.data[i];
          if (x < r.min) r.min = x;
          if (x > r.max) r.max = x;
        }
      });
    }
  });
  return ranges;
}

/** Result of {@linkcode quantizeAnalysis}. */
export interface QuantizedGraph {
  /** The quantized model (initializers reference the source's tensors where unchanged). */
  model: OnnxModel;
  /** Report fields (without paths and bytes). */
  report: Omit<QuantizeReport, "input" | "output" | "bytes">;
}

function resolveScheme(a: OnnxAnalysis, path: string, options: QuantizeOptions): Scheme {
  const activations = options.activations ?? "dynamic";
  if (activations !== "dynamic" && activations !== "static") {
    throw new Error(`Invalid activations "${activations}": expected "dynamic" or "static"`);
  }
  const granularity = activations === "static" ? "per-tensor" : options.granularity ?? "per-token";
  if (granularity !== "per-token" && granularity !== "per-tensor") {
    throw new Error(`Invalid granularity "${granularity}": expected "per-token" or "per-tensor"`);
  }
  if (activations === "static" && options.granularity === "per-token") {
    throw new Error("Static activation quantization is per tensor; per-token needs dynamic");
  }
  const perToken = granularity === "per-token";
  const weightBits = options.weightBits ?? (perToken ? 8 : 7);
  if (weightBits !== 7 && weightBits !== 8) {
    throw new Error(`Invalid weight bits ${weightBits}: expected 7 or 8`);
  }
  const opset = a.graph.opsetImport.find((o) => o.domain === "" || o.domain === "ai.onnx")
    ?.version ?? 0;
  if (opset < 11) {
    throw new Error(`Cannot quantize "${path}": opset ${opset} is older than 11`);
  }
  return {
    activations,
    granularity,
    qmax: perToken ? 127 : 255,
    weightBits,
    qdq: activations === "static" && opset >= 13,
  };
}

/**
 * Quantizes the encoder linears of an analysed model (see the module documentation).
 *
 * @throws Error when static activations have no calibration, or a linear is not a plain
 *   initializer weight.
 */
export async function quantizeAnalysis(
  a: OnnxAnalysis,
  path: string,
  options: QuantizeOptions = {},
): Promise<QuantizedGraph> {
  const scheme = resolveScheme(a, path, options);
  const calibration = options.calibration ?? [];
  if (scheme.activations === "static" && calibration.length === 0) {
    throw new Error("Static activation quantization needs calibration texts (--calibration)");
  }
  const warnings: string[] = [];
  if (scheme.qmax === 255 && scheme.weightBits === 8) {
    warnings.push(
      "8-bit weights with u8 activations can saturate int16 pair sums in ONNX Runtime's u8 x s8 kernels on AVX2 (results silently wrong for large activations); use 7-bit weights for ORT",
    );
  }
  const sites = linearSites(a, path);
  const inputs = [...new Set(sites.map((s) => s.input))];
  const ranges = scheme.activations === "static"
    ? await calibrateRanges(a, inputs, calibration, options)
    : null;
  const g = a.graph.graph;
  const names = new Names(a.graph);
  const newInits: OnnxTensor[] = [];
  const constant = (base: string, dataType: number, dims: number[], v: number[]): string => {
    const name = names.unique(base);
    newInits.push(makeTensor(name, dataType, dims, v));
    return name;
  };
  const replaced = new Map<OnnxNode, OnnxNode[]>();
  const inputNodes = new Map<string, ActivationNodes>();
  const drop = new Set<string>();
  const quantized = new Map<LinearSite, QuantizedWeight>();
  let kept = 0;
  options.onProgress?.("quantize", 0, sites.length);
  for (const [k, site] of sites.entries()) {
    const { q, kept: wasKept } = int8For(site.dense, scheme, options);
    if (wasKept) kept++;
    quantized.set(site, q);
    const d = site.dense;
    const base = d.initializer!.name;
    drop.add(base);
    let src = inputNodes.get(site.input);
    if (src === undefined) {
      src = activationNodes(site.input, scheme, ranges, names, constant);
      inputNodes.set(site.input, src);
    }
    replaced.set(site.node, linearNodes(site, q, src, scheme, names, newInits));
    options.onProgress?.("quantize", k + 1, sites.length);
  }
  // Emit: each input's quantization nodes before the first linear that reads it.
  const emitted = new Set<string>();
  const nodes: OnnxNode[] = [];
  for (const n of g.nodes) {
    const r = replaced.get(n);
    if (r === undefined) {
      // A Transpose feeding only a replaced MatMul is dropped with its weight.
      if (n.opType === "Transpose" && drop.has(n.inputs[0])) continue;
      nodes.push(n);
      continue;
    }
    const x = n.inputs[0];
    if (!emitted.has(x)) {
      nodes.push(...inputNodes.get(x)!.nodes);
      emitted.add(x);
    }
    nodes.push(...r);
  }
  const used = new Set(nodes.flatMap((n) => n.inputs));
  const initializers = [...g.initializers.filter((t) => used.has(t.name)), ...newInits];
  const model: OnnxModel = {
    ...a.graph,
    producerName: "sparsebert.quantize",
    producerVersion: "0.1.0",
    graph: { ...g, nodes, initializers, valueInfo: [] },
  };
  const errors = calibration.length
    ? await linearErrors(a, sites, quantized, scheme, ranges, calibration, options)
    : [];
  return {
    model,
    report: {
      activations: scheme.activations,
      granularity: scheme.granularity,
      activationQmax: scheme.qmax,
      format: scheme.qdq ? "QDQ" : "MatMulInteger",
      weightBits: scheme.weightBits,
      linears: sites.length,
      keptInt8: kept,
      errors,
      warnings,
    },
  };
}

/** The nodes quantizing one linear input, shared by the linears that read it. */
interface ActivationNodes {
  nodes: OnnxNode[];
  /** The quantized (or, for QDQ, fake-quantized) input. */
  q: string;
  /** Per-tensor scale (dynamic: a value; static: a constant) or per-row scale. */
  scale: string;
  /** Scalar zero point input of MatMulInteger, or "" (per-token: removed after the MatMul). */
  zp: string;
  /** Per-token: the int32 row zero points. */
  rowZp?: string;
  /** Static: the scale value. */
  staticScale?: number;
}

function activationNodes(
  x: string,
  scheme: Scheme,
  ranges: Map<string, { min: number; max: number }> | null,
  names: Names,
  constant: (base: string, dataType: number, dims: number[], v: number[]) => string,
): ActivationNodes {
  const nodes: OnnxNode[] = [];
  const qName = names.unique(`${x}_quantized`);
  const op = (kind: string, inputs: string[], attrs: OnnxNode["attributes"] = []): string => {
    const out = names.unique(`${x}_${kind}`);
    nodes.push(node(names.unique(`${x}_${kind}_node`), kind, inputs, [out], attrs));
    return out;
  };
  if (scheme.activations === "dynamic" && scheme.granularity === "per-tensor") {
    const sName = names.unique(`${x}_scale`);
    const zName = names.unique(`${x}_zero_point`);
    nodes.push(
      node(names.unique(`${x}_QuantizeLinear`), "DynamicQuantizeLinear", [x], [
        qName,
        sName,
        zName,
      ]),
    );
    return { nodes, q: qName, scale: sName, zp: zName };
  }
  if (scheme.activations === "dynamic") {
    // Per token (row over the last axis), asymmetric, codes 0..qmax, fp32 arithmetic with
    // round half to even, as the kernels' quantizeRows.
    const zero = constant(`${x}_const_zero`, DataType.FLOAT, [], [0]);
    const qmax = constant(`${x}_const_qmax`, DataType.FLOAT, [], [scheme.qmax]);
    const tiny = constant(`${x}_const_min_scale`, DataType.FLOAT, [], [1.1754943508222875e-38]);
    const axes = [makeAttribute("axes", [-1]), makeAttribute("keepdims", 1)];
    const hi = op("Max", [op("ReduceMax", [x], axes), zero]);
    const lo = op("Min", [op("ReduceMin", [x], axes), zero]);
    const scale = op("Max", [op("Div", [op("Sub", [hi, lo]), qmax]), tiny]);
    const inv = op("Reciprocal", [scale]);
    const zp = op("Clip", [op("Round", [op("Mul", [op("Neg", [lo]), inv])]), zero, qmax]);
    const qf = op("Clip", [op("Add", [op("Round", [op("Mul", [x, inv])]), zp]), zero, qmax]);
    nodes.push(
      node(names.unique(`${x}_QuantizeRows`), "Cast", [qf], [qName], [
        makeAttribute("to", DataType.UINT8),
      ]),
    );
    const rowZp = op("Cast", [zp], [makeAttribute("to", DataType.INT32)]);
    return { nodes, q: qName, scale, zp: "", rowZp };
  }
  // Static.
  const r = ranges!.get(x)!;
  const p = u8Params(r.min, r.max);
  const sName = constant(`${x}_scale`, DataType.FLOAT, [], [p.scale]);
  const zName = constant(`${x}_zero_point`, DataType.UINT8, [], [p.zeroPoint]);
  nodes.push(
    node(names.unique(`${x}_QuantizeLinear`), "QuantizeLinear", [x, sName, zName], [qName]),
  );
  if (scheme.qdq) {
    const dq = names.unique(`${x}_dequantized`);
    nodes.push(
      node(names.unique(`${x}_DequantizeLinear`), "DequantizeLinear", [qName, sName, zName], [dq]),
    );
    return { nodes, q: dq, scale: sName, zp: zName, staticScale: p.scale };
  }
  return { nodes, q: qName, scale: sName, zp: zName, staticScale: p.scale };
}

function linearNodes(
  site: LinearSite,
  q: QuantizedWeight,
  src: ActivationNodes,
  scheme: Scheme,
  names: Names,
  newInits: OnnxTensor[],
): OnnxNode[] {
  const d = site.dense;
  const base = d.initializer!.name;
  const perChannel = q.scale.length > 1;
  if (q.zeroPoint !== null && q.zeroPoint.length !== q.scale.length) {
    throw new Error(
      `Cannot write weight "${base}": ${q.zeroPoint.length} zero points for ${q.scale.length} scales`,
    );
  }
  // The int8 weight in the ONNX MatMul [in, out] layout.
  const onnxW = transposeInt8(q.weight, d.out, d.in);
  const wq = names.unique(`${base}_quantized`);
  const ws = names.unique(`${base}_scale`);
  const wz = names.unique(`${base}_zero_point`);
  newInits.push(int8Tensor(wq, [d.in, d.out], onnxW));
  const zp = new Int8Array(q.scale.length);
  if (q.zeroPoint !== null) { for (let i = 0; i < zp.length; i++) zp[i] = q.zeroPoint[i]; }
  const scaleDims = perChannel ? [d.out] : [];
  const hasBias = site.node.opType === "Gemm" && site.node.inputs[2];
  const final = site.node.outputs[0];
  const y = hasBias ? names.unique(`${final}_matmul`) : final;
  const mmName = site.node.name || names.unique(`${base}_MatMul`);
  const nodes: OnnxNode[] = [];
  if (scheme.qdq) {
    newInits.push(int8Tensor(wz, scaleDims, zp));
    newInits.push(makeTensor(ws, DataType.FLOAT, scaleDims, q.scale));
    const wdq = names.unique(`${base}_dequantized`);
    const attrs = perChannel ? [makeAttribute("axis", 1)] : [];
    nodes.push(
      node(
        names.unique(`${base}_DequantizeLinear`),
        "DequantizeLinear",
        [wq, ws, wz],
        [wdq],
        attrs,
      ),
      node(mmName, "MatMul", [src.q, wdq], [y]),
    );
  } else {
    const acc = names.unique(`${y}_output_quantized`);
    const bz = q.zeroPoint !== null || src.rowZp === undefined ? wz : "";
    if (bz) newInits.push(int8Tensor(wz, scaleDims, zp));
    const mmInputs = src.rowZp === undefined ? [src.q, wq, src.zp, wz] : [src.q, wq, "", bz];
    while (mmInputs.length > 2 && mmInputs.at(-1) === "") mmInputs.pop();
    nodes.push(node(names.unique(`${mmName}_quant`), "MatMulInteger", mmInputs, [acc]));
    let intOut = acc;
    if (src.rowZp !== undefined) {
      // Remove the per-row zero points exactly: acc - zp_row * colsum(W - zp_w).
      const sums = columnSums(onnxW, [d.in, d.out], q.zeroPoint);
      const sumsName = names.unique(`${base}_column_sums`);
      newInits.push(
        rawTensor(sumsName, DataType.INT32, [d.out], new Uint8Array(sums.buffer)),
      );
      const corr = names.unique(`${y}_zero_point_correction`);
      nodes.push(node(names.unique(`${corr}_node`), "Mul", [src.rowZp, sumsName], [corr]));
      intOut = names.unique(`${y}_output_exact`);
      nodes.push(node(names.unique(`${intOut}_node`), "Sub", [acc, corr], [intOut]));
    }
    const cast = names.unique(`${acc}_cast_output`);
    nodes.push(
      node(names.unique(`${acc}_cast`), "Cast", [intOut], [cast], [
        makeAttribute("to", DataType.FLOAT),
      ]),
    );
    if (src.rowZp !== undefined) {
      newInits.push(makeTensor(ws, DataType.FLOAT, scaleDims, q.scale));
      const rowScaled = names.unique(`${y}_row_scaled`);
      nodes.push(node(names.unique(`${rowScaled}_node`), "Mul", [cast, src.scale], [rowScaled]));
      nodes.push(
        node(names.unique(`${mmName}_quant_output_scale_mul`), "Mul", [rowScaled, ws], [y]),
      );
    } else if (src.staticScale === undefined) {
      newInits.push(makeTensor(ws, DataType.FLOAT, scaleDims, q.scale));
      const scales = names.unique(`${mmName}_quant_scales_mul:0`);
      nodes.push(
        node(names.unique(`${mmName}_quant_scales_mul`), "Mul", [src.scale, ws], [scales]),
        node(names.unique(`${mmName}_quant_output_scale_mul`), "Mul", [cast, scales], [y]),
      );
    } else {
      // Static: x_scale * W_scale folded into one constant.
      const s = src.staticScale;
      newInits.push(makeTensor(ws, DataType.FLOAT, scaleDims, q.scale.map((v) => v * s)));
      nodes.push(node(names.unique(`${mmName}_quant_output_scale_mul`), "Mul", [cast, ws], [y]));
    }
  }
  if (hasBias) {
    nodes.push(node(names.unique(`${mmName}_bias`), "Add", [y, site.node.inputs[2]], [final]));
  }
  return nodes;
}

/** Fake-quantizes one row (`x[off .. off + dim)`) into `out` with the given parameters. */
function fakeQuantRow(
  x: Float32Array,
  off: number,
  dim: number,
  p: { scale: number; zeroPoint: number },
  qmax: number,
  out: number[],
): void {
  for (let i = 0; i < dim; i++) {
    let q = roundHalfEven(x[off + i] / p.scale) + p.zeroPoint;
    q = q < 0 ? 0 : q > qmax ? qmax : q;
    out[i] = (q - p.zeroPoint) * p.scale;
  }
}

/** Asymmetric parameters covering `[min, max]` (widened to 0) with codes `0..qmax`. */
function rangeParams(min: number, max: number, qmax: number): { scale: number; zeroPoint: number } {
  if (qmax === 255) return u8Params(min, max);
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  const scale = Math.max(Math.fround((hi - lo) / qmax), 1.1754943508222875e-38);
  const zeroPoint = Math.min(qmax, Math.max(0, roundHalfEven(-lo / scale)));
  return { scale, zeroPoint };
}

/**
 * Per-linear error of the int8 emulation (fake-quantized activations times dequantized int8
 * weights) against the fp32 linear, on up to `errorTokens` sampled calibration tokens.
 */
async function linearErrors(
  a: OnnxAnalysis,
  sites: LinearSite[],
  quantized: Map<LinearSite, QuantizedWeight>,
  scheme: Scheme,
  ranges: Map<string, { min: number; max: number }> | null,
  batches: EncoderBatch[],
  options: QuantizeOptions,
): Promise<LinearError[]> {
  const want = options.errorTokens ?? 64;
  if (!Number.isInteger(want) || want < 1) {
    throw new RangeError(`Invalid errorTokens ${want}: expected a positive integer`);
  }
  const inputs = [...new Set(sites.map((s) => s.input))];
  const samples = new Map<string, { x: number[][]; xq: number[][] }>();
  for (const v of inputs) samples.set(v, { x: [], xq: [] });
  const perBatch = Math.ceil(want / batches.length);
  await captureActivations(a.graph, inputs, batches, options, (batch, values) => {
    for (const v of inputs) {
      const t = values[v];
      const dim = t.dims.at(-1)!;
      const rows: number[] = [];
      forEachToken(batch, dim, (off) => rows.push(off));
      const s = samples.get(v)!;
      const take = Math.min(perBatch, rows.length, want - s.x.length);
      if (take <= 0) continue;
      // Per tensor: the range a DynamicQuantizeLinear sees on this (padded) batch.
      let tensorParams: { scale: number; zeroPoint: number } | null = null;
      if (ranges !== null) {
        const r = ranges.get(v)!;
        tensorParams = u8Params(r.min, r.max);
      } else if (scheme.granularity === "per-tensor") {
        let min = 0;
        let max = 0;
        for (const x of t.data) {
          if (x < min) min = x;
          if (x > max) max = x;
        }
        tensorParams = u8Params(min, max);
      }
      for (let j = 0; j < take; j++) {
        const off = rows[Math.floor((j * rows.length) / take)];
        let p = tensorParams;
        if (p === null) {
          let min = 0;
          let max = 0;
          for (let i = off; i < off + dim; i++) {
            if (t.data[i] < min) min = t.data[i];
            if (t.data[i] > max) max = t.data[i];
          }
          p = rangeParams(min, max, scheme.qmax);
        }
        const x = Array.from(t.data.subarray(off, off + dim));
        const xq: number[] = new Array(dim);
        fakeQuantRow(t.data, off, dim, p, scheme.qmax, xq);
        s.x.push(x);
        s.xq.push(xq);
      }
    }
  });
  const errors: LinearError[] = [];
  options.onProgress?.("error report", 0, sites.length);
  for (const [k, site] of sites.entries()) {
    const d = site.dense;
    const wq = dequantizeWeight(quantized.get(site)!, d);
    const s = samples.get(site.input)!;
    let maxAbs = 0;
    let num = 0;
    let den = 0;
    for (let r = 0; r < s.x.length; r++) {
      const x = s.x[r];
      const xq = s.xq[r];
      for (let o = 0; o < d.out; o++) {
        let y = d.bias[o];
        let yq = d.bias[o];
        const row = o * d.in;
        for (let i = 0; i < d.in; i++) {
          y += x[i] * d.weight[row + i];
          yq += xq[i] * wq[row + i];
        }
        const e = Math.abs(yq - y);
        if (e > maxAbs) maxAbs = e;
        num += e * e;
        den += y * y;
      }
    }
    errors.push({
      layer: site.layer,
      linear: site.linear,
      shape: [d.out, d.in],
      maxAbsError: maxAbs,
      relativeError: den > 0 ? Math.sqrt(num / den) : 0,
      tokens: s.x.length,
    });
    options.onProgress?.("error report", k + 1, sites.length);
  }
  return errors;
}

/**
 * Reads an ONNX model, quantizes its encoder linears and writes the result (with external
 * data next to it when the source had external data).
 */
export async function quantizeModel(
  input: string,
  output: string,
  options: QuantizeOptions = {},
): Promise<QuantizeReport> {
  const analysis = await analyzeOnnx(input);
  const source = analysis.source;
  const { model, report } = await quantizeAnalysis(analysis, input, options);
  const external = source.graph.initializers.some((t) => t.externalData !== null);
  const base = output.slice(output.lastIndexOf("/") + 1);
  const written = await writeOnnxModel(output, model, {
    externalData: external ? { location: `${base}.data` } : undefined,
  });
  return { input, output, ...report, bytes: written.bytes + written.externalBytes };
}

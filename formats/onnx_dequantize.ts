/**
 * Rewrites a quantized ONNX graph into the equivalent fp32 graph, so that the pattern importer
 * sees the same MatMul + Add linears it sees in a plain export, and records the int8 form of
 * every weight it dequantized.
 *
 * Recognised forms (ONNX Runtime's `quantize_dynamic` / `quantize_static` outputs and the
 * contrib ops its optimizer fuses them into):
 * - `DynamicQuantizeLinear` (or a static `QuantizeLinear`) -> `MatMulInteger` -> `Cast` ->
 *   `Mul` by the scales (the QOperator form of `quantize_dynamic`), per-tensor or per-channel
 *   weight scales and zero points, int8 or uint8 weights;
 * - `DynamicQuantizeMatMul` and `MatMulIntegerToFloat` (com.microsoft), with optional bias;
 * - `QuantizeLinear` -> `QLinearMatMul` -> `DequantizeLinear` (static QOperator around a MatMul);
 * - QDQ: `DequantizeLinear` of constant int8/uint8 weights (per-tensor or per-axis),
 *   `QuantizeLinear` -> `DequantizeLinear` pairs on activations (static) or
 *   `DynamicQuantizeLinear` -> `DequantizeLinear` (dynamic), which are removed;
 * - quantized embedding tables: `Gather` from a u8/s8 table -> `DequantizeLinear`.
 *
 * The fp32 weight that replaces an int8 initializer keeps the initializer's name, so an
 * importer that records initializer names points back into the original file. The activation
 * quantization is not modelled in the fp32 graph (it runs the dequantized weights on fp32
 * activations); it is recorded for the int8 kernels.
 *
 * @module
 */

import { tensorToFloat32 } from "./onnx_tensors.ts";
import { DataType, type OnnxModel, type OnnxNode, type OnnxTensor } from "./onnx_types.ts";
import { roundHalfEven } from "../encoder/quantized.ts";
import { attrInt, describe } from "./onnx_graph.ts";
import {
  columnSums,
  deadCodeElimination,
  dequantize,
  floatTensor,
  intValues,
  isQuantType,
} from "./onnx_int8_tensors.ts";
import type { ActivationRanges, QuantizedOnnxForm, QuantizedWeight } from "../encoder/weights.ts";

/**
 * The int8 form of one MatMul weight as found in the graph (ONNX layout, not torch layout), with
 * its input activations' quantization as {@linkcode QuantizedWeight} holds it.
 */
export interface OnnxQuantRecord extends
  Pick<
    QuantizedWeight,
    "activation" | "granularity" | "activationQmax" | "inputScale" | "inputZeroPoint"
  > {
  /** Int8 values in the initializer's own layout (`dims`), u8 already shifted by -128. */
  values: Int8Array;
  /** Dims of the initializer: `[in, out]` for a MatMul weight, `[out, in]` behind a Transpose. */
  dims: [number, number];
  /** Axis of `dims` that holds the per-channel scales (meaningful when `scale.length > 1`). */
  axis: number;
  /** `[1]` or `[dims[axis]]`. */
  scale: Float32Array;
  /** Int8-domain zero points (`[1]` or `[dims[axis]]`), or `null` when all are 0. */
  zeroPoint: Int32Array | null;
  /** Where the weight came from. */
  form: QuantizedOnnxForm;
}

/** Result of {@linkcode dequantizeOnnxModel}. */
export interface DequantizedModel {
  /** The fp32 graph (the input model itself when it had no quantized ops). */
  model: OnnxModel;
  /** Int8 weights by initializer name. */
  records: Map<string, OnnxQuantRecord>;
  /** Whether the graph was quantized (and rewritten). */
  quantized: boolean;
}

/** Ops that make a graph "quantized" for this pass. */
export const QUANTIZED_OPS: ReadonlySet<string> = new Set([
  "MatMulInteger",
  "DynamicQuantizeLinear",
  "QuantizeLinear",
  "DequantizeLinear",
  "DynamicQuantizeMatMul",
  "MatMulIntegerToFloat",
  "QLinearMatMul",
]);

/** Quantized ops this pass cannot turn into fp32 (the importer names them in its error). */
export const UNSUPPORTED_QUANTIZED_OPS: ReadonlySet<string> = new Set([
  "QAttention",
  "QGemm",
  "MatMulNBits",
  "QLinearAdd",
  "QLinearMul",
  "QLinearConv",
  "QLinearSoftmax",
  "QEmbedLayerNormalization",
  "QOrderedMatMul",
]);

interface Activation {
  activation: ActivationRanges;
  granularity?: "per-tensor" | "per-token";
  activationQmax?: number;
  inputScale?: number;
  inputZeroPoint?: number;
}

class Rewriter {
  readonly #model: OnnxModel;
  readonly #path: string;
  readonly #producer = new Map<string, OnnxNode>();
  readonly #consumers = new Map<string, OnnxNode[]>();
  readonly #inits = new Map<string, OnnxTensor>();
  /** Nodes to drop (replaced or folded). */
  readonly #removed = new Set<OnnxNode>();
  /** Replacement nodes, emitted where the original node was. */
  readonly #replace = new Map<OnnxNode, OnnxNode[]>();
  /** Value renames (a DequantizeLinear output -> the fp32 value it stands for). */
  readonly #rename = new Map<string, string>();
  /** fp32 initializers replacing (same name) or added. */
  readonly #newInits = new Map<string, OnnxTensor>();
  readonly #records = new Map<string, OnnxQuantRecord>();
  /** Activation quantization of MatMul inputs found on QDQ pairs, by MatMul node. */
  readonly #qdqActivation = new Map<OnnxNode, Activation>();

  constructor(model: OnnxModel, path: string) {
    this.#model = model;
    this.#path = path;
    for (const t of model.graph.initializers) this.#inits.set(t.name, t);
    for (const n of model.graph.nodes) {
      for (const o of n.outputs) if (o) this.#producer.set(o, n);
      for (const i of n.inputs) {
        if (!i) continue;
        const list = this.#consumers.get(i);
        if (list) list.push(n);
        else this.#consumers.set(i, [n]);
      }
    }
  }

  #fail(node: OnnxNode, expected: string): never {
    throw new Error(
      `Cannot import quantized ONNX model "${this.#path}": at node ${describe(node)}: ${expected}`,
    );
  }

  #next(value: string): OnnxNode[] {
    return (this.#consumers.get(value) ?? []).filter((n) => n.opType !== "Shape");
  }

  /** An initializer or Constant-node tensor behind a value (through Identity), or null. */
  #const(value: string): OnnxTensor | null {
    if (!value) return null;
    const init = this.#inits.get(value);
    if (init) return init;
    const p = this.#producer.get(value);
    if (p?.opType === "Constant") return p.attributes.find((a) => a.name === "value")?.t ?? null;
    if (p?.opType === "Identity") return this.#const(p.inputs[0]);
    return null;
  }

  #floats(value: string, node: OnnxNode, what: string): Float32Array {
    const t = this.#const(value);
    if (t === null) this.#fail(node, `expected a constant ${what} as input "${value}"`);
    try {
      return tensorToFloat32(t);
    } catch (err) {
      this.#fail(node, `expected a float ${what}: ${(err as Error).message}`);
    }
  }

  /** A zero point input as int8-domain values (u8 shifted by -128), or null when absent/0. */
  #zeroPoint(
    value: string | undefined,
    node: OnnxNode,
  ): { values: Int32Array | null; unsigned: boolean } {
    if (!value) return { values: null, unsigned: false };
    const t = this.#const(value);
    if (t === null || !isQuantType(t.dataType)) {
      this.#fail(node, `expected a constant int8/uint8 zero point as input "${value}"`);
    }
    return { values: intValues(t), unsigned: t.dataType === DataType.UINT8 };
  }

  /** A constant int8/uint8 2-D weight, as int8 values (u8 shifted by -128). */
  #weight(
    value: string,
    node: OnnxNode,
  ): { name: string; dims: [number, number]; values: Int32Array; unsigned: boolean } {
    const t = this.#const(value);
    if (t === null || !isQuantType(t.dataType) || t.dims.length !== 2) {
      this.#fail(node, `expected a constant 2-D int8/uint8 weight as input "${value}"`);
    }
    const values = intValues(t);
    const unsigned = t.dataType === DataType.UINT8;
    if (unsigned) { for (let i = 0; i < values.length; i++) values[i] -= 128; }
    return { name: value, dims: [t.dims[0], t.dims[1]], values, unsigned };
  }

  /** Zero points in the weight's int8 domain, or null when all are zero. */
  #weightZeroPoint(
    value: string | undefined,
    node: OnnxNode,
    unsigned: boolean,
    channels: number,
  ): Int32Array | null {
    const zp = this.#zeroPoint(value, node);
    if (zp.values === null) {
      return unsigned ? Int32Array.from({ length: 1 }, () => -128) : null;
    }
    if (zp.unsigned !== unsigned) {
      this.#fail(node, "expected the weight zero point to have the weight's data type");
    }
    if (zp.values.length !== 1 && zp.values.length !== channels) {
      this.#fail(node, `expected 1 or ${channels} weight zero points, found ${zp.values.length}`);
    }
    const v = unsigned ? zp.values.map((z) => z - 128) : zp.values;
    return v.every((z) => z === 0) ? null : v;
  }

  /** Stores the fp32 weight and its int8 record. */
  #addWeight(
    w: { name: string; dims: [number, number]; values: Int32Array },
    scale: Float32Array,
    zeroPoint: Int32Array | null,
    axis: number,
    form: QuantizedOnnxForm,
    activation: Activation,
    node: OnnxNode,
  ): void {
    const channels = w.dims[axis];
    if (scale.length !== 1 && scale.length !== channels) {
      this.#fail(
        node,
        `expected 1 or ${channels} weight scales for weight "${w.name}" [${w.dims}], found ${scale.length}`,
      );
    }
    if (!scale.every((s) => Number.isFinite(s) && s > 0)) {
      this.#fail(node, `expected positive finite weight scales for weight "${w.name}"`);
    }
    const fp32 = dequantize(w.values, w.dims, scale, zeroPoint, axis);
    this.#newInits.set(w.name, floatTensor(w.name, w.dims, fp32));
    const prev = this.#records.get(w.name);
    if (prev !== undefined && prev.form !== form) {
      this.#fail(node, `weight "${w.name}" is used by two differently quantized MatMuls`);
    }
    this.#records.set(w.name, {
      values: Int8Array.from(w.values),
      dims: w.dims,
      axis,
      scale: Float32Array.from(scale),
      zeroPoint,
      form,
      ...activation,
    });
  }

  /** The fp32 input and activation scheme behind a quantized MatMul input. */
  #activationSource(
    value: string,
    node: OnnxNode,
  ): {
    x: string;
    act: Activation;
    dynamicScale: string | null;
    zeroPoint: string | null;
    /** The per-row float zero point of the per-token form (its correction follows the MatMul). */
    rowZeroPoint?: string;
  } {
    const p = this.#producer.get(value);
    if (p?.opType === "Cast" && attrInt(p, "to", 0) === DataType.UINT8) {
      return this.#perTokenSource(p, node);
    }
    if (p?.opType === "DynamicQuantizeLinear" && p.outputs[0] === value) {
      return {
        x: p.inputs[0],
        act: { activation: "dynamic-u8" },
        dynamicScale: p.outputs[1],
        zeroPoint: p.outputs[2],
      };
    }
    if (p?.opType === "QuantizeLinear") {
      const s = this.#floats(p.inputs[1], p, "activation scale");
      const zp = this.#zeroPoint(p.inputs[2], p);
      if (s.length !== 1 || (zp.values !== null && zp.values.length !== 1)) {
        this.#fail(p, "expected a per-tensor activation scale and zero point");
      }
      if (zp.values !== null && !zp.unsigned) {
        this.#fail(
          p,
          "expected a uint8 activation zero point (int8 activations are not supported)",
        );
      }
      return {
        x: p.inputs[0],
        act: { activation: "static", inputScale: s[0], inputZeroPoint: zp.values?.[0] ?? 0 },
        dynamicScale: null,
        zeroPoint: p.inputs[2] ?? null,
      };
    }
    this.#fail(
      node,
      `expected its input "${value}" to come from DynamicQuantizeLinear or QuantizeLinear`,
    );
  }

  /**
   * sparsebert's per-token form (ONNX has no per-row `DynamicQuantizeLinear`, and ONNX Runtime's
   * `MatMulInteger` takes only a scalar `a_zero_point`):
   * `q = Cast<u8>(Clip(Round(x * Reciprocal(s)) + zp, 0, qmax))` with `s` and `zp` computed per
   * row from `ReduceMax`/`ReduceMin` over the last axis; the MatMul is followed by
   * `Sub(acc, Cast<i32>(zp) * colsum(W))`, `Cast<float>`, `Mul(s)`, `Mul(W_scale)`.
   */
  #perTokenSource(
    cast: OnnxNode,
    node: OnnxNode,
  ): {
    x: string;
    act: Activation;
    dynamicScale: string;
    zeroPoint: null;
    rowZeroPoint: string;
  } {
    const fail = (what: string): never => this.#fail(node, `expected ${what} (per-token form)`);
    const clip = this.#producer.get(cast.inputs[0]);
    if (clip?.opType !== "Clip") fail("Clip before the Cast to uint8");
    const qmax = this.#const(clip!.inputs[2] ?? "");
    const qmaxValue = qmax ? tensorToFloat32(qmax)[0] : NaN;
    if (qmaxValue !== 127 && qmaxValue !== 255) fail("a Clip to [0, 127] or [0, 255]");
    const add = this.#producer.get(clip!.inputs[0]);
    if (add?.opType !== "Add") fail("Add(Round(x * inv), zero point) before the Clip");
    const roundIdx = add!.inputs.findIndex((i) => this.#producer.get(i)?.opType === "Round");
    if (roundIdx < 0) fail("Round(x * inv) in the Add");
    const rowZeroPoint = add!.inputs[1 - roundIdx];
    const mul = this.#producer.get(this.#producer.get(add!.inputs[roundIdx])!.inputs[0]);
    if (mul?.opType !== "Mul") fail("Mul(x, inv) before the Round");
    const invIdx = mul!.inputs.findIndex((i) => this.#producer.get(i)?.opType === "Reciprocal");
    if (invIdx < 0) fail("Mul(x, Reciprocal(scale))");
    const x = mul!.inputs[1 - invIdx];
    const scale = this.#producer.get(mul!.inputs[invIdx])!.inputs[0];
    const reduce = (this.#consumers.get(x) ?? []).find((n) => n.opType === "ReduceMax");
    if (reduce === undefined) fail(`ReduceMax of "${x}"`);
    const axes = reduce!.attributes.find((a) => a.name === "axes")?.ints ?? [];
    const perToken = axes.length === 1 && axes[0] === -1;
    return {
      x,
      act: {
        activation: "dynamic-u8",
        granularity: perToken ? "per-token" : "per-tensor",
        activationQmax: qmaxValue,
      },
      dynamicScale: scale,
      zeroPoint: null,
      rowZeroPoint,
    };
  }

  /** MatMul(x, W) and, with a bias, Add(MatMul, bias), producing `out`. */
  #matmul(node: OnnxNode, x: string, w: string, out: string, bias?: string): OnnxNode[] {
    const mm: OnnxNode = {
      name: node.name,
      opType: "MatMul",
      domain: "",
      inputs: [x, w],
      outputs: [bias ? `${out}__matmul` : out],
      attributes: [],
    };
    if (!bias) return [mm];
    const add: OnnxNode = {
      name: `${node.name}__bias`,
      opType: "Add",
      domain: "",
      inputs: [mm.outputs[0], bias],
      outputs: [out],
      attributes: [],
    };
    return [mm, add];
  }

  #matMulInteger(n: OnnxNode): void {
    const [a, b, aZp, bZp] = n.inputs;
    const w = this.#weight(b, n);
    const src = this.#activationSource(a, n);
    if (src.act.activation === "dynamic-u8" && (aZp || null) !== src.zeroPoint) {
      this.#fail(n, `expected the DynamicQuantizeLinear zero point "${src.zeroPoint}" as input 2`);
    }
    if (src.act.activation === "static") {
      const zp = this.#zeroPoint(aZp, n).values?.[0] ?? 0;
      if (zp !== src.act.inputZeroPoint) {
        this.#fail(
          n,
          `expected the QuantizeLinear zero point ${src.act.inputZeroPoint} as input 2`,
        );
      }
    }
    const zeroPoint = this.#weightZeroPoint(bZp, n, w.unsigned, w.dims[1]);
    // MatMulInteger -> Cast(float) -> Mul by the scales (a_scale * b_scale, as one Mul of a
    // Mul, or two Muls), all single-consumer.
    let next = this.#next(n.outputs[0]);
    const chain: OnnxNode[] = [];
    if (src.rowZeroPoint !== undefined) {
      // Per-token: Sub(acc, Mul(Cast<i32>(zp), colsum(W))) removes the row zero points.
      const sub = next[0];
      if (next.length !== 1 || sub.opType !== "Sub" || sub.inputs[0] !== n.outputs[0]) {
        this.#fail(n, "expected Sub(acc, zero point correction) after MatMulInteger");
      }
      const corr = this.#producer.get(sub.inputs[1]);
      const sums = corr?.opType === "Mul"
        ? corr.inputs.map((i) => this.#const(i)).find((t) => t !== null)
        : undefined;
      if (!sums) this.#fail(sub, "expected the zero point times constant weight column sums");
      const expected = columnSums(w.values, w.dims, zeroPoint);
      const got = intValues(sums);
      if (got.length !== expected.length || got.some((v, i) => v !== expected[i])) {
        this.#fail(sub, `expected the column sums of weight "${w.name}" in the correction`);
      }
      chain.push(sub);
      next = this.#next(sub.outputs[0]);
    }
    if (next.length !== 1 || next[0].opType !== "Cast" || attrInt(next[0], "to", 0) !== 1) {
      this.#fail(n, "expected one Cast to float after MatMulInteger");
    }
    chain.push(next[0]);
    let value = next[0].outputs[0];
    const consts: Float32Array[] = [];
    let symbolic = 0;
    const collect = (v: string, mul: OnnxNode, depth: number): void => {
      if (src.dynamicScale !== null && v === src.dynamicScale) {
        symbolic++;
        return;
      }
      const t = this.#const(v);
      if (t !== null) {
        consts.push(this.#floats(v, mul, "scale"));
        return;
      }
      const p = this.#producer.get(v);
      if (p?.opType === "Mul" && depth < 2) {
        collect(p.inputs[0], p, depth + 1);
        collect(p.inputs[1], p, depth + 1);
        return;
      }
      this.#fail(
        mul,
        `expected the dequantization scale "${v}" to be constant or a_scale * b_scale`,
      );
    };
    for (let step = 0; step < 2; step++) {
      const muls = this.#next(value);
      if (muls.length !== 1 || muls[0].opType !== "Mul") break;
      const mul = muls[0];
      collect(mul.inputs[0] === value ? mul.inputs[1] : mul.inputs[0], mul, 0);
      chain.push(mul);
      value = mul.outputs[0];
      const done = src.dynamicScale === null
        ? consts.length > 0
        : symbolic > 0 && consts.length > 0;
      if (done) break;
    }
    const wantSymbolic = src.dynamicScale === null ? 0 : 1;
    if (chain.at(-1)!.opType !== "Mul" || symbolic !== wantSymbolic || consts.length === 0) {
      this.#fail(
        chain.at(-1)!,
        "expected Mul by the activation scale times the weight scale after the Cast",
      );
    }
    const channels = w.dims[1];
    let scale = new Float32Array(consts.some((c) => c.length > 1) ? channels : 1).fill(1);
    for (const c of consts) {
      if (c.length !== 1 && c.length !== channels) {
        this.#fail(chain.at(-1)!, `expected 1 or ${channels} scales, found ${c.length}`);
      }
      for (let i = 0; i < scale.length; i++) scale[i] *= c[c.length === 1 ? 0 : i];
    }
    if (src.act.activation === "static") {
      const s = src.act.inputScale!;
      scale = scale.map((v) => v / s);
    }
    this.#addWeight(w, scale, zeroPoint, 1, "MatMulInteger", src.act, n);
    this.#replace.set(n, this.#matmul(n, src.x, w.name, value));
    for (const c of chain) this.#removed.add(c);
  }

  #dynamicQuantizeMatMul(n: OnnxNode): void {
    const [a, b, bScale, bZp, bias] = n.inputs;
    const w = this.#weight(b, n);
    const scale = this.#floats(bScale, n, "weight scale");
    const zeroPoint = this.#weightZeroPoint(bZp, n, w.unsigned, w.dims[1]);
    this.#addWeight(w, scale, zeroPoint, 1, "DynamicQuantizeMatMul", {
      activation: "dynamic-u8",
    }, n);
    this.#replace.set(n, this.#matmul(n, a, w.name, n.outputs[0], bias || undefined));
  }

  #matMulIntegerToFloat(n: OnnxNode): void {
    const [a, b, aScale, bScale, aZp, bZp, bias] = n.inputs;
    const w = this.#weight(b, n);
    const src = this.#activationSource(a, n);
    if (src.act.activation === "dynamic-u8") {
      if (aScale !== src.dynamicScale || (aZp || null) !== src.zeroPoint) {
        this.#fail(n, "expected the DynamicQuantizeLinear scale and zero point as a_scale, a_zp");
      }
    }
    const scale = this.#floats(bScale, n, "weight scale");
    const zeroPoint = this.#weightZeroPoint(bZp, n, w.unsigned, w.dims[1]);
    this.#addWeight(w, scale, zeroPoint, 1, "MatMulIntegerToFloat", src.act, n);
    this.#replace.set(n, this.#matmul(n, src.x, w.name, n.outputs[0], bias || undefined));
  }

  #qLinearMatMul(n: OnnxNode): void {
    const [a, , , b, bScale, bZp] = n.inputs;
    const w = this.#weight(b, n);
    const src = this.#activationSource(a, n);
    if (src.act.activation !== "static") {
      this.#fail(n, "expected a static QuantizeLinear input");
    }
    const next = this.#next(n.outputs[0]);
    if (next.length !== 1 || next[0].opType !== "DequantizeLinear") {
      this.#fail(n, "expected one DequantizeLinear of the QLinearMatMul output");
    }
    const scale = this.#floats(bScale, n, "weight scale");
    const zeroPoint = this.#weightZeroPoint(bZp, n, w.unsigned, w.dims[1]);
    this.#addWeight(w, scale, zeroPoint, 1, "QLinearMatMul", src.act, n);
    this.#replace.set(n, this.#matmul(n, src.x, w.name, next[0].outputs[0]));
    this.#removed.add(next[0]);
  }

  #dequantizeLinear(d: OnnxNode): void {
    const [q, s, zpName] = d.inputs;
    const out = d.outputs[0];
    const scale = this.#floats(s, d, "scale");
    const p = this.#producer.get(q);
    const qConst = this.#const(q);
    const axisOf = (rank: number): number => {
      const axis = attrInt(d, "axis", 1);
      return axis < 0 ? axis + rank : axis;
    };
    // Weights (and other constants): fold into an fp32 initializer.
    if (qConst !== null || (p?.opType === "QuantizeLinear" && this.#const(p.inputs[0]))) {
      let values: Int32Array;
      let dims: number[];
      let name: string;
      let unsigned: boolean;
      if (qConst !== null) {
        if (!isQuantType(qConst.dataType)) {
          this.#fail(d, `expected an int8/uint8 tensor as input "${q}"`);
        }
        values = intValues(qConst);
        dims = qConst.dims;
        name = this.#inits.has(q) ? q : out;
        unsigned = qConst.dataType === DataType.UINT8;
      } else {
        // Q/DQ of an fp32 constant: quantize it here.
        const src = this.#floats(p!.inputs[0], p!, "weight");
        const srcT = this.#const(p!.inputs[0])!;
        const qs = this.#floats(p!.inputs[1], p!, "scale");
        const qzp = this.#zeroPoint(p!.inputs[2], p!);
        dims = srcT.dims;
        unsigned = qzp.values === null || qzp.unsigned;
        const axis = axisOf(dims.length);
        let inner = 1;
        for (let k = axis + 1; k < dims.length; k++) inner *= dims[k];
        values = new Int32Array(src.length);
        const lo = unsigned ? 0 : -128;
        const hi = unsigned ? 255 : 127;
        for (let i = 0; i < src.length; i++) {
          const c = qs.length === 1 ? 0 : Math.floor(i / inner) % dims[axis];
          const z = qzp.values === null ? 0 : qzp.values[qzp.values.length === 1 ? 0 : c];
          const v = roundHalfEven(src[i] / qs[c]) + z;
          values[i] = v < lo ? lo : v > hi ? hi : v;
        }
        name = this.#inits.has(p!.inputs[0]) ? p!.inputs[0] : out;
        this.#removed.add(p!);
      }
      const zp = this.#zeroPoint(zpName, d);
      const axis = axisOf(dims.length);
      if (scale.length !== 1 && (dims.length === 0 || scale.length !== dims[axis])) {
        this.#fail(
          d,
          `expected 1 or ${dims[axis]} scales along axis ${axis}, found ${scale.length}`,
        );
      }
      const fp32 = dequantize(values, dims, scale, zp.values, axis);
      this.#newInits.set(name, floatTensor(name, dims, fp32));
      this.#rename.set(out, name);
      this.#removed.add(d);
      // A MatMul weight (directly or behind a Transpose): record its int8 form.
      if (dims.length === 2) {
        const shifted = unsigned ? values.map((v) => v - 128) : values;
        const zpShifted = zp.values === null
          ? (unsigned ? Int32Array.of(-128) : null)
          : unsigned
          ? zp.values.map((z) => z - 128)
          : zp.values;
        const zero = zpShifted !== null && zpShifted.every((z) => z === 0) ? null : zpShifted;
        for (const c of this.#next(out)) {
          const isWeight = (c.opType === "MatMul" && c.inputs[1] === out) ||
            (c.opType === "Transpose" &&
              this.#next(c.outputs[0]).some((m) => m.opType === "MatMul"));
          if (isWeight) {
            this.#records.set(name, {
              values: Int8Array.from(shifted),
              dims: [dims[0], dims[1]],
              axis,
              scale: Float32Array.from(scale),
              zeroPoint: zero,
              form: "QDQ",
              activation: "dynamic-u8",
            });
          }
        }
      }
      return;
    }
    // Quantized embedding tables: Gather(u8 table, ids) -> DequantizeLinear.
    if (p?.opType === "Gather") {
      const table = this.#const(p.inputs[0]);
      if (table === null || !isQuantType(table.dataType)) {
        this.#fail(d, `expected a Gather from a constant int8/uint8 table before it`);
      }
      const axis = axisOf(table.dims.length);
      if (scale.length !== 1 && (axis !== table.dims.length - 1 || attrInt(p, "axis", 0) !== 0)) {
        this.#fail(d, "expected a per-tensor (or last-axis) scale for a quantized Gather table");
      }
      const zp = this.#zeroPoint(zpName, d);
      const fp32 = dequantize(intValues(table), table.dims, scale, zp.values, axis);
      this.#newInits.set(p.inputs[0], floatTensor(p.inputs[0], table.dims, fp32));
      this.#rename.set(out, p.outputs[0]);
      this.#removed.add(d);
      return;
    }
    // Activation fake quantization: drop the pair.
    if (p?.opType === "QuantizeLinear" || p?.opType === "DynamicQuantizeLinear") {
      let act: Activation;
      if (p.opType === "DynamicQuantizeLinear") {
        if (p.outputs[0] !== q) {
          this.#fail(d, "expected the quantized output of DynamicQuantizeLinear");
        }
        act = { activation: "dynamic-u8" };
      } else {
        const zp = this.#zeroPoint(p.inputs[2], p);
        const qs = this.#floats(p.inputs[1], p, "activation scale");
        if (qs.length !== 1) this.#fail(p, "expected a per-tensor activation scale");
        act = {
          activation: "static",
          inputScale: qs[0],
          inputZeroPoint: zp.values?.[0] ?? 0,
        };
        if (zp.values !== null && !zp.unsigned) {
          // s8 activations: still an fp32 graph, but not a u8 static scheme.
          act = { activation: "dynamic-u8" };
        }
      }
      for (const c of this.#next(out)) {
        if (c.opType === "MatMul" && c.inputs[0] === out) this.#qdqActivation.set(c, act);
      }
      this.#rename.set(out, p.inputs[0]);
      this.#removed.add(d);
      return;
    }
    this.#fail(
      d,
      "expected DequantizeLinear of a constant, of a quantized Gather, or after a QuantizeLinear",
    );
  }

  #resolve(value: string): string {
    let v = value;
    for (let i = 0; i < 8 && this.#rename.has(v); i++) v = this.#rename.get(v)!;
    return v;
  }

  run(): DequantizedModel {
    const g = this.#model.graph;
    const unsupported = g.nodes.find((n) => UNSUPPORTED_QUANTIZED_OPS.has(n.opType));
    if (unsupported) {
      throw new Error(
        `Cannot import quantized ONNX model "${this.#path}": node ${
          describe(unsupported)
        } is not supported (supported: MatMulInteger, DynamicQuantizeMatMul, MatMulIntegerToFloat, QLinearMatMul around a MatMul, and QDQ)`,
      );
    }
    if (!g.nodes.some((n) => QUANTIZED_OPS.has(n.opType))) {
      return { model: this.#model, records: new Map(), quantized: false };
    }
    for (const n of g.nodes) {
      switch (n.opType) {
        case "MatMulInteger":
          this.#matMulInteger(n);
          break;
        case "DynamicQuantizeMatMul":
          this.#dynamicQuantizeMatMul(n);
          break;
        case "MatMulIntegerToFloat":
          this.#matMulIntegerToFloat(n);
          break;
        case "QLinearMatMul":
          this.#qLinearMatMul(n);
          break;
      }
    }
    for (const n of g.nodes) {
      if (n.opType === "DequantizeLinear" && !this.#removed.has(n)) this.#dequantizeLinear(n);
    }
    // Activation schemes found on QDQ pairs belong to the weight of the MatMul they feed.
    for (const [mm, act] of this.#qdqActivation) {
      const rec = this.#records.get(this.#resolve(mm.inputs[1]));
      if (rec !== undefined) Object.assign(rec, act);
    }
    // Emit the rewritten node list with renamed inputs; dead nodes are dropped below.
    const graphOutputs = new Set(g.outputs.map((o) => o.name));
    let nodes: OnnxNode[] = [];
    for (const n of g.nodes) {
      if (this.#removed.has(n)) continue;
      for (const r of this.#replace.get(n) ?? [n]) {
        const inputs = r.inputs.map((i) => (i ? this.#resolve(i) : i));
        nodes.push(inputs.every((v, k) => v === r.inputs[k]) ? r : { ...r, inputs });
      }
    }
    for (const o of graphOutputs) {
      const v = this.#resolve(o);
      if (v !== o) {
        nodes.push({
          name: `${o}__identity`,
          opType: "Identity",
          domain: "",
          inputs: [v],
          outputs: [o],
          attributes: [],
        });
      }
    }
    nodes = deadCodeElimination(nodes, graphOutputs);
    const left = nodes.find((n) => QUANTIZED_OPS.has(n.opType));
    if (left) {
      this.#fail(left, "this quantized node is not part of a recognised quantized MatMul pattern");
    }
    const used = new Set(nodes.flatMap((n) => n.inputs));
    const initializers: OnnxTensor[] = [];
    for (const t of g.initializers) {
      if (!used.has(t.name)) continue;
      initializers.push(this.#newInits.get(t.name) ?? t);
    }
    const present = new Set(initializers.map((t) => t.name));
    for (const [name, t] of this.#newInits) {
      if (!present.has(name) && used.has(name)) initializers.push(t);
    }
    const model: OnnxModel = {
      ...this.#model,
      graph: { ...g, nodes, initializers, valueInfo: [] },
    };
    return { model, records: this.#records, quantized: true };
  }
}

/**
 * Rewrites a quantized graph into fp32 (see the module documentation). A graph without
 * quantized ops is returned as is.
 *
 * @throws Error naming the node where a quantized pattern is not recognised, or an
 *   unsupported quantized op.
 */
export function dequantizeOnnxModel(model: OnnxModel, path: string): DequantizedModel {
  return new Rewriter(model, path).run();
}

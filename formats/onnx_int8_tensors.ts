/**
 * The tensor arithmetic of rewriting a quantized ONNX graph into fp32 (`onnx_dequantize.ts`):
 * integer values of INT8/UINT8/INT32 tensors, `(q - zp) * scale` per tensor or per axis, new
 * fp32 tensors, int8 column sums, and dropping the nodes the rewrite left unused.
 *
 * @module
 */
import { rawTensor, tensorSize } from "./onnx_tensors.ts";
import { DataType, dataTypeName, type OnnxNode, type OnnxTensor } from "./onnx_types.ts";

/** An fp32 tensor over `values` (not copied). */
export function floatTensor(name: string, dims: number[], values: Float32Array): OnnxTensor {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return rawTensor(name, DataType.FLOAT, dims, bytes);
}

/** Integer values of an INT8/UINT8/INT32 tensor. */
export function intValues(t: OnnxTensor): Int32Array {
  const n = tensorSize(t);
  let out: Int32Array;
  if (t.rawData !== null) {
    const raw = t.rawData;
    if (t.dataType === DataType.INT8) {
      out = Int32Array.from(new Int8Array(raw.buffer, raw.byteOffset, raw.byteLength));
    } else if (t.dataType === DataType.UINT8) {
      out = Int32Array.from(raw);
    } else if (t.dataType === DataType.INT32) {
      out = new Int32Array(n);
      const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
      for (let i = 0; i < n; i++) out[i] = view.getInt32(4 * i, true);
    } else {
      throw new Error(`Tensor "${t.name}" is ${dataTypeName(t.dataType)}, expected an int8/uint8`);
    }
  } else if (t.int32Data !== null) {
    out = Int32Array.from(t.int32Data);
  } else if (t.externalData !== null) {
    throw new Error(`Tensor "${t.name}" has external data that was not loaded`);
  } else {
    out = new Int32Array(0);
  }
  if (out.length !== n) {
    throw new Error(`Tensor "${t.name}" holds ${out.length} values, expected ${n}`);
  }
  return out;
}

/** Whether a data type is INT8 or UINT8. */
export function isQuantType(dataType: number): boolean {
  return dataType === DataType.INT8 || dataType === DataType.UINT8;
}

/**
 * `(q - zp) * scale` over an N-D tensor, per tensor (`scale.length === 1`) or along `axis`.
 */
export function dequantize(
  q: Int32Array,
  dims: number[],
  scale: Float32Array,
  zp: Int32Array | null,
  axis: number,
): Float32Array {
  const out = new Float32Array(q.length);
  if (scale.length === 1) {
    const s = scale[0];
    const z = zp === null ? 0 : zp[0];
    for (let i = 0; i < q.length; i++) out[i] = (q[i] - z) * s;
    return out;
  }
  let inner = 1;
  for (let d = axis + 1; d < dims.length; d++) inner *= dims[d];
  const channels = dims[axis];
  for (let i = 0; i < q.length; i++) {
    const c = Math.floor(i / inner) % channels;
    out[i] = (q[i] - (zp === null ? 0 : zp[c])) * scale[c];
  }
  return out;
}

/** Column sums `sum_k (W[k, n] - zp[n])` of an int8 `[K, N]` weight. */
export function columnSums(
  values: ArrayLike<number>,
  dims: [number, number],
  zeroPoint: Int32Array | null,
): Int32Array {
  const [k, n] = dims;
  const sums = new Int32Array(n);
  for (let r = 0; r < k; r++) {
    for (let c = 0; c < n; c++) sums[c] += values[r * n + c];
  }
  if (zeroPoint !== null) {
    for (let c = 0; c < n; c++) sums[c] -= k * zeroPoint[zeroPoint.length === 1 ? 0 : c];
  }
  return sums;
}

/** Drops nodes none of whose outputs reach a graph output. */
export function deadCodeElimination(nodes: OnnxNode[], outputs: Set<string>): OnnxNode[] {
  const producer = new Map<string, OnnxNode>();
  for (const n of nodes) for (const o of n.outputs) if (o) producer.set(o, n);
  const live = new Set<OnnxNode>();
  const stack = [...outputs];
  while (stack.length) {
    const v = stack.pop()!;
    const p = producer.get(v);
    if (!p || live.has(p)) continue;
    live.add(p);
    for (const i of p.inputs) if (i) stack.push(i);
  }
  return nodes.filter((n) => live.has(n));
}

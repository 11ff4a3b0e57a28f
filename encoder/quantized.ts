/**
 * The int8 form of a linear weight and the sparsity statistics the loaders record next to the
 * fp32 weights ({@linkcode DenseWeight.quantized}, {@linkcode DenseWeight.sparsity}).
 *
 * Quantization convention (as ONNX `DequantizeLinear`): `w = (q - zeroPoint) * scale`, with one
 * scale (and zero point) per output channel or one for the whole matrix. Activations are u8:
 * `x = (q - inputZeroPoint) * inputScale`, either computed per call from the tensor's range
 * (`"dynamic-u8"`, ONNX `DynamicQuantizeLinear`) or fixed by calibration (`"static"`).
 *
 * @module
 */

import {
  type DenseWeight,
  type QuantizedWeight,
  transposeMatrix,
  type WeightSparsity,
} from "./weights.ts";

/**
 * Measures element and 4x1-block sparsity of a torch-layout `[out, in]` weight. An int8 weight
 * counts as zero where `q` equals its channel's zero point.
 */
export function measureSparsity(
  weight: Float32Array | Int8Array,
  shape: { out: number; in: number; zeroPoint?: Int32Array | null },
): WeightSparsity {
  const { out, in: inn } = shape;
  if (weight.length !== out * inn || out < 1 || inn < 1) {
    throw new RangeError(
      `Cannot measure sparsity of ${weight.length} values as [${out}, ${inn}]`,
    );
  }
  const zp = shape.zeroPoint ?? null;
  if (zp !== null && zp.length !== 1 && zp.length !== out) {
    throw new RangeError(`Expected 1 or ${out} zero points, got ${zp.length}`);
  }
  let zeros = 0;
  let zeroBlocks = 0;
  // A column bitmap per block row: does any of the (up to) 4 rows have a non-zero at column i?
  const nonzero = new Uint8Array(inn);
  for (let o0 = 0; o0 < out; o0 += 4) {
    nonzero.fill(0);
    const o1 = Math.min(out, o0 + 4);
    for (let o = o0; o < o1; o++) {
      const z = zp === null ? 0 : zp[zp.length === 1 ? 0 : o];
      const row = o * inn;
      for (let i = 0; i < inn; i++) {
        if (weight[row + i] === z) zeros++;
        else nonzero[i] = 1;
      }
    }
    for (let i = 0; i < inn; i++) zeroBlocks += 1 - nonzero[i];
  }
  return { element: zeros / (out * inn), block4x1: zeroBlocks / (Math.ceil(out / 4) * inn) };
}

/** Records {@linkcode measureSparsity} of a dense weight in its `sparsity` field. */
export function recordSparsity(dense: DenseWeight): WeightSparsity {
  const q = dense.quantized;
  dense.sparsity = q
    ? measureSparsity(q.weight, { out: dense.out, in: dense.in, zeroPoint: q.zeroPoint })
    : measureSparsity(dense.weight, dense);
  return dense.sparsity;
}

/** Options of {@linkcode quantizeWeight}. */
export interface QuantizeWeightOptions {
  /** Largest |q|: 127 (default, 8-bit) or 63 (7-bit "reduce range", no int16 saturation). */
  maxQ?: number;
  /** One scale per output channel (default) or one for the whole matrix. */
  granularity?: "per-channel" | "per-tensor";
}

/**
 * Symmetric int8 quantization of a torch-layout `[out, in]` fp32 weight:
 * `scale[o] = max|w[o, :]| / maxQ`, `q = rne(w / scale)` clamped to `[-maxQ, maxQ]` (fp32
 * arithmetic, round half to even: the same values as the kernels' `quantizeWeights` for
 * `maxQ = 127`). Exact zeros stay zero. A channel of all zeros gets scale 1.
 */
export function quantizeWeight(
  weight: Float32Array,
  shape: { out: number; in: number },
  options: QuantizeWeightOptions = {},
): { weight: Int8Array; scale: Float32Array } {
  const { out, in: inn } = shape;
  const maxQ = options.maxQ ?? 127;
  if (!Number.isInteger(maxQ) || maxQ < 1 || maxQ > 127) {
    throw new RangeError(`Invalid maxQ ${maxQ}: expected an integer in [1, 127]`);
  }
  if (weight.length !== out * inn) {
    throw new RangeError(`Cannot quantize ${weight.length} values as [${out}, ${inn}]`);
  }
  const perTensor = options.granularity === "per-tensor";
  const scale = new Float32Array(perTensor ? 1 : out);
  const absMax = (from: number, to: number): number => {
    let m = 0;
    for (let i = from; i < to; i++) {
      const a = Math.abs(weight[i]);
      if (a > m) m = a;
      else if (!(a <= m)) throw new RangeError(`Weight ${i} is ${weight[i]}, cannot quantize`);
    }
    return m;
  };
  if (perTensor) {
    const m = absMax(0, weight.length);
    scale[0] = m > 0 ? Math.fround(m / maxQ) : 1;
  } else {
    for (let o = 0; o < out; o++) {
      const m = absMax(o * inn, (o + 1) * inn);
      scale[o] = m > 0 ? Math.fround(m / maxQ) : 1;
    }
  }
  const q = new Int8Array(weight.length);
  for (let o = 0; o < out; o++) {
    const s = scale[perTensor ? 0 : o];
    const row = o * inn;
    for (let i = 0; i < inn; i++) {
      const v = roundHalfEven(Math.fround(weight[row + i] / s));
      q[row + i] = v > maxQ ? maxQ : v < -maxQ ? -maxQ : v;
    }
  }
  return { weight: q, scale };
}

/** The fp32 values of an int8 weight, `[out * in]` torch layout. */
export function dequantizeWeight(
  q: QuantizedWeight,
  shape: { out: number; in: number },
): Float32Array {
  const { out, in: inn } = shape;
  if (q.weight.length !== out * inn) {
    throw new RangeError(`Quantized weight has ${q.weight.length} values, expected ${out * inn}`);
  }
  const w = new Float32Array(out * inn);
  for (let o = 0; o < out; o++) {
    const s = q.scale[q.scale.length === 1 ? 0 : o];
    const z = q.zeroPoint === null ? 0 : q.zeroPoint[q.zeroPoint.length === 1 ? 0 : o];
    const row = o * inn;
    for (let i = 0; i < inn; i++) w[row + i] = (q.weight[row + i] - z) * s;
  }
  return w;
}

/** u8 asymmetric quantization parameters covering `[min, max]` (widened to include 0). */
export function u8Params(min: number, max: number): { scale: number; zeroPoint: number } {
  if (!Number.isFinite(min) || !Number.isFinite(max) || min > max) {
    throw new RangeError(`Invalid activation range [${min}, ${max}]`);
  }
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  if (hi === lo) return { scale: 1, zeroPoint: 0 };
  const scale = Math.fround((hi - lo) / 255);
  const zeroPoint = Math.min(255, Math.max(0, Math.round(-lo / scale)));
  return { scale, zeroPoint };
}

/** Rounds to the nearest integer, ties to even (ONNX QuantizeLinear rounding). */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Transposes a row-major `[rows, cols]` int8 matrix into a new `[cols, rows]` one. */
export function transposeInt8(src: Int8Array, rows: number, cols: number): Int8Array {
  return transposeMatrix(src, rows, cols, 64);
}

/**
 * Scalar reference of the dense int8 linear kernel: exact s32 sums and the fp32 epilogue
 * (in f64), plus the u8 requantization.
 *
 * @module
 */
import { activate } from "./linear_f32.ts";
import { roundHalfEven } from "./quantize.ts";

/** Quantized activations as the reference takes them: values [m * k], per-token params. */
export interface RefActivations {
  m: number;
  k: number;
  q: Uint8Array;
  scale: Float32Array;
  zeroPoint: Int32Array;
}

/** An int8 weight [n, k] with per-channel scales and bias. */
export interface RefWeight {
  out: number;
  in: number;
  weight: Int8Array;
  scale: Float32Array;
  bias?: Float32Array | null;
}

/** Exact sums sum_k (q[t, k] - zero[t]) * w[c, k], [m, n]. */
export function int8Exact(x: RefActivations, w: RefWeight): Int32Array {
  const { m, k } = x;
  const n = w.out;
  const y = new Int32Array(m * n);
  for (let t = 0; t < m; t++) {
    for (let c = 0; c < n; c++) {
      let s = 0;
      for (let i = 0; i < k; i++) s += (x.q[t * k + i] - x.zeroPoint[t]) * w.weight[c * k + i];
      y[t * n + c] = s;
    }
  }
  return y;
}

/**
 * The sums of {@linkcode int8Exact} as AVX2's `vpmaddubsw` forms them for 8-bit activations
 * (the `"ort-u8"` mode, like ONNX Runtime's AVX2 U8S8 kernel): each pair of consecutive k
 * (0-1, 2-3, ...) is summed and saturated to int16 before the s32 accumulation.
 */
export function int8SaturatingPairs(x: RefActivations, w: RefWeight): Int32Array {
  const { m, k } = x;
  const n = w.out;
  const y = new Int32Array(m * n);
  const sat = (v: number) => Math.min(Math.max(v, -32768), 32767);
  for (let t = 0; t < m; t++) {
    for (let c = 0; c < n; c++) {
      let s = 0;
      let wsum = 0;
      for (let i = 0; i < k; i += 2) {
        const a0 = x.q[t * k + i] * w.weight[c * k + i];
        const a1 = i + 1 < k ? x.q[t * k + i + 1] * w.weight[c * k + i + 1] : 0;
        s += sat(a0 + a1);
        wsum += w.weight[c * k + i] + (i + 1 < k ? w.weight[c * k + i + 1] : 0);
      }
      y[t * n + c] = s - x.zeroPoint[t] * wsum;
    }
  }
  return y;
}

/**
 * How far the int8 kernels' GELU (`vmath.geluErfInt8`, used with 7-bit activations) may be from
 * the exact one that {@linkcode int8Epilogue} computes: absolute, for every input.
 */
export const INT8_GELU_ATOL = 6e-5;

/** Options of the reference epilogue. */
export interface EpilogueOptions {
  activation?: "none" | "gelu" | "gelu_tanh";
  residual?: Float32Array;
}

/** act(exact * scale_x[t] * scale_w[c] + bias[c]) + residual, in f64. */
export function int8Epilogue(
  exact: Int32Array,
  x: RefActivations,
  w: RefWeight,
  options: EpilogueOptions = {},
): Float64Array {
  const n = w.out;
  const y = new Float64Array(exact.length);
  for (let t = 0; t < x.m; t++) {
    for (let c = 0; c < n; c++) {
      let v = exact[t * n + c] * x.scale[t] * w.scale[c] + (w.bias ? w.bias[c] : 0);
      v = activate(v, options.activation ?? "none");
      if (options.residual) v += options.residual[t * n + c];
      y[t * n + c] = v;
    }
  }
  return y;
}

/** clamp(rne(y / scale) + zero, 0, qmax) of a reference fp32 output. */
export function requantizeReference(
  y: Float64Array,
  scale: number,
  zero: number,
  qmax: number,
): Uint8Array {
  const inv = Math.fround(1 / scale);
  return Uint8Array.from(
    y,
    (v) => Math.min(Math.max(roundHalfEven(Math.fround(v) * inv) + zero, 0), qmax),
  );
}

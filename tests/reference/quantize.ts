/**
 * Scalar reference of the int8 quantization (`kernels/quantize.zig`), reproducing its f32
 * arithmetic exactly with `Math.fround` so that quantized values can be compared bit for bit.
 *
 * @module
 */

const fround = Math.fround;

/** Round half to even, as the kernels' magic-number rounding does. */
export function roundHalfEven(v: number): number {
  const r = Math.round(v);
  return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Quantization parameters of a range [min, max] (widened to contain 0). */
export function quantParams(
  min: number,
  max: number,
  qmax: number,
): { scale: number; inv: number; zero: number } {
  const lo = Math.min(min, 0);
  const hi = Math.max(max, 0);
  const scale = fround(fround(hi - lo) / qmax);
  if (!(scale >= 2 ** -126)) return { scale: 1, inv: 1, zero: 0 };
  const inv = fround(1 / scale);
  const zero = Math.min(Math.max(roundHalfEven(fround(-lo * inv)), 0), qmax);
  return { scale, inv, zero };
}

/** q = clamp(rne(x * inv) + zero, 0, qmax) in f32. */
export function quantizeValue(
  x: number,
  p: { inv: number; zero: number },
  qmax: number,
): number {
  return Math.min(Math.max(roundHalfEven(fround(x * p.inv)) + p.zero, 0), qmax);
}

/**
 * ONNX Runtime's DynamicQuantizeLinear of x [n] (the kernels' `"ort-u8"` mode): range widened
 * to 0, `scale = (max - min) / 255`, `zero = rne(clamp(-min / scale, 0, 255))`,
 * `q = clamp(rne(x / scale) + zero, 0, 255)`, all in f32.
 */
export function quantizeOrtReference(
  x: Float32Array,
): { q: Uint8Array; scale: number; zero: number } {
  let lo = 0;
  let hi = 0;
  for (const v of x) {
    lo = Math.min(lo, v);
    hi = Math.max(hi, v);
  }
  if (hi === lo) return { q: new Uint8Array(x.length), scale: 1, zero: 0 };
  const scale = fround(fround(hi - lo) / 255);
  const zero = roundHalfEven(Math.min(Math.max(fround(-lo / scale), 0), 255));
  const q = new Uint8Array(x.length);
  for (let i = 0; i < x.length; i++) {
    q[i] = Math.min(Math.max(roundHalfEven(fround(x[i] / scale)) + zero, 0), 255);
  }
  return { q, scale, zero };
}

/** Reference dynamic quantization of x [m, k]: values [m * k] (no padding), scales, zeros. */
export function quantizeReference(
  x: Float32Array,
  m: number,
  k: number,
  mode: "per-token" | "per-tensor",
  qmax: number,
): { q: Uint8Array; scale: Float32Array; zeroPoint: Int32Array } {
  const q = new Uint8Array(m * k);
  const scale = new Float32Array(m);
  const zeroPoint = new Int32Array(m);
  let tensor: { scale: number; inv: number; zero: number } | undefined;
  if (mode === "per-tensor") {
    let min = 0;
    let max = 0;
    for (let i = 0; i < m * k; i++) {
      min = Math.min(min, x[i]);
      max = Math.max(max, x[i]);
    }
    tensor = quantParams(min, max, qmax);
  }
  for (let t = 0; t < m; t++) {
    let p = tensor;
    if (p === undefined) {
      let min = 0;
      let max = 0;
      for (let c = 0; c < k; c++) {
        min = Math.min(min, x[t * k + c]);
        max = Math.max(max, x[t * k + c]);
      }
      p = quantParams(min, max, qmax);
    }
    scale[t] = p.scale;
    zeroPoint[t] = p.zero;
    for (let c = 0; c < k; c++) q[t * k + c] = quantizeValue(x[t * k + c], p, qmax);
  }
  return { q, scale, zeroPoint };
}

/** Reference symmetric per-channel weight quantization of w [n, k]. */
export function quantizeWeightsReference(
  w: Float32Array,
  n: number,
  k: number,
): { q: Int8Array; scale: Float32Array } {
  const q = new Int8Array(n * k);
  const scale = new Float32Array(n);
  for (let c = 0; c < n; c++) {
    let maxAbs = 0;
    for (let i = 0; i < k; i++) maxAbs = Math.max(maxAbs, Math.abs(w[c * k + i]));
    let s = fround(maxAbs / 127);
    let inv = 1;
    if (s >= 2 ** -126) inv = fround(1 / s);
    else s = 1;
    scale[c] = s;
    for (let i = 0; i < k; i++) {
      q[c * k + i] = Math.min(Math.max(roundHalfEven(fround(w[c * k + i] * inv)), -127), 127);
    }
  }
  return { q, scale };
}

/** The value of token t, channel c in the packed layout of the sparse int8 kernel. */
export function packedValue(data: Uint8Array, k: number, t: number, c: number): number {
  const chunk = Math.floor(t / 16);
  const j = t % 16;
  // Tokens 4-7 and 8-11 trade places inside a chunk (see kernels/quantize.zig).
  const position = (j & 3) | ((j & 4) << 1) | ((j & 8) >> 1);
  const row = (chunk * k + c) * 32;
  const value = data[row + 2 * position] | (data[row + 2 * position + 1] << 8);
  if (value > 255) throw new Error(`Packed high byte is not zero at token ${t}, channel ${c}`);
  return value;
}

/**
 * Scalar reference for the bf16-weight linear kernel (`kernels/linear_bf16.zig`): operands
 * rounded to bf16 (nearest even, subnormals flushed to zero), and for each K pair the odd
 * element's product added first, then the even one's, each sum rounded to fp32, as Intel
 * defines `vdpbf16ps`. A product of two bf16 values is exact in fp32, so rounding the f64 sum
 * once to fp32 is the fused multiply-add the kernel does.
 *
 * @module
 */
import { activate, type RefEpilogue, type RefLinearWeight } from "./linear_f32.ts";

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** `x` rounded to bf16 (returned as its fp32 value). */
export function roundBf16(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const exponent = bits & 0x7f800000;
  if (exponent === 0x7f800000 && (bits & 0x007fffff) !== 0) return NaN;
  if (exponent === 0) {
    u32[0] = bits & 0x80000000;
  } else {
    u32[0] = ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16;
  }
  return f32[0];
}

/**
 * Reference bf16 linear over `[m, k]` x `[n, k]`^T: the kernel's bits where `activation` is
 * `"none"` (bias and residual added in fp32 as the kernel does); its activation is the exact
 * one, so a GELU output differs by the kernel's approximation only.
 */
export function linearBf16Reference(
  x: Float32Array,
  m: number,
  weight: RefLinearWeight,
  options: RefEpilogue = {},
): Float32Array {
  const { out: n, in: k } = weight;
  const xb = x.subarray(0, m * k).map(roundBf16);
  const wb = weight.weight.map(roundBf16);
  const y = new Float32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      for (let p = 0; 2 * p < k; p++) {
        const even = 2 * p;
        if (even + 1 < k) acc = Math.fround(acc + xb[i * k + even + 1] * wb[j * k + even + 1]);
        acc = Math.fround(acc + xb[i * k + even] * wb[j * k + even]);
      }
      let s = Math.fround(acc + (weight.bias ? weight.bias[j] : 0));
      s = Math.fround(activate(s, options.activation ?? "none"));
      if (options.residual) s = Math.fround(s + options.residual[i * n + j]);
      y[i * n + j] = s;
    }
  }
  return y;
}

/**
 * Scalar reference of the sparse int8 kernel: walks the 4x1 blocks of the int8 weight, skips
 * the all-zero ones, and accumulates exact s32 sums (the epilogue is `int8Epilogue`).
 *
 * @module
 */
import type { RefActivations, RefWeight } from "./gemm_i8.ts";

/** Exact sums over the kept 4x1 blocks only, [m, n]. */
export function spmmI8Exact(x: RefActivations, w: RefWeight): Int32Array {
  const { m, k } = x;
  const n = w.out;
  const y = new Int32Array(m * n);
  const zeroSum = new Int32Array(n); // sum_k w[c, k] over kept blocks
  for (let r0 = 0; r0 < n; r0 += 4) {
    const rows = Math.min(4, n - r0);
    for (let i = 0; i < k; i++) {
      let kept = false;
      for (let r = 0; r < rows; r++) kept ||= w.weight[(r0 + r) * k + i] !== 0;
      if (!kept) continue;
      for (let r = 0; r < rows; r++) {
        const c = r0 + r;
        const wv = w.weight[c * k + i];
        zeroSum[c] += wv;
        for (let t = 0; t < m; t++) y[t * n + c] += x.q[t * k + i] * wv;
      }
    }
  }
  for (let t = 0; t < m; t++) {
    for (let c = 0; c < n; c++) y[t * n + c] -= x.zeroPoint[t] * zeroSum[c];
  }
  return y;
}

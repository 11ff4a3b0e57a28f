/**
 * Scalar reference of the unstructured sparse fp32 kernel: a CSR walk over the non-zeros,
 * accumulated in f64, with the bias / activation / residual epilogue.
 *
 * @module
 */
import { activate, type RefEpilogue, type RefLinearWeight } from "./linear_f32.ts";

/** Reference sparse linear over x [m, k] and the non-zeros of w [n, k]. */
export function spmmF32Reference(
  x: Float32Array,
  m: number,
  weight: RefLinearWeight,
  options: RefEpilogue = {},
): Float64Array {
  const { out: n, in: k } = weight;
  // CSR of the weight.
  const rowPtr = new Int32Array(n + 1);
  const cols: number[] = [];
  const values: number[] = [];
  for (let c = 0; c < n; c++) {
    for (let i = 0; i < k; i++) {
      const v = weight.weight[c * k + i];
      if (v !== 0) {
        cols.push(i);
        values.push(v);
      }
    }
    rowPtr[c + 1] = cols.length;
  }
  const y = new Float64Array(m * n);
  for (let t = 0; t < m; t++) {
    for (let c = 0; c < n; c++) {
      let s = weight.bias ? weight.bias[c] : 0;
      for (let e = rowPtr[c]; e < rowPtr[c + 1]; e++) s += x[t * k + cols[e]] * values[e];
      s = activate(s, options.activation ?? "none");
      if (options.residual) s += options.residual[t * n + c];
      y[t * n + c] = s;
    }
  }
  return y;
}

/**
 * Scalar reference for the dense linear kernels: y = act(x W^T + b) + residual, accumulated
 * in f64. Also the reference activations.
 *
 * @module
 */

/** erf in f64 (Maclaurin series below 3, asymptotic erfc above): error below 1e-9. */
export function erf(x: number): number {
  const ax = Math.abs(x);
  if (ax >= 3) {
    const inv2 = 1 / (ax * ax);
    const series = 1 - 0.5 * inv2 + 0.75 * inv2 * inv2 - 1.875 * inv2 * inv2 * inv2;
    return Math.sign(x) * (1 - Math.exp(-ax * ax) / (ax * Math.sqrt(Math.PI)) * series);
  }
  let term = x;
  let sum = x;
  for (let i = 1; i < 200; i++) {
    term *= -x * x / i;
    const add = term / (2 * i + 1);
    sum += add;
    if (Math.abs(add) < 1e-17) break;
  }
  return sum * 2 / Math.sqrt(Math.PI);
}

/** Reference activation by name. */
export function activate(x: number, activation: "none" | "gelu" | "gelu_tanh"): number {
  switch (activation) {
    case "none":
      return x;
    case "gelu":
      return 0.5 * x * (1 + erf(x / Math.SQRT2));
    case "gelu_tanh":
      return 0.5 * x *
        (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));
  }
}

/** A linear's fp32 weight `[out, in]` and bias, as the references take it. */
export interface RefLinearWeight {
  out: number;
  in: number;
  weight: Float32Array;
  bias?: Float32Array | null;
}

/** The epilogue of the fp32 references: activation, then a residual `[m, out]` added. */
export interface RefEpilogue {
  activation?: "none" | "gelu" | "gelu_tanh";
  residual?: Float32Array;
}

/** Reference dense linear over `[m, k]` x `[n, k]`^T. */
export function linearReference(
  x: Float32Array,
  m: number,
  weight: RefLinearWeight,
  options: RefEpilogue = {},
): Float64Array {
  const { out: n, in: k } = weight;
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = weight.bias ? weight.bias[j] : 0;
      for (let kk = 0; kk < k; kk++) s += x[i * k + kk] * weight.weight[j * k + kk];
      s = activate(s, options.activation ?? "none");
      if (options.residual) s += options.residual[i * n + j];
      y[i * n + j] = s;
    }
  }
  return y;
}

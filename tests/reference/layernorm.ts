/**
 * Scalar reference for LayerNorm, in f64: two passes (mean, then squared deviations).
 *
 * @module
 */

/** Reference LayerNorm of `rows` rows of `x` over `gamma.length` columns. */
export function layerNormReference(
  x: ArrayLike<number>,
  rows: number,
  norm: { gamma: ArrayLike<number>; beta: ArrayLike<number>; eps: number },
): Float64Array {
  const cols = norm.gamma.length;
  const y = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    let mean = 0;
    for (let j = 0; j < cols; j++) mean += x[r * cols + j];
    mean /= cols;
    let variance = 0;
    for (let j = 0; j < cols; j++) variance += (x[r * cols + j] - mean) ** 2;
    variance /= cols;
    const rstd = 1 / Math.sqrt(variance + norm.eps);
    for (let j = 0; j < cols; j++) {
      y[r * cols + j] = (x[r * cols + j] - mean) * rstd * norm.gamma[j] + norm.beta[j];
    }
  }
  return y;
}

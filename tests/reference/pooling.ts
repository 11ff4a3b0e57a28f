/**
 * Scalar reference for sentence pooling (CLS or masked mean, optional L2 normalisation), in f64.
 *
 * @module
 */

/** Reference pooled vectors `[batch * hidden]`. */
export function poolReference(
  x: ArrayLike<number>,
  shape: { batch: number; seq: number; hidden: number; mask: ArrayLike<number> },
  options: { mode: "cls" | "mean"; normalize: boolean },
): Float64Array {
  const { batch, seq, hidden, mask } = shape;
  const out = new Float64Array(batch * hidden);
  for (let b = 0; b < batch; b++) {
    const y = out.subarray(b * hidden, (b + 1) * hidden);
    if (options.mode === "cls") {
      for (let j = 0; j < hidden; j++) y[j] = x[b * seq * hidden + j];
    } else {
      let count = 0;
      for (let s = 0; s < seq; s++) {
        if (mask[b * seq + s] === 0) continue;
        count++;
        for (let j = 0; j < hidden; j++) y[j] += x[(b * seq + s) * hidden + j];
      }
      for (let j = 0; j < hidden; j++) y[j] /= Math.max(count, 1e-9);
    }
    if (options.normalize) l2NormalizeReference(y);
  }
  return out;
}

/** Divides `y` by max(||y||, 1e-12) in place. */
export function l2NormalizeReference(y: Float64Array): Float64Array {
  let sum = 0;
  for (const v of y) sum += v * v;
  const scale = 1 / Math.max(Math.sqrt(sum), 1e-12);
  for (let j = 0; j < y.length; j++) y[j] *= scale;
  return y;
}

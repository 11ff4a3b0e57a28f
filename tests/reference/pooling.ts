/**
 * Scalar reference for sentence pooling (every sentence-transformers mode, optional L2
 * normalisation), in f64.
 *
 * @module
 */

/** The pooling modes of sentence-transformers. */
export type ReferencePooling =
  | "cls"
  | "mean"
  | "max"
  | "mean_sqrt_len"
  | "weightedmean"
  | "lasttoken";

/**
 * Reference pooled vectors `[batch * hidden]`, as sentence-transformers' `Pooling` computes
 * them over the tokens the mask keeps.
 */
export function poolReference(
  x: ArrayLike<number>,
  shape: { batch: number; seq: number; hidden: number; mask: ArrayLike<number> },
  options: { mode: ReferencePooling; normalize: boolean },
): Float64Array {
  const { batch, seq, hidden, mask } = shape;
  const out = new Float64Array(batch * hidden);
  const at = (b: number, s: number, j: number): number => x[(b * seq + s) * hidden + j];
  for (let b = 0; b < batch; b++) {
    const y = out.subarray(b * hidden, (b + 1) * hidden);
    const kept = [...Array(seq).keys()].filter((s) => mask[b * seq + s] !== 0);
    switch (options.mode) {
      case "cls":
        for (let j = 0; j < hidden; j++) y[j] = at(b, 0, j);
        break;
      case "lasttoken": {
        const last = kept.at(-1) ?? 0;
        for (let j = 0; j < hidden; j++) y[j] = at(b, last, j);
        break;
      }
      case "max":
        for (let j = 0; j < hidden; j++) {
          y[j] = Math.max(-1e9, ...kept.map((s) => at(b, s, j)));
        }
        break;
      default: {
        const weighted = options.mode === "weightedmean";
        let total = 0;
        for (const s of kept) {
          const w = weighted ? s + 1 : 1;
          total += w;
          for (let j = 0; j < hidden; j++) y[j] += w * at(b, s, j);
        }
        const divisor = options.mode === "mean_sqrt_len"
          ? Math.sqrt(Math.max(total, 1e-9))
          : Math.max(total, 1e-9);
        for (let j = 0; j < hidden; j++) y[j] /= divisor;
      }
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

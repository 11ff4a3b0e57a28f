/**
 * Scalar reference for masked multi-head self-attention, in f64:
 * `softmax(Q K^T * scale + (1 - mask) * maskValue) V` per sequence and head.
 *
 * @module
 */

/** Shapes and parameters of {@linkcode attentionReference}. */
export interface AttentionReferenceShape {
  batch: number;
  seq: number;
  heads: number;
  headSize: number;
  /** Row stride of q, k, v. */
  ld: number;
  /** Added to masked scores. */
  maskValue: number;
  /** Score scale. */
  scale: number;
}

/** Reference context `[batch * seq, heads * headSize]` (dense rows). */
export function attentionReference(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  mask: ArrayLike<number>,
  shape: AttentionReferenceShape,
): Float64Array {
  const { batch, seq, heads, headSize: hs, ld, maskValue, scale } = shape;
  const width = heads * hs;
  const out = new Float64Array(batch * seq * width);
  const scores = new Float64Array(seq);
  for (let b = 0; b < batch; b++) {
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < seq; i++) {
        let max = -Infinity;
        for (let j = 0; j < seq; j++) {
          let dot = 0;
          for (let d = 0; d < hs; d++) {
            dot += q[(b * seq + i) * ld + h * hs + d] * k[(b * seq + j) * ld + h * hs + d];
          }
          // fp32 arithmetic absorbs small scores into a huge mask value; mirror that.
          const masked = mask[b * seq + j] !== 0 ? 0 : maskValue;
          scores[j] = Math.fround(dot * scale + masked);
          max = Math.max(max, scores[j]);
        }
        let total = 0;
        for (let j = 0; j < seq; j++) {
          scores[j] = Math.exp(scores[j] - max);
          total += scores[j];
        }
        for (let d = 0; d < hs; d++) {
          let o = 0;
          for (let j = 0; j < seq; j++) o += scores[j] * v[(b * seq + j) * ld + h * hs + d];
          out[(b * seq + i) * width + h * hs + d] = o / total;
        }
      }
    }
  }
  return out;
}

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

/** Round half to even, as the kernels' magic-number rounding does. */
function rne(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * Reference of the int8 attention (`kernels/attention_i8.zig`), the same quantization in f32
 * steps and exact integer sums, the rest in f64: K per key u8 asymmetric to `qmax` (the
 * kernels' activation bound), Q per row s8 (scale max|q| / 127), V per feature s8 over the
 * unmasked keys (all keys when every one is masked), and the probabilities exp(s - max) as u8
 * codes rne(p * qmax).
 */
export function attentionInt8Reference(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  mask: ArrayLike<number>,
  shape: AttentionReferenceShape & { qmax: number },
): Float64Array {
  const { batch, seq, heads, headSize: hs, ld, maskValue, scale, qmax } = shape;
  const f = Math.fround;
  const width = heads * hs;
  const out = new Float64Array(batch * seq * width);
  const clamp = (x: number, lo: number, hi: number) => Math.min(hi, Math.max(lo, x));
  const symmetric = (values: number[]): { codes: number[]; scale: number } => {
    const max = f(values.reduce((m, x) => Math.max(m, Math.abs(x)), 0));
    if (!(max > 0)) return { codes: values.map(() => 0), scale: 0 };
    const inv = f(127 / max);
    return { codes: values.map((x) => clamp(rne(f(x * inv)), -127, 127)), scale: f(max / 127) };
  };
  const asymmetric = (values: number[]): { codes: number[]; scale: number; zero: number } => {
    const lo = Math.min(0, ...values);
    const s = f(f(Math.max(0, ...values) - lo) / qmax);
    if (!(s >= 1.1754943508222875e-38)) return { codes: values.map(() => 0), scale: 0, zero: 0 };
    const inv = f(1 / s);
    const zero = clamp(rne(f(-lo * inv)), 0, qmax);
    return { codes: values.map((x) => clamp(rne(f(x * inv)) + zero, 0, qmax)), scale: s, zero };
  };
  for (let b = 0; b < batch; b++) {
    const anyKept = Array.from({ length: seq }, (_, j) => mask[b * seq + j]).some((m) => m !== 0);
    const kept = (j: number) => !anyKept || mask[b * seq + j] !== 0;
    for (let h = 0; h < heads; h++) {
      const at = (j: number, d: number) => (b * seq + j) * ld + h * hs + d;
      const keys = Array.from(
        { length: seq },
        (_, j) => asymmetric(Array.from({ length: hs }, (_, d) => k[at(j, d)])),
      );
      const values = Array.from(
        { length: hs },
        (_, d) => symmetric(Array.from({ length: seq }, (_, j) => kept(j) ? v[at(j, d)] : 0)),
      );
      for (let i = 0; i < seq; i++) {
        const query = symmetric(Array.from({ length: hs }, (_, d) => q[at(i, d)]));
        const scores = new Float64Array(seq);
        let max = -Infinity;
        for (let j = 0; j < seq; j++) {
          let dot = 0;
          for (let d = 0; d < hs; d++) dot += query.codes[d] * (keys[j].codes[d] - keys[j].zero);
          const masked = mask[b * seq + j] !== 0 ? 0 : maskValue;
          scores[j] = f(dot * query.scale * keys[j].scale * scale + masked);
          max = Math.max(max, scores[j]);
        }
        let total = 0;
        const p = new Float64Array(seq);
        for (let j = 0; j < seq; j++) {
          const e = Math.exp(scores[j] - max);
          total += e;
          p[j] = rne(f(e) * qmax);
        }
        for (let d = 0; d < hs; d++) {
          let acc = 0;
          for (let j = 0; j < seq; j++) acc += p[j] * values[d].codes[j];
          out[(b * seq + i) * width + h * hs + d] = acc * values[d].scale / qmax / total;
        }
      }
    }
  }
  return out;
}

/**
 * The linear algebra of OBS pruning (SparseGPT, Frantar & Alistarh 2023), as small pure
 * functions over row-major `Float64Array` matrices.
 *
 * For one linear `y = W x` (torch layout `W[out, in]`) and calibration inputs `X[tokens, in]`,
 * pruning minimises `||W X^T - W' X^T||` over the kept weights, row by row, with the shared
 * Hessian `H = 2 X^T X` (plus dampening). SparseGPT sweeps the input columns left to right: the
 * error of zeroing column `j` is spread over the columns not yet processed through the upper
 * Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`), `W[:, k] -= (w_j / U_jj) * U_jk` for `k > j`,
 * and the saliency of zeroing `w_rj` is `w_rj^2 / U_jj^2`. Columns are processed in blocks:
 * inside a block the update is applied column by column to the block's columns only, and the
 * accumulated errors reach the later columns in one lazy batch update after the block.
 *
 * Units follow `compress/prune.ts`: single weights (`unstructured`), or `4x1` blocks of 4
 * consecutive output rows at one input column (unit `b * in + j` covers rows `4b..4b+3`, a short
 * last group of rows included), whose saliency is the sum over its rows. The mask of each column
 * block is chosen when the sweep reaches it, from the weights as updated so far (SparseGPT's
 * adaptive mask selection); each column block prunes its share of the layer's count (see
 * {@linkcode obsPrune}), so the layer prunes exactly the count it is given.
 *
 * @module
 */

import { lowestUnits } from "./prune_units.ts";

/**
 * Adds `x x^T` to the upper triangle of the `n x n` matrix `gram` for one activation row
 * (`x = data[offset .. offset + n)`); call {@linkcode symmetrize} once all rows are in.
 */
export function addOuterProduct(
  gram: Float64Array,
  n: number,
  data: Float32Array,
  offset: number,
): void {
  for (let i = 0; i < n; i++) {
    const xi = data[offset + i];
    if (xi === 0) continue;
    const row = i * n;
    for (let j = i; j < n; j++) gram[row + j] += xi * data[offset + j];
  }
}

/** Copies the upper triangle of an `n x n` matrix onto its lower triangle, in place. */
export function symmetrize(a: Float64Array, n: number): void {
  for (let i = 0; i < n; i++) {
    for (let j = i + 1; j < n; j++) a[j * n + i] = a[i * n + j];
  }
}

/**
 * Prepares a Hessian for inversion, in place: a zero diagonal entry (an input that is zero on
 * every calibration token) becomes 1, then `fraction` of the mean diagonal is added to the
 * diagonal (SparseGPT's dampening, default 1%).
 *
 * @returns the value added to the diagonal.
 */
export function dampen(h: Float64Array, n: number, fraction = 0.01): number {
  if (!(fraction >= 0) || !Number.isFinite(fraction)) {
    throw new RangeError(`Invalid dampening ${fraction}: expected a finite fraction >= 0`);
  }
  let mean = 0;
  for (let i = 0; i < n; i++) {
    if (h[i * n + i] === 0) h[i * n + i] = 1;
    mean += h[i * n + i];
  }
  const lambda = fraction * (mean / n);
  for (let i = 0; i < n; i++) h[i * n + i] += lambda;
  return lambda;
}

/**
 * The lower Cholesky factor `L` of a symmetric positive definite `n x n` matrix (`A = L L^T`;
 * only the lower triangle of `a` is read), as a new matrix.
 *
 * @throws RangeError naming the pivot when `a` is not positive definite.
 */
export function cholesky(a: Float64Array, n: number): Float64Array {
  const l = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    for (let j = 0; j <= i; j++) {
      const rj = j * n;
      let s = a[ri + j];
      for (let k = 0; k < j; k++) s -= l[ri + k] * l[rj + k];
      if (i === j) {
        if (!(s > 0)) {
          throw new RangeError(`Matrix is not positive definite: pivot ${i} is ${s}`);
        }
        l[ri + i] = Math.sqrt(s);
      } else {
        l[ri + j] = s / l[rj + j];
      }
    }
  }
  return l;
}

/** The inverse of a lower triangular `n x n` matrix (lower triangular too), as a new matrix. */
export function invertLower(l: Float64Array, n: number): Float64Array {
  const m = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    const ri = i * n;
    // Row i of L^-1: (e_i - sum_{k<i} L_ik * row_k) / L_ii, each row_k nonzero up to column k.
    m[ri + i] = 1;
    for (let k = 0; k < i; k++) {
      const c = l[ri + k];
      if (c === 0) continue;
      const rk = k * n;
      for (let j = 0; j <= k; j++) m[ri + j] -= c * m[rk + j];
    }
    const d = l[ri + i];
    for (let j = 0; j <= i; j++) m[ri + j] /= d;
  }
  return m;
}

/**
 * The upper Cholesky factor `U` of `H^-1` (`H^-1 = U^T U`) for a symmetric positive definite
 * `n x n` matrix `H`, without forming `H^-1`: with `J` the reversal permutation and
 * `J H J = L L^T`, `U = J L^-1 J`.
 *
 * @throws RangeError when `h` is not positive definite.
 */
export function inverseUpperFactor(h: Float64Array, n: number): Float64Array {
  const r = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) r[i * n + j] = h[(n - 1 - i) * n + (n - 1 - j)];
  }
  const m = invertLower(cholesky(r, n), n);
  const u = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) u[i * n + j] = m[(n - 1 - i) * n + (n - 1 - j)];
  }
  return u;
}

/** Options of {@linkcode obsPrune}. */
export interface ObsPruneOptions {
  /** `[out * in]` torch-layout weights, updated in place (pruned entries become 0). */
  weight: Float64Array;
  /** Output rows. */
  out: number;
  /** Input columns. */
  in: number;
  /** `U` of {@linkcode inverseUpperFactor} for this linear's Hessian, `[in * in]`. */
  hinvUpper: Float64Array;
  /** `4x1` or `unstructured`. */
  pattern: "4x1" | "unstructured";
  /** Units to prune over the whole weight. */
  count: number;
  /** Input columns per block (default 128). */
  blockSize?: number;
}

/**
 * SparseGPT's sweep over one linear: prunes `count` units of `weight` and updates the kept
 * weights to compensate, in place.
 *
 * Column block `k` prunes `round(c * unitsThrough_k) - prunedBefore_k` units, `c` the layer's
 * fraction `count / units` and `unitsThrough_k` the units of blocks `0..k`, so every block
 * prunes its share and the last one brings the total to exactly `count`. Units that are zero
 * in the weight given (an already sparse model) are pruned first in their block, and a block
 * prunes at least those (a later block then prunes fewer), so the result is at least as sparse
 * as its input.
 *
 * @returns the 0/1 unit mask (1 = pruned), indexed like `unitScores` in `compress/prune.ts`.
 */
export function obsPrune(options: ObsPruneOptions): Uint8Array {
  const { weight: w, out, in: inn, hinvUpper: u, pattern } = options;
  const blockSize = options.blockSize ?? 128;
  if (w.length !== out * inn) {
    throw new RangeError(`Expected ${out * inn} weights for [${out}, ${inn}], got ${w.length}`);
  }
  if (u.length !== inn * inn) {
    throw new RangeError(`Expected a [${inn}, ${inn}] inverse factor, got ${u.length} values`);
  }
  if (!Number.isInteger(blockSize) || blockSize < 1) {
    throw new RangeError(`Invalid block size ${blockSize}: expected an integer >= 1`);
  }
  const rowsPerUnit = pattern === "4x1" ? 4 : 1;
  const unitRows = Math.ceil(out / rowsPerUnit);
  const units = unitRows * inn;
  const { count } = options;
  if (!Number.isInteger(count) || count < 0 || count > units) {
    throw new RangeError(`Invalid count ${count}: expected an integer in [0, ${units}]`);
  }
  const fraction = units === 0 ? 0 : count / units;
  const zeroAtStart = new Uint8Array(units);
  zeroAtStart.fill(1);
  for (let r = 0; r < out; r++) {
    const ur = Math.floor(r / rowsPerUnit) * inn;
    for (let j = 0; j < inn; j++) if (w[r * inn + j] !== 0) zeroAtStart[ur + j] = 0;
  }
  const mask = new Uint8Array(units);
  let pruned = 0;
  for (let i1 = 0; i1 < inn; i1 += blockSize) {
    const i2 = Math.min(i1 + blockSize, inn);
    const width = i2 - i1;
    // Saliency of each unit of the block, from the weights as updated so far.
    const scores = new Float32Array(unitRows * width);
    for (let r = 0; r < out; r++) {
      const ub = Math.floor(r / rowsPerUnit) * width;
      for (let j = i1; j < i2; j++) {
        const d = u[j * inn + j];
        const v = w[r * inn + j];
        scores[ub + j - i1] += (v * v) / (d * d);
      }
    }
    let zeros = 0;
    for (let b = 0; b < unitRows; b++) {
      for (let j = i1; j < i2; j++) {
        if (zeroAtStart[b * inn + j]) {
          scores[b * width + j - i1] = 0;
          zeros++;
        }
      }
    }
    const share = Math.round(fraction * unitRows * i2) - pruned;
    const take = Math.min(unitRows * width, Math.max(share, zeros));
    const chosen = lowestUnits(scores, take);
    pruned += take;
    // Column by column inside the block; the errors go to the block's later columns now and
    // to the columns after the block in one batch below.
    const err = new Float64Array(out * width);
    for (let j = i1; j < i2; j++) {
      const rj = j * inn;
      const d = u[rj + j];
      for (let r = 0; r < out; r++) {
        if (!chosen[Math.floor(r / rowsPerUnit) * width + j - i1]) continue;
        const rw = r * inn;
        const e = w[rw + j] / d;
        w[rw + j] = 0;
        err[r * width + j - i1] = e;
        if (e === 0) continue;
        for (let k = j + 1; k < i2; k++) w[rw + k] -= e * u[rj + k];
      }
    }
    if (i2 < inn) {
      for (let r = 0; r < out; r++) {
        const rw = r * inn;
        for (let t = 0; t < width; t++) {
          const e = err[r * width + t];
          if (e === 0) continue;
          const ru = (i1 + t) * inn;
          for (let k = i2; k < inn; k++) w[rw + k] -= e * u[ru + k];
        }
      }
    }
    for (let b = 0; b < unitRows; b++) {
      for (let j = i1; j < i2; j++) mask[b * inn + j] = chosen[b * width + j - i1];
    }
  }
  return mask;
}

/**
 * LayerNorm over the last axis through the `sb_layernorm` kernel (`kernels/layernorm.zig`):
 * `y = (x - mean) / sqrt(var + eps) * gamma + beta`, row by row.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { checkStatus } from "./status.ts";
import { describeArray, overlaps } from "./linear.ts";

/** LayerNorm parameters: `gamma` and `beta` of the normalised width, and epsilon. */
export interface LayerNormWeight {
  /** Scale, `[cols]`. */
  gamma: Float32Array;
  /** Shift, `[cols]`. */
  beta: Float32Array;
  /** Added to the variance; must be >= 0. */
  eps: number;
}

/** Options of {@linkcode layerNorm}. */
export interface LayerNormOptions {
  /**
   * Output `[rows * cols]`; default a new array. May be `x` itself (in place), but must not
   * otherwise overlap it.
   */
  out?: Float32Array;
}

/** Checks a LayerNorm weight for `cols` features; throws a RangeError naming what is wrong. */
export function checkLayerNormWeight(norm: LayerNormWeight, cols: number): void {
  if (!(norm.gamma instanceof Float32Array) || norm.gamma.length !== cols) {
    throw new RangeError(
      `LayerNorm gamma needs ${cols} float32 values, got ${describeArray(norm.gamma)}`,
    );
  }
  if (!(norm.beta instanceof Float32Array) || norm.beta.length !== cols) {
    throw new RangeError(
      `LayerNorm beta needs ${cols} float32 values, got ${describeArray(norm.beta)}`,
    );
  }
  if (!(Number.isFinite(norm.eps) && norm.eps >= 0)) {
    throw new RangeError(`LayerNorm eps must be a finite number >= 0, got ${norm.eps}`);
  }
}

/**
 * Normalises each of the `rows` rows of `x` (`[rows, cols]` row-major, `cols` =
 * `norm.gamma.length`).
 *
 * @returns The output array.
 */
export function layerNorm(
  x: Float32Array,
  rows: number,
  norm: LayerNormWeight,
  options: LayerNormOptions = {},
): Float32Array {
  const cols = norm.gamma?.length;
  checkLayerNormWeight(norm, cols);
  if (!Number.isInteger(rows) || rows < 1) {
    throw new RangeError(`LayerNorm row count must be a positive integer, got ${rows}`);
  }
  const need = rows * cols;
  if (!(x instanceof Float32Array) || x.length < need) {
    throw new RangeError(
      `LayerNorm input needs ${rows} x ${cols} = ${need} float32 values, got ${describeArray(x)}`,
    );
  }
  const out = options.out ?? new Float32Array(need);
  if (!(out instanceof Float32Array) || out.length < need) {
    throw new RangeError(
      `LayerNorm output needs ${need} float32 values, got ${describeArray(out)}`,
    );
  }
  const inPlace = out.buffer === x.buffer && out.byteOffset === x.byteOffset;
  if (!inPlace && overlaps(x.subarray(0, need), out.subarray(0, need))) {
    throw new RangeError("LayerNorm output must be the input itself or not overlap it");
  }
  const status = kernels().symbols.sb_layernorm(
    x,
    BigInt(rows),
    BigInt(cols),
    norm.gamma,
    norm.beta,
    norm.eps,
    out,
  );
  checkStatus(status, `LayerNorm [${rows}, ${cols}]`);
  return out;
}

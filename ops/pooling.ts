/**
 * Sentence pooling over the `sb_pool` kernel (`kernels/pooling.zig`), with the modes of
 * sentence-transformers' `Pooling` over the tokens the mask keeps: the first token (`cls`), the
 * mean (`mean`), the per-feature max (`max`), sum / sqrt(count) (`mean_sqrt_len`), the
 * position-weighted mean (`weightedmean`) and the last token (`lasttoken`); optionally L2
 * normalised. Plus an in-place row L2 normaliser for token-level outputs.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { checkStatus } from "./status.ts";
import { describeArray } from "./linear.ts";

/** Every pooling mode, by sentence-transformers' names. */
export const POOLING_MODES = [
  "mean",
  "cls",
  "max",
  "mean_sqrt_len",
  "weightedmean",
  "lasttoken",
] as const;

/** How token states become one vector per sequence (sentence-transformers' names). */
export type PoolingMode = typeof POOLING_MODES[number];

const MODE_CODE: Record<PoolingMode, number> = {
  cls: 0,
  mean: 1,
  max: 2,
  mean_sqrt_len: 3,
  weightedmean: 4,
  lasttoken: 5,
};

/** Options of {@linkcode pool}. */
export interface PoolOptions {
  /** `"mean"` (default), `"cls"`, `"max"`, `"mean_sqrt_len"`, `"weightedmean"`, `"lasttoken"`. */
  mode?: PoolingMode;
  /** Divide each pooled vector by its L2 norm (at least 1e-12); default false. */
  normalize?: boolean;
  /** Output `[batch * hidden]`; default a new array. */
  out?: Float32Array;
}

/**
 * Pools token states `x` (`[batch * seq * hidden]`) into `[batch * hidden]`. `mask` holds one
 * byte per token (non-zero = real token) and is used by the mean.
 */
export function pool(
  x: Float32Array,
  shape: { batch: number; seq: number; hidden: number; mask: Uint8Array },
  options: PoolOptions = {},
): Float32Array {
  const { batch, seq, hidden, mask } = shape;
  for (const [name, value] of [["batch", batch], ["seq", seq], ["hidden", hidden]] as const) {
    if (!Number.isInteger(value) || value < 1) {
      throw new RangeError(`Pooling ${name} must be a positive integer, got ${value}`);
    }
  }
  const mode = options.mode ?? "mean";
  if (!Object.hasOwn(MODE_CODE, mode)) {
    throw new RangeError(
      `Unknown pooling mode "${mode}": expected ${Object.keys(MODE_CODE).join(", ")}`,
    );
  }
  if (!(x instanceof Float32Array) || x.length < batch * seq * hidden) {
    throw new RangeError(
      `Pooling input needs ${batch * seq * hidden} float32 values, got ${describeArray(x)}`,
    );
  }
  if (!(mask instanceof Uint8Array) || mask.length < batch * seq) {
    throw new RangeError(`Pooling mask needs ${batch * seq} bytes, got ${describeArray(mask)}`);
  }
  const out = options.out ?? new Float32Array(batch * hidden);
  if (!(out instanceof Float32Array) || out.length < batch * hidden) {
    throw new RangeError(
      `Pooling output needs ${batch * hidden} float32 values, got ${describeArray(out)}`,
    );
  }
  const status = kernels().symbols.sb_pool(
    x,
    BigInt(batch),
    BigInt(seq),
    BigInt(hidden),
    mask,
    MODE_CODE[mode],
    options.normalize ? 1 : 0,
    out,
  );
  checkStatus(status, `Pooling [${batch} x ${seq}, ${hidden}]`);
  return out;
}

/** Divides each of the `rows` rows of `x` (`[rows * cols]`) by max(L2 norm, 1e-12), in place. */
export function l2NormalizeRows(x: Float32Array, rows: number, cols: number): Float32Array {
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`Normalize needs positive integer rows and cols, got ${rows} x ${cols}`);
  }
  if (!(x instanceof Float32Array) || x.length < rows * cols) {
    throw new RangeError(`Normalize needs ${rows * cols} float32 values, got ${describeArray(x)}`);
  }
  checkStatus(kernels().symbols.sb_l2_normalize_rows(x, BigInt(rows), BigInt(cols)), "Normalize");
  return x;
}

/**
 * Sparsity patterns: the checker (element and 4x1-block sparsity of any weight), magnitude
 * pruning to 4x1 blocks or to single weights, and seeded random 4x1 patterns for tests and
 * benchmarks.
 *
 * A 4x1 block is 4 consecutive output channels (rows of a torch `[out, in]` weight) at one input
 * channel: the unit the sparse int8 kernel skips. Rows are grouped from row 0; a short last
 * group counts as a block too.
 *
 * ```ts
 * import { pruneBlocks4x1, sparsityStats } from "./ops/sparsity.ts";
 * const w = new Float32Array(8 * 8).map((_, i) => (i % 5) - 2);
 * const pruned = pruneBlocks4x1(w, 8, 8, 0.75);
 * console.log(sparsityStats(pruned, 8, 8).blockSparsity); // 0.75
 * ```
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { describeArray } from "./linear.ts";
import { mulberry32 } from "./random.ts";

/** Rows per block of the 4x1 pattern. */
export const BLOCK_ROWS = 4;

/** Measured sparsity of a weight matrix. */
export interface SparsityStats {
  /** Weights in the matrix. */
  elements: number;
  /** Weights equal to zero. */
  zeroElements: number;
  /** zeroElements / elements. */
  elementSparsity: number;
  /** 4x1 blocks: ceil(out / 4) * in. */
  blocks: number;
  /** Blocks whose weights are all zero. */
  zeroBlocks: number;
  /** zeroBlocks / blocks. */
  blockSparsity: number;
}

function checkMatrix(weight: Float32Array | Int8Array, out: number, inFeatures: number): void {
  if (!Number.isInteger(out) || out < 1 || !Number.isInteger(inFeatures) || inFeatures < 1) {
    throw new RangeError(`Weight needs positive integer sizes, got [${out}, ${inFeatures}]`);
  }
  if (
    !(weight instanceof Float32Array || weight instanceof Int8Array) ||
    weight.length !== out * inFeatures
  ) {
    throw new RangeError(
      `Weight [${out}, ${inFeatures}] needs ${out * inFeatures} float32 or int8 values, got ${
        describeArray(weight)
      }`,
    );
  }
}

function checkSparsity(sparsity: number): void {
  if (!(sparsity >= 0 && sparsity <= 1)) {
    throw new RangeError(`Sparsity must be in [0, 1], got ${sparsity}`);
  }
}

/** Element and 4x1-block sparsity of `weight` `[out, in]` (fp32 or int8). */
export function sparsityStats(
  weight: Float32Array | Int8Array,
  out: number,
  inFeatures: number,
): SparsityStats {
  checkMatrix(weight, out, inFeatures);
  const counts = new BigUint64Array(4);
  const lib = kernels().symbols;
  if (weight instanceof Float32Array) {
    lib.sb_sparsity_stats_f32(weight, BigInt(out), BigInt(inFeatures), counts);
  } else {
    lib.sb_sparsity_stats_i8(weight, BigInt(out), BigInt(inFeatures), counts);
  }
  const [elements, zeroElements, blocks, zeroBlocks] = Array.from(counts, Number);
  return {
    elements,
    zeroElements,
    elementSparsity: zeroElements / elements,
    blocks,
    zeroBlocks,
    blockSparsity: zeroBlocks / blocks,
  };
}

/**
 * Magnitude pruning to 4x1 blocks: zeroes the round(sparsity * blocks) blocks with the
 * smallest L2 norm. Returns a new array.
 */
export function pruneBlocks4x1(
  weight: Float32Array,
  out: number,
  inFeatures: number,
  sparsity: number,
): Float32Array {
  checkMatrix(weight, out, inFeatures);
  checkSparsity(sparsity);
  const blockRows = Math.ceil(out / BLOCK_ROWS);
  const norms = new Float64Array(blockRows * inFeatures);
  for (let r = 0; r < out; r++) {
    const b = Math.floor(r / BLOCK_ROWS);
    for (let k = 0; k < inFeatures; k++) {
      const w = weight[r * inFeatures + k];
      norms[b * inFeatures + k] += w * w;
    }
  }
  const order = Array.from(norms.keys()).sort((a, b) => norms[a] - norms[b] || a - b);
  const zero = Math.round(sparsity * norms.length);
  const result = Float32Array.from(weight);
  for (const index of order.slice(0, zero)) {
    const b = Math.floor(index / inFeatures);
    const k = index % inFeatures;
    for (let r = b * BLOCK_ROWS; r < Math.min(out, (b + 1) * BLOCK_ROWS); r++) {
      result[r * inFeatures + k] = 0;
    }
  }
  return result;
}

/** Unstructured magnitude pruning: zeroes the round(sparsity * size) smallest |w|. */
export function pruneUnstructured(
  weight: Float32Array,
  out: number,
  inFeatures: number,
  sparsity: number,
): Float32Array {
  checkMatrix(weight, out, inFeatures);
  checkSparsity(sparsity);
  const order = Array.from(weight.keys()).sort((a, b) =>
    Math.abs(weight[a]) - Math.abs(weight[b]) || a - b
  );
  const result = Float32Array.from(weight);
  for (const index of order.slice(0, Math.round(sparsity * weight.length))) result[index] = 0;
  return result;
}

/** Options of {@linkcode randomBlockSparse}. */
export interface RandomPatternOptions {
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** Fraction of zero 4x1 blocks (exact up to rounding), in [0, 1]. */
  sparsity: number;
  /** PRNG seed; default 1. */
  seed?: number;
  /** Also zero single weights at this rate inside kept blocks (default 0). */
  elementDropout?: number;
}

/**
 * A seeded random fp32 weight `[out, in]` with exactly round(sparsity * blocks) zero 4x1 blocks
 * placed uniformly at random. Kept weights have magnitudes in [0.25, 1], so symmetric int8
 * quantization keeps every kept block non-zero.
 */
export function randomBlockSparse(options: RandomPatternOptions): Float32Array {
  const { out, in: inFeatures, sparsity, seed = 1, elementDropout = 0 } = options;
  checkMatrix(new Float32Array(out * inFeatures), out, inFeatures);
  checkSparsity(sparsity);
  const next = mulberry32(seed);
  const blockRows = Math.ceil(out / BLOCK_ROWS);
  const blocks = blockRows * inFeatures;
  // Partial Fisher-Yates: the first `zero` entries of a shuffled index list are zeroed.
  const index = new Uint32Array(blocks).map((_, i) => i);
  const zero = Math.round(sparsity * blocks);
  for (let i = 0; i < zero; i++) {
    const j = i + Math.floor(next() * (blocks - i));
    const t = index[i];
    index[i] = index[j];
    index[j] = t;
  }
  const kept = new Uint8Array(blocks).fill(1);
  for (let i = 0; i < zero; i++) kept[index[i]] = 0;
  const weight = new Float32Array(out * inFeatures);
  for (let r = 0; r < out; r++) {
    const b = Math.floor(r / BLOCK_ROWS);
    for (let k = 0; k < inFeatures; k++) {
      if (!kept[b * inFeatures + k]) continue;
      const magnitude = 0.25 + 0.75 * next();
      const value = next() < 0.5 ? -magnitude : magnitude;
      // Row 0 of a block always stays, so dropout never empties a kept block.
      const drop = r % BLOCK_ROWS !== 0 && next() < elementDropout;
      weight[r * inFeatures + k] = drop ? 0 : value;
    }
  }
  return weight;
}

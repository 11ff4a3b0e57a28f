/**
 * Kernel test harness (in the spirit of ggml's test-backend-ops): every kernel test compares
 * the op, running on the kernel variant selected for this process, against a scalar reference
 * in `tests/reference/`. `deno task test` runs each kernel test file once per ISA variant the
 * host can execute (via `SPARSEBERT_ISA`) and again against the ReleaseSafe build (via
 * `SPARSEBERT_LIB_DIR`). A test file is a kernel test when it imports this module.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { mulberry32 } from "../ops/random.ts";

/** Describes the kernel library under test, e.g. `"avx2 (build/fast)"`. */
export function variantLabel(): string {
  const lib = kernels();
  const mode = lib.path.includes("/safe/") ? "ReleaseSafe" : "ReleaseFast";
  return `${lib.isa}, ${mode}`;
}

/** Options for {@linkcode assertClose}. */
export interface CloseOptions {
  /** Relative tolerance against max(|expected|) of the whole tensor; default 1e-5. */
  rtol?: number;
  /** Absolute floor of the tolerance; default 1e-6. */
  atol?: number;
  /** What is compared, for the message. */
  what?: string;
}

/**
 * Asserts |actual - expected| <= atol + rtol * max|expected| element-wise and reports the worst
 * element with its index on failure.
 */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  options: CloseOptions = {},
): void {
  const { rtol = 1e-5, atol = 1e-6, what = "output" } = options;
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  let scale = 0;
  for (let i = 0; i < expected.length; i++) scale = Math.max(scale, Math.abs(expected[i]));
  const bound = atol + rtol * scale;
  let worst = -1;
  let worstError = 0;
  for (let i = 0; i < actual.length; i++) {
    const error = Math.abs(actual[i] - expected[i]);
    if (!(error <= worstError)) { // also catches NaN
      worstError = Number.isNaN(error) ? Infinity : error;
      worst = i;
    }
  }
  if (worstError > bound) {
    throw new Error(
      `${what} (${variantLabel()}): element ${worst} is ${actual[worst]}, expected ${
        expected[worst]
      } (error ${worstError.toExponential(3)} > bound ${bound.toExponential(3)})`,
    );
  }
}

/** Asserts exact equality of integer tensors, reporting the first mismatch. */
export function assertEqualInts(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  what = "output",
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new Error(
        `${what} (${variantLabel()}): element ${i} is ${actual[i]}, expected ${expected[i]}`,
      );
    }
  }
}

/** A seeded PRNG (mulberry32, `ops/random.ts`) so failures reproduce. */
export const rng: (seed: number) => () => number = mulberry32;

/** `n` uniform floats in [lo, hi) from a seeded PRNG. */
export function randomF32(n: number, seed: number, lo = -1, hi = 1): Float32Array {
  const next = rng(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * next();
  return out;
}

/**
 * Shapes every linear kernel is tested on: odd sizes around the tile edges, K = 1, tiny,
 * and BERT-like ones. `[m, k, n]` = rows, input features, output features.
 */
export const LINEAR_SHAPES: readonly [number, number, number][] = [
  [1, 1, 1],
  [1, 7, 3],
  [5, 1, 17],
  [7, 13, 33],
  [13, 31, 15],
  [6, 64, 16],
  [64, 128, 96],
  [37, 256, 129],
  [128, 384, 384],
  [128, 768, 768],
];

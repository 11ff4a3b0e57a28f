/**
 * The SHA-256 of each released kernel library, pinned in the module's source: a library fetched
 * for a module imported from a URL is checked against these before it is written to the cache.
 * Written by `deno task release --pin` from a fresh ReleaseFast build (Zig builds are
 * reproducible for the pinned Zig and flags; `tests/release_test.ts` rebuilds and compares).
 *
 * @module
 */

/** The module version these libraries belong to (the cache is keyed by it). */
export const RELEASE_VERSION = "0.1.0";

/** SHA-256 (lower-case hex) of `libsparsebert_<isa>.so`, by ISA variant. */
export const LIBRARY_SHA256: Readonly<Record<string, string>> = {
  baseline: "6d3b198a67beb30fdac09a6223463123fb7fc1d997b18080bbed2f0c22ddd70e",
  avx2: "ff5634b2c3113d13f6824e4d58c8bd30e12a9f73d04bfc7af4cd15156556354c",
  avx512vnni: "f7dae153e5876f6a9bce5018adc81919c3f6235a86698b8c39a7f2567c6c267c",
};

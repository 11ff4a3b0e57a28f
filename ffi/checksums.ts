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
  baseline: "40c5846c91ff3dab13e902ca12c725a6d71554b78df1056a66a21f81a476bc1c",
  avx2: "7a8e7c34c8609e7c0b898d5cc09d127de6c394a4488767139ce577296b55c886",
  avx512vnni: "4c325769218ab7c83bdb44b473866714144e3c1af6d127dd5cf14231d9727c4c",
};

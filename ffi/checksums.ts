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
  baseline: "ee0f0fb12a8c2b5196888001935f552a22578685a6c4779af40c3ca472fdd489",
  avx2: "9bdca4013fb95ad50849eb6b6ec1cdcaaa38351757a7cfa06d403f600067d3cb",
  avx512vnni: "db0866c44460169891191ef7e3ff27128295728f715743e97a0bb20b7d0b8559",
};

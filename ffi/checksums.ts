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
  baseline: "76492de818b963048374eef742539bfc183806792a5a6dd288a1227b58b7d2f4",
  avx2: "4c72a145013fc4971643f1099db7debcf9113946c4b3320168cf87bdaea4da5a",
  avx512vnni: "2174e55d9bccdbd63bbe2ddef6735dcf04dc0e60724990cf187f63bfe610b72a",
};

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
  baseline: "4cdf488a62a4967657b8ef30495237835f231a80ee15b298c1ad44802f7948b8",
  avx2: "4e00af13df126f3d8b42903cf6c8f7ee684f3e03173c9b6aa58fe1484c5aaabb",
  avx512vnni: "f83c617e8a334987960cb6fe518c6a0405cce9abd92f4411539c12b36bb5c21a",
};

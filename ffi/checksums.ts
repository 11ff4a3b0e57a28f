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
  baseline: "b2e3161b439117b885a2b23d2784befb106d762bb57aa9f36672d827180f4dd7",
  avx2: "c56c924b03cedcda217e4c592653aaf7111004a5fade91c9c87bf59b9c63d5e3",
  avx512vnni: "4481afe63f34cac79dd44d581cfb27541f247d41b3d1115411d3e274e5f87399",
};

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
  baseline: "4cc0ac86277a70bc704c148d94d3ecad673f38e6c4f9fe2b74dca16af034b60e",
  avx2: "811b7628e8612680d83b9b6a0d5df13fed76989e6cad4f9160eeb7d1fe3b5366",
  avx512vnni: "582f25789aea4a14c2539bdac223b0b07aba8b1f6f294743f317be39ce6a27b1",
};

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
  baseline: "b05b6d807008c8ca1e02b50a222b4f99c5ce6a4a1a5100bb3cec2bf27ff4ef2c",
  avx2: "11c6caf5c83e49604ff5c8400d6fd6161970040b3951099f0e045408e86686d5",
  avx512vnni: "e6edc9bb2e20bf81ead0e2423c6fdecf92fd87513171ffb921827f108d0f4038",
};

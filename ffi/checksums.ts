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
  baseline: "f3eb5f2fbd9035bb5808aeae30cfd0b93f56965c4771fb2c3fa4edfc359fc2d0",
  avx2: "06f58c698ee05db7d05e82be06c7423b75d931140c90998cdd6ca9bd34ccd77f",
  avx512vnni: "ab6bf50d464d06ad22cabf3c0a3a03258af8126bed7074f46ad479fa0a1395f2",
};

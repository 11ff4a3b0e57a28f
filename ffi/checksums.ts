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
  baseline: "3016935cdc32dc173d98e1d40de127bdeeb234150bfa8c047f8ecc8d7bfb2641",
  avx2: "f99a1dc0ed502a74e820e0aab3916a4e8b7324e1640ffbe787f952002677d729",
  avx512vnni: "90df3d0bb94242c42cc2001a6a3eaa09862b32337aa62d24bd7cdc9aa63e76d4",
};

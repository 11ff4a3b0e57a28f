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
  baseline: "8221acc264241518b38d4d5deb21005e97b621bc7153c89e22e346c675e88942",
  avx2: "59737dab6c1039b3e81d10622abfe1a5944c49d2776028f847fb3a186e62f9e4",
  avx512vnni: "9fd65e7a2f222def2b42b8c6c1181d8d5ea445cbe509f18ca22399a52c67bce4",
};

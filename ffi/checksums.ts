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
  baseline: "76946438056f861d19cc50aeaa29a43841d1c91490ef0ef36a51166047fcb022",
  avx2: "061e0722c087a63b63196c12b63551dd962610767eb79c9f81f0c2989eb3947a",
  avx512vnni: "d2b66a3caa598e45d0bd97ef8dadbd0552107de736f1a72775dc92ae03e2d895",
};

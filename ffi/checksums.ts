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
  baseline: "b661fcf52c05cbe9ca363ff270d9fa576c449b8d127ff7d727d84b7d3407671c",
  avx2: "abaea4001460a07c064b87b8232247de181ac3a1fef6b32ad3add6ab03f5ea78",
  avx512vnni: "10659e3184ca104ea43d17f6aaf50a927bbd51a8ef0fc31e061575b760e5d734",
};

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
  baseline: "b6267dbbdd459a09fb7b60bc7d0456b5cb1a44c04841f656bcc36840989990c8",
  avx2: "367f61763f36bb2c931603dc6502d94cae75e53840aa4c31e1eb5339f2cb8046",
  avx512vnni: "a2a231439e25e0c7009e327a7fc44b79e1cada8082062131ad3b3a112d4afa7f",
};

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
  baseline: "021574eebe7fa6f276acda8aeebac45b32f936f80ed7ac3706bd6c977c324edb",
  avx2: "1332c713837c98743365a90af03f7758ebd852fd475d8f1caee835bd0470832e",
  avx512vnni: "c8bc2df87716373c62205e4cb4c405b8ff2e93810cd6c56891913395b0afefdd",
};

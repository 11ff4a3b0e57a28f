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
  baseline: "1fea8eb577f14a4ef49175bbb829cfef79ffd153b14068dfa52c2c88a945312e",
  avx2: "bb7efd8474a93d25ef966a61c5c6c5117e1fb0623537b5643f338588ff6ba398",
  avx512vnni: "5ba5e53adc80b14f3aa6c18b21e7fe7e22734623fc573345b0e9a21b3f2b64cf",
};

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
  baseline: "fc53bee27cbd485768cef5920de2e1efd49126672bd886bf2476e28ffa87cd28",
  avx2: "6250b8d00f0323d9000943f4ad8f6a4d88443acc8e174b2ba1660e966d3de4ed",
  avx512vnni: "d7f9d6bcb868b2e9038bd735c25c51179c5952fa6ddd36c731f8aad56a6b71df",
};

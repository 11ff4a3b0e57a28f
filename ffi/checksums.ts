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
  baseline: "a1e7a9796718e88f8752e4377bfab569008f0c32d11d5d38320f5f55e20d80aa",
  avx2: "8f835972192b0761c4d1f5d4700c6fdc65ed3d9b3cd993f54beeb931761db484",
  avx512vnni: "b4dab842202a4d6a08b23146f5976cc8e1b4042a3295ac4f0e9a8105bea8540d",
};

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
  baseline: "18dc15db75876d2aca5746ceb85600a6a0fe618d0edcc094b0c5af1b4d84e9d8",
  avx2: "08bf10fb77208d44dab2fe61a91bd81f602401a2be78f3492ebe71a19d113b77",
  avx512vnni: "d7200913f5fbc41f14a3435f896f79de9eeb4c3610b4f499b3920175f37ce1e7",
};

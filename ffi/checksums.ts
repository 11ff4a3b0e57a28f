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
  baseline: "d7216e3b7918416eb5992efcb55e3526af4f8e65af55327920ce1631f40bd8fb",
  avx2: "d5d7c198d336eb7bfe3440128b22588e7329e02511456e9289ce6e704cd0d0f0",
  avx512vnni: "4b131b86788da00c954ddc8f1041a7aa94992314f81cd61696086462d18dea9b",
};

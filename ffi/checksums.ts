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
  baseline: "f69ea77bc31d1bcf323d1e923f217c5c4b4c0d17315e1d243d62a11f270158b8",
  avx2: "b82f6858745f6aa27be80e811b9824aac96d58451dd499ceb267a644eb08f441",
  avx512vnni: "2174e55d9bccdbd63bbe2ddef6735dcf04dc0e60724990cf187f63bfe610b72a",
};

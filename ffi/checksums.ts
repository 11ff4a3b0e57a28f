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
  baseline: "9bd8372de8225c81f4be12e935316e1738d787536073f4d68e0f15e3c0256f1b",
  avx2: "2c46d2bf8df78dff4acbf875bf07673551f0f47365e123021d7f6bf41af6b6df",
  avx512vnni: "5ace1185a9ac4417da5dd38aa80c40747b6cc5bc5c1209b5337cf3804973ee14",
};

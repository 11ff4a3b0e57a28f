/**
 * The project's seeded pseudo-random generators, one implementation each:
 *
 * - {@linkcode mulberry32}: floats in [0, 1) for test data, random sparse weights and fuzzing;
 * - {@linkcode lcg32}: the 32-bit LCG whose token ids every runtime of `bench:compare` shares
 *   (`bench/peers/peer_runner.py` implements the same recurrence in Python:
 *   `state = state * 1664525 + 1013904223 mod 2^32`).
 *
 * (`tests/fixtures/write_test_model.ts` keeps its own xoshiro128** streams, one per tensor keyed by
 * name, because the generated test models' weights are defined by them.)
 *
 * @module
 */

/** A seeded PRNG (mulberry32) returning floats in [0, 1); the same seed, the same stream. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6D2B79F5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The 32-bit LCG shared with `peer_runner.py`: each call advances
 * `state = state * 1664525 + 1013904223 mod 2^32` (state starting at `seed`) and returns it.
 */
export function lcg32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
    return state;
  };
}

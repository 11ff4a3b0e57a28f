/**
 * Choice of the pruning units with the lowest scores, shared by the pruning methods of
 * `compress/prune.ts` and the OBS sweep of `compress/obs.ts`.
 *
 * @module
 */

/**
 * Marks the `count` lowest scores of `scores` (ties broken by position) in a new 0/1 array
 * (1 = prune).
 */
export function lowestUnits(scores: Float32Array, count: number): Uint8Array {
  const prune = new Uint8Array(scores.length);
  if (count <= 0) return prune;
  if (count >= scores.length) return prune.fill(1);
  for (let i = 0; i < scores.length; i++) {
    if (!(scores[i] >= 0)) {
      throw new RangeError(`Score ${i} is ${scores[i]}: weights must be finite`);
    }
  }
  const sorted = Float32Array.from(scores).sort();
  const threshold = sorted[count - 1];
  let left = count;
  for (let i = 0; i < scores.length; i++) {
    if (scores[i] < threshold) {
      prune[i] = 1;
      left--;
    }
  }
  for (let i = 0; i < scores.length && left > 0; i++) {
    if (scores[i] === threshold) {
      prune[i] = 1;
      left--;
    }
  }
  return prune;
}

/** The arrays one after another in a new array (the global scope's scores, bundle files). */
export function concatFloat32(parts: readonly Float32Array[]): Float32Array {
  const all = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    all.set(p, off);
    off += p.length;
  }
  return all;
}

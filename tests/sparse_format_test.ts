import { throws as assertThrows } from "node:assert/strict";
import { quantizeWeights } from "../ops/quantize.ts";
import {
  pruneBlocks4x1,
  pruneUnstructured,
  randomBlockSparse,
  sparsityStats,
} from "../ops/sparsity.ts";
import { assertEqualInts, randomF32, variantLabel } from "./harness.ts";

/** Counts zero elements and zero 4x1 blocks in plain TypeScript. */
function countPattern(w: ArrayLike<number>, n: number, k: number): [number, number, number] {
  let zeros = 0;
  for (let i = 0; i < n * k; i++) zeros += w[i] === 0 ? 1 : 0;
  let zeroBlocks = 0;
  for (let r0 = 0; r0 < n; r0 += 4) {
    for (let i = 0; i < k; i++) {
      let zero = true;
      for (let r = r0; r < Math.min(n, r0 + 4); r++) zero &&= w[r * k + i] === 0;
      zeroBlocks += zero ? 1 : 0;
    }
  }
  return [zeros, zeroBlocks, Math.ceil(n / 4) * k];
}

Deno.test(`the pattern checker counts elements and 4x1 blocks (${variantLabel()})`, () => {
  for (const [n, k, sparsity] of [[1, 1, 0], [7, 13, 0.5], [64, 96, 0.9], [30, 50, 1]] as const) {
    const w = randomBlockSparse({ out: n, in: k, sparsity, seed: n + k, elementDropout: 0.4 });
    const stats = sparsityStats(w, n, k);
    const [zeros, zeroBlocks, blocks] = countPattern(w, n, k);
    assertEqualInts(
      [stats.elements, stats.zeroElements, stats.blocks, stats.zeroBlocks],
      [n * k, zeros, blocks, zeroBlocks],
      `stats [${n}, ${k}]`,
    );
    const q = quantizeWeights({ out: n, in: k, weight: w });
    const qStats = sparsityStats(q.weight, n, k);
    assertEqualInts([qStats.zeroElements, qStats.zeroBlocks], [zeros, zeroBlocks], "int8 stats");
  }
});

Deno.test("random 4x1 patterns have the exact block sparsity asked for", () => {
  for (const sparsity of [0, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1]) {
    const w = randomBlockSparse({ out: 64, in: 100, sparsity, seed: 3 });
    const stats = sparsityStats(w, 64, 100);
    if (stats.zeroBlocks !== Math.round(sparsity * 1600)) {
      throw new Error(`Sparsity ${sparsity}: ${stats.zeroBlocks} zero blocks`);
    }
    // Without dropout a kept block is fully dense.
    if (stats.zeroElements !== 4 * stats.zeroBlocks) throw new Error("Kept block with zeros");
  }
  const a = randomBlockSparse({ out: 8, in: 8, sparsity: 0.5, seed: 9 });
  const b = randomBlockSparse({ out: 8, in: 8, sparsity: 0.5, seed: 9 });
  assertEqualInts(a, b, "same seed, same pattern");
});

Deno.test("block pruning keeps the largest 4x1 blocks", () => {
  const [n, k] = [10, 12];
  const w = randomF32(n * k, 4, 0.1, 1);
  // Make block (rows 4..7, column 5) the largest and block (rows 0..3, column 0) the smallest.
  for (let r = 4; r < 8; r++) w[r * k + 5] = 10;
  for (let r = 0; r < 4; r++) w[r * k] = 0.001;
  const pruned = pruneBlocks4x1(w, n, k, 0.75);
  const stats = sparsityStats(pruned, n, k);
  if (stats.zeroBlocks !== Math.round(0.75 * 36)) {
    throw new Error(`${stats.zeroBlocks} zero blocks`);
  }
  if (pruned[4 * k + 5] !== 10 || pruned[0] !== 0) throw new Error("Pruned the wrong blocks");
  for (let i = 0; i < w.length; i++) {
    if (pruned[i] !== 0 && pruned[i] !== w[i]) throw new Error(`Kept weight ${i} changed`);
  }
  const unstructured = pruneUnstructured(w, n, k, 0.5);
  if (sparsityStats(unstructured, n, k).zeroElements !== 60) throw new Error("Unstructured count");
  assertThrows(() => pruneBlocks4x1(w, n, k, 1.5), /Sparsity must be in \[0, 1\], got 1.5/);
  assertThrows(() => sparsityStats(new Float32Array(5), 2, 3), /needs 6 float32 or int8 values/);
});

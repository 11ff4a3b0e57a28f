import { throws as assertThrows } from "node:assert/strict";
import { layerNorm } from "../ops/layernorm.ts";
import { assertClose, randomF32, variantLabel } from "./harness.ts";
import { layerNormReference } from "./reference/layernorm.ts";

// [200, 1024] is above the kernel's threshold for splitting rows over the worker pool.
const SHAPES: [number, number][] = [
  [1, 1],
  [3, 7],
  [5, 33],
  [2, 384],
  [130, 768],
  [17, 1024],
  [200, 1024],
];

function weight(cols: number, seed: number, eps = 1e-12) {
  return {
    gamma: randomF32(cols, seed, 0.5, 1.5),
    beta: randomF32(cols, seed + 1, -0.5, 0.5),
    eps,
  };
}

Deno.test(`layernorm matches the reference on every shape (${variantLabel()})`, () => {
  let seed = 100;
  for (const [rows, cols] of SHAPES) {
    for (const eps of [1e-12, 1e-5]) {
      // An offset mean and a large scale, as residual streams have.
      const x = randomF32(rows * cols, seed++, -20, 30);
      const norm = weight(cols, seed++, eps);
      const y = layerNorm(x, rows, norm);
      assertClose(y, layerNormReference(x, rows, norm), {
        rtol: 2e-6,
        atol: 2e-6,
        what: `layernorm [${rows},${cols}] eps ${eps}`,
      });
    }
  }
});

Deno.test("layernorm in place and into a buffer at an offset give the same values", () => {
  const [rows, cols] = [9, 768];
  const x = randomF32(rows * cols, 5, -3, 3);
  const norm = weight(cols, 6);
  const expected = layerNormReference(x, rows, norm);
  const big = new Float32Array(rows * cols + 3);
  layerNorm(x, rows, norm, { out: big.subarray(3) });
  assertClose(big.subarray(3), expected, { rtol: 2e-6, what: "layernorm at offset" });
  const inPlace = Float32Array.from(x);
  layerNorm(inPlace, rows, norm, { out: inPlace });
  assertClose(inPlace, expected, { rtol: 2e-6, what: "layernorm in place" });
});

Deno.test("layernorm of a constant row is beta (zero variance, eps keeps it finite)", () => {
  const cols = 40;
  const x = new Float32Array(2 * cols).fill(3.25);
  const norm = weight(cols, 9);
  const y = layerNorm(x, 2, norm);
  assertClose(y.subarray(0, cols), norm.beta, { what: "constant row" });
});

Deno.test("layernorm rejects bad arguments with clear errors", () => {
  const norm = weight(8, 1);
  assertThrows(() => layerNorm(new Float32Array(15), 2, norm), /needs 2 x 8 = 16 float32 values/);
  assertThrows(() => layerNorm(new Float32Array(16), 0, norm), /positive integer, got 0/);
  assertThrows(
    () => layerNorm(new Float32Array(16), 2, { ...norm, beta: new Float32Array(7) }),
    /beta needs 8 float32 values, got Float32Array\(7\)/,
  );
  assertThrows(() => layerNorm(new Float32Array(16), 2, { ...norm, eps: -1 }), /eps must be/);
  const shared = new Float32Array(24);
  assertThrows(
    () => layerNorm(shared.subarray(0, 16), 2, norm, { out: shared.subarray(8, 24) }),
    /must be the input itself or not overlap/,
  );
});

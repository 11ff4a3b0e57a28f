import { throws as assertThrows } from "node:assert/strict";
import { l2NormalizeRows, pool, type PoolingMode } from "../ops/pooling.ts";
import { assertClose, randomF32, variantLabel } from "./harness.ts";
import { l2NormalizeReference, poolReference } from "./reference/pooling.ts";

function lengthsMask(lengths: number[], seq: number): Uint8Array {
  const mask = new Uint8Array(lengths.length * seq);
  lengths.forEach((n, b) => mask.fill(1, b * seq, b * seq + n));
  return mask;
}

const MODES: PoolingMode[] = ["cls", "mean", "max", "mean_sqrt_len", "weightedmean", "lasttoken"];

Deno.test(`pooling matches the reference in every sentence-transformers mode, with and without normalize (${variantLabel()})`, () => {
  let seed = 300;
  const cases: [number[], number, number][] = [
    [[1], 1, 1],
    [[3, 1, 5], 5, 13],
    [[128, 7, 64, 1], 128, 384],
    [[9, 0], 9, 768], // an all-padding row: mean of nothing is 0, as sentence-transformers gives
  ];
  for (const [lengths, seq, hidden] of cases) {
    const batch = lengths.length;
    const x = randomF32(batch * seq * hidden, seed++, -2, 2);
    const mask = lengthsMask(lengths, seq);
    for (const mode of MODES) {
      for (const normalize of [false, true]) {
        const y = pool(x, { batch, seq, hidden, mask }, { mode, normalize });
        const expected = poolReference(x, { batch, seq, hidden, mask }, { mode, normalize });
        // Row by row: an all-padding row's max (-1e9) must not widen the others' tolerance.
        for (let b = 0; b < batch; b++) {
          assertClose(
            y.subarray(b * hidden, (b + 1) * hidden),
            expected.subarray(b * hidden, (b + 1) * hidden),
            {
              rtol: 1e-5,
              what: `pool ${mode}${
                normalize ? "+norm" : ""
              } lengths ${lengths} H ${hidden} row ${b}`,
            },
          );
        }
      }
    }
  }
});

Deno.test("l2NormalizeRows gives unit rows and leaves zero rows at zero", () => {
  const [rows, cols] = [5, 37];
  const x = randomF32(rows * cols, 44, -4, 4);
  x.fill(0, 2 * cols, 3 * cols);
  const expected = new Float64Array(rows * cols);
  for (let r = 0; r < rows; r++) {
    const row = Float64Array.from(x.subarray(r * cols, (r + 1) * cols));
    expected.set(l2NormalizeReference(row), r * cols);
  }
  l2NormalizeRows(x, rows, cols);
  assertClose(x, expected, { rtol: 1e-6, what: "l2 normalize rows" });
});

Deno.test("pooling rejects bad arguments with clear errors", () => {
  const mask = new Uint8Array(6).fill(1);
  const x = new Float32Array(2 * 3 * 4);
  assertThrows(() => pool(x, { batch: 2, seq: 3, hidden: 5, mask }), /needs 30 float32 values/);
  assertThrows(
    () => pool(x, { batch: 2, seq: 3, hidden: 4, mask: new Uint8Array(5) }),
    /mask needs 6 bytes/,
  );
  assertThrows(
    () => pool(x, { batch: 2, seq: 3, hidden: 4, mask }, { mode: "median" as PoolingMode }),
    /Unknown pooling mode "median": expected cls, mean, max, mean_sqrt_len, weightedmean, lasttoken/,
  );
  assertThrows(() => pool(x, { batch: 0, seq: 3, hidden: 4, mask }), /batch must be/);
  assertThrows(() => l2NormalizeRows(x, 7, 4), /needs 28 float32 values/);
});

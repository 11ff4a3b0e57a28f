import { throws as assertThrows } from "node:assert/strict";
import { setThreads, threads } from "../ffi/library.ts";
import type { Activation } from "../ops/linear.ts";
import { SparseLinearF32 } from "../ops/sparse_linear_f32.ts";
import { pruneBlocks4x1, pruneUnstructured } from "../ops/sparsity.ts";
import { assertClose, assertEqualInts, LINEAR_SHAPES, randomF32, variantLabel } from "./harness.ts";
import { spmmF32Reference } from "./reference/spmm_f32.ts";

const ACTIVATIONS: Activation[] = ["none", "gelu", "gelu_tanh"];

/**
 * Element patterns (CSR) and 4x1-block patterns (the block layout, as dense weights are too):
 * each packs into the layout its pattern calls for, and both must match the reference.
 */
const PATTERNS: { sparsity: number; blocks: boolean }[] = [
  { sparsity: 0, blocks: false },
  { sparsity: 0.7, blocks: false },
  { sparsity: 0.95, blocks: false },
  { sparsity: 1, blocks: false },
  { sparsity: 0.7, blocks: true },
  { sparsity: 0.9, blocks: true },
];

Deno.test(`spmm_f32 matches the reference on every shape, pattern and epilogue (${variantLabel()})`, () => {
  let seed = 1;
  for (const [m, k, n] of LINEAR_SHAPES) {
    for (const { sparsity, blocks } of PATTERNS) {
      for (const activation of ACTIVATIONS) {
        // Keep the f64 reference cheap on the largest shapes: all epilogues at one sparsity.
        if (m * k * n > 5e6 && sparsity < 0.9 && activation !== "none") continue;
        const withResidual = seed % 2 === 0;
        const x = randomF32(m * k, seed++);
        const weight = {
          out: n,
          in: k,
          weight: (blocks ? pruneBlocks4x1 : pruneUnstructured)(
            randomF32(n * k, seed++),
            n,
            k,
            sparsity,
          ),
          bias: randomF32(n, seed++),
        };
        const residual = withResidual ? randomF32(m * n, seed++) : undefined;
        using op = new SparseLinearF32(weight, { activation });
        // Full 4x1 blocks (dense weights too) get the block layout; scattered zeros, CSR.
        if (n % 4 === 0 && sparsity < 1) {
          const want = blocks || sparsity === 0 ? "blocks-4x1" : "csr";
          if (op.packedLayout !== want) {
            throw new Error(`[${n}, ${k}] sparsity ${sparsity}: layout ${op.packedLayout}`);
          }
        }
        const y = op.forward(x, m, { residual });
        assertClose(y, spmmF32Reference(x, m, weight, { activation, residual }), {
          rtol: 1e-5,
          what: `spmm_f32 [${m},${k},${n}] sparsity ${sparsity}${
            blocks ? " 4x1" : ""
          } ${activation}`,
        });
      }
    }
  }
});

Deno.test(`spmm_f32 splits an uneven pattern over threads (${variantLabel()})`, () => {
  const [m, k, n] = [33, 128, 200];
  const w = new Float32Array(n * k);
  w.set(randomF32(10 * k, 3)); // only the first 10 channels have weights
  const weight = { out: n, in: k, weight: w, bias: randomF32(n, 4) };
  const x = randomF32(m * k, 5);
  const before = threads();
  try {
    for (const count of [1, 2, 3]) {
      setThreads(count);
      using op = new SparseLinearF32(weight);
      assertClose(op.forward(x, m), spmmF32Reference(x, m, weight), { what: `${count} threads` });
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("spmm_f32 packs the non-zeros and unpacks to the same weight", () => {
  const [n, k] = [29, 47];
  const w = pruneUnstructured(randomF32(n * k, 6), n, k, 0.8);
  const bias = randomF32(n, 7);
  using op = new SparseLinearF32({ out: n, in: k, weight: w, bias });
  const back = op.unpack();
  assertEqualInts(back.weight, w, "weight");
  assertEqualInts(back.bias!, bias, "bias");
  if (op.nonZeros !== Math.round(0.2 * n * k)) throw new Error(`${op.nonZeros} non-zeros`);
  if (Math.abs(op.sparsity - 0.8) > 1e-3) throw new Error(`Sparsity ${op.sparsity}`);
});

Deno.test("spmm_f32 rejects bad input with clear errors", () => {
  assertThrows(
    () => new SparseLinearF32({ out: 2, in: 2, weight: new Float32Array([1, NaN, 0, 0]) }),
    /Weight 1 must be finite, got NaN/,
  );
  assertThrows(
    () => new SparseLinearF32({ out: 2, in: 2, weight: new Float32Array(3) }),
    /needs 4/,
  );
  using op = new SparseLinearF32({ out: 2, in: 3, weight: randomF32(6, 1) });
  assertThrows(() => op.forward(new Float32Array(5), 2), /at least 2 x 3 = 6 values/);
  assertThrows(
    () => op.forward(new Float32Array(6), 2, { residual: new Float32Array(3) }),
    /Residual needs 4/,
  );
});

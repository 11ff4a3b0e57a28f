import { throws as assertThrows } from "node:assert/strict";
import { setThreads, threads } from "../ffi/library.ts";
import type { Activation } from "../ops/linear.ts";
import { LinearI8 } from "../ops/linear_i8.ts";
import {
  int8ActivationQmax,
  quantizeActivations,
  type QuantizedLinearWeight,
  quantizeWeights,
} from "../ops/quantize.ts";
import { SparseLinearI8 } from "../ops/sparse_linear_i8.ts";
import { randomBlockSparse } from "../ops/sparsity.ts";
import {
  assertClose,
  assertEqualInts,
  LINEAR_SHAPES,
  randomF32,
  rng,
  variantLabel,
} from "./harness.ts";
import {
  INT8_GELU_ATOL,
  int8Epilogue,
  type RefActivations,
  requantizeReference,
} from "./reference/gemm_i8.ts";
import { quantizeReference } from "./reference/quantize.ts";
import { spmmI8Exact } from "./reference/spmm_i8.ts";

const SPARSITIES = [0, 0.5, 0.9, 1];
/** Wider than one panel of the VNNI kernel (k > 1024): partial sums carried between panels. */
const WIDE_SHAPES: readonly [number, number, number][] = [[37, 2100, 150], [16, 3072, 136]];
const ACTIVATIONS: Activation[] = ["none", "gelu", "gelu_tanh"];

function refActivations(
  x: Float32Array,
  m: number,
  k: number,
  mode: "per-token" | "per-tensor",
): RefActivations {
  return { m, k, ...quantizeReference(x, m, k, mode, int8ActivationQmax()) };
}

function sparseWeight(n: number, k: number, sparsity: number, seed: number): QuantizedLinearWeight {
  const weight = randomBlockSparse({ out: n, in: k, sparsity, seed, elementDropout: 0.3 });
  return quantizeWeights({ out: n, in: k, weight, bias: randomF32(n, seed + 1) });
}

Deno.test(`spmm_i8 s32 sums equal the reference exactly on every shape and sparsity (${variantLabel()})`, () => {
  let seed = 1;
  for (const [m, k, n] of [...LINEAR_SHAPES, ...WIDE_SHAPES]) {
    for (const sparsity of SPARSITIES) {
      const mode = seed % 2 === 0 ? "per-token" : "per-tensor";
      const x = randomF32(m * k, seed++, -2, 3);
      const qw = sparseWeight(n, k, sparsity, seed++);
      using op = new SparseLinearI8(qw, { activationQuantization: mode });
      const exact = op.forwardExact(op.quantizeInput(x, m));
      const what = `s32 [${m},${k},${n}] sparsity ${sparsity} ${mode}`;
      assertEqualInts(exact, spmmI8Exact(refActivations(x, m, k, mode), qw), what);
    }
  }
});

Deno.test(`spmm_i8 fp32 epilogue matches the reference (${variantLabel()})`, () => {
  let seed = 300;
  for (const [m, k, n] of LINEAR_SHAPES) {
    for (const activation of ACTIVATIONS) {
      for (const withResidual of [false, true]) {
        const x = randomF32(m * k, seed++);
        const qw = sparseWeight(n, k, 0.8, seed++);
        const residual = withResidual ? randomF32(m * n, seed++) : undefined;
        using op = new SparseLinearI8(qw, { activation });
        const y = op.forward(x, m, { residual });
        const ref = refActivations(x, m, k, "per-token");
        const expected = int8Epilogue(spmmI8Exact(ref, qw), ref, qw, { activation, residual });
        assertClose(y, expected, {
          rtol: 1e-5,
          atol: activation === "gelu" ? INT8_GELU_ATOL : 1e-6,
          what: `spmm_i8 [${m},${k}]x[${n},${k}]^T ${activation}${withResidual ? "+res" : ""}`,
        });
      }
    }
  }
});

Deno.test(`spmm_i8 agrees with the dense int8 op bit for bit (${variantLabel()})`, () => {
  const [m, k, n] = [45, 200, 100];
  const qw = sparseWeight(n, k, 0.7, 41);
  const x = randomF32(m * k, 42);
  using sparse = new SparseLinearI8(qw, { activation: "gelu" });
  using dense = new LinearI8(qw, { activation: "gelu" });
  const q = quantizeActivations(x, m, k);
  assertEqualInts(sparse.forwardExact(q), dense.forwardExact(q), "sparse vs dense s32");
  assertEqualInts(sparse.forward(x, m), dense.forward(x, m), "sparse vs dense fp32");
});

Deno.test(`spmm_i8 is exact at the extreme values (${variantLabel()})`, () => {
  // Kept blocks full of 127 / -128 / -127 against activations 0 and the bound, K = 4096.
  const top = int8ActivationQmax();
  const [m, k, n] = [20, 4096, 16];
  const next = rng(8);
  const weight = new Int8Array(n * k);
  for (let i = 0; i < k; i++) {
    if (i % 3 === 1) continue; // a third of the 4x1 blocks stay zero
    for (let c = 0; c < n; c++) {
      weight[c * k + i] = [127, -128, -127, next() < 0.5 ? 127 : -128][c % 4];
    }
  }
  const qw = { out: n, in: k, weight, scale: new Float32Array(n).fill(0.01) };
  const q = new Uint8Array(m * k);
  for (let t = 0; t < m; t++) {
    for (let i = 0; i < k; i++) q[t * k + i] = t === 0 ? top : t === 1 ? 0 : next() < 0.5 ? top : 0;
  }
  using op = new SparseLinearI8(qw);
  for (const zero of [0, top]) {
    const rows = {
      layout: "rows" as const,
      m,
      k,
      stride: k,
      data: q,
      scale: new Float32Array(m).fill(1),
      zeroPoint: new Int32Array(m).fill(zero),
      qmax: top,
    };
    assertEqualInts(
      op.forwardExact(rows),
      spmmI8Exact({ m, k, q, scale: rows.scale, zeroPoint: rows.zeroPoint }, qw),
      `extremes, zero point ${zero}`,
    );
  }
});

Deno.test(`spmm_i8 splits an uneven pattern over threads (${variantLabel()})`, () => {
  // All kept blocks sit in the first eighth of the output channels.
  const [m, k, n] = [40, 300, 256];
  const weight = new Float32Array(n * k);
  const head = randomBlockSparse({ out: 32, in: k, sparsity: 0.2, seed: 5 });
  weight.set(head);
  const qw = quantizeWeights({ out: n, in: k, weight, bias: randomF32(n, 6) });
  const x = randomF32(m * k, 7);
  const before = threads();
  try {
    for (const count of [1, 2, 3]) {
      setThreads(count);
      using op = new SparseLinearI8(qw);
      const exact = op.forwardExact(op.quantizeInput(x, m));
      assertEqualInts(
        exact,
        spmmI8Exact(refActivations(x, m, k, "per-token"), qw),
        `${count} threads`,
      );
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("spmm_i8 packs 4x1 blocks and unpacks to the same int8 weight", () => {
  const qw = sparseWeight(37, 91, 0.6, 9);
  using op = new SparseLinearI8(qw);
  const back = op.unpack();
  assertEqualInts(back.weight, qw.weight, "int8 weight");
  assertEqualInts(back.scale, qw.scale, "scales");
  assertEqualInts(back.bias!, qw.bias!, "bias");
  if (Math.abs(op.blockSparsity - 0.6) > 0.01) {
    throw new Error(`Block sparsity ${op.blockSparsity}`);
  }
  if (!(op.elementSparsity > op.blockSparsity)) throw new Error("Element sparsity too low");
  // Memory follows the kept blocks: a 90% sparse weight packs far smaller than a dense one.
  using dense = new SparseLinearI8(sparseWeight(64, 512, 0, 10));
  using sparse = new SparseLinearI8(sparseWeight(64, 512, 0.9, 11));
  if (!(sparse.packedBytes < dense.packedBytes / 5)) {
    throw new Error(`Packed ${sparse.packedBytes} vs ${dense.packedBytes} bytes`);
  }
});

Deno.test(`spmm_i8 requantized output is within one step of the reference (${variantLabel()})`, () => {
  const [m, k, n] = [21, 64, 36];
  const qw = sparseWeight(n, k, 0.75, 12);
  const x = randomF32(m * k, 13);
  using op = new SparseLinearI8(qw);
  const out = op.forwardRequantized(x, m, { scale: 0.05, zeroPoint: 60 });
  const ref = refActivations(x, m, k, "per-token");
  const expected = requantizeReference(int8Epilogue(spmmI8Exact(ref, qw), ref, qw), 0.05, 60, 127);
  for (let i = 0; i < expected.length; i++) {
    if (Math.abs(out.data[i] - expected[i]) > 1) {
      throw new Error(`u8 output ${i} is ${out.data[i]}, expected ${expected[i]}`);
    }
  }
  // Chained into another sparse op without an fp32 round trip (rows repacked inside).
  using next = new SparseLinearI8(sparseWeight(8, n, 0.5, 14));
  const y = next.forwardQuantized(out);
  const refNext = { m, k: n, q: out.data, scale: out.scale, zeroPoint: out.zeroPoint };
  const nextWeight = next.unpack();
  assertClose(y, int8Epilogue(spmmI8Exact(refNext, nextWeight), refNext, nextWeight), {
    what: "chained spmm_i8",
  });
});

Deno.test("spmm_i8 rejects bad input with clear errors", () => {
  assertThrows(
    () => new SparseLinearI8({ out: 4, in: 9000, weight: new Float32Array(36000) }),
    /at most 8191 input features, got 9000/,
  );
  using op = new SparseLinearI8(sparseWeight(8, 16, 0.5, 15));
  assertThrows(() => op.forward(new Float32Array(15), 1), /at least 1 x 16 = 16 values/);
  const packed = quantizeActivations(randomF32(32, 16), 2, 16, { layout: "packed" });
  packed.data[2] = 0;
  packed.data[3] = 1; // the high byte of a u16 lane, which must be 0: the lane reads 256
  assertThrows(() => op.forwardExact(packed), /at most \d+ .*found 256/);
  const seven = quantizeActivations(randomF32(32, 16), 2, 16, { layout: "packed", qmax: 127 });
  seven.data[2] = 128;
  assertThrows(() => op.forwardExact(seven), /at most 127 .*found 128/);
  const short = { ...quantizeActivations(randomF32(32, 16), 2, 16, { layout: "packed" }) };
  short.data = short.data.subarray(0, 100);
  assertThrows(() => op.forwardExact(short), /Packed activations need 512 bytes, got 100/);
});

Deno.test(`spmm_i8 forwardThrough gives the two forwards' bits, fused or not (${variantLabel()})`, () => {
  const before = threads();
  try {
    let seed = 300;
    for (const count of [1, 2, 3]) {
      setThreads(count);
      for (const [m, k, n] of [[1, 8, 12], [17, 40, 70], [130, 64, 96]]) {
        const x = randomF32(m * k, seed++, -2, 3);
        const residual = randomF32(m * k, seed++);
        using first = new SparseLinearI8(sparseWeight(n, k, 0.7, seed++), { activation: "gelu" });
        using second = new SparseLinearI8(sparseWeight(k, n, 0.7, seed++));
        using dense = new LinearI8(sparseWeight(k, n, 0.7, seed++));
        using perTensor = new SparseLinearI8(sparseWeight(k, n, 0.7, seed++), {
          activationQuantization: "per-tensor",
        });
        for (const next of [second, dense, perTensor]) {
          const want = next.forward(first.forward(x, m), m, { residual });
          const got = first.forwardThrough(next, x, m, { residual });
          const what =
            `[${m},${k},${n}] ${next.kind} ${next.activationQuantization}, ${count} threads`;
          if (first.stagesInto(next) !== (next === second)) throw new Error(`stagesInto ${what}`);
          assertEqualInts(new Int32Array(got.buffer), new Int32Array(want.buffer), what);
        }
      }
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("spmm_i8 forwardThrough rejects mismatched ops and buffers", () => {
  using first = new SparseLinearI8(sparseWeight(8, 16, 0.5, 1));
  using wrong = new SparseLinearI8(sparseWeight(16, 12, 0.5, 2));
  using second = new SparseLinearI8(sparseWeight(16, 8, 0.5, 3));
  const x = randomF32(3 * 16, 4);
  assertThrows(
    () => first.forwardThrough(wrong, x, 3),
    /next op takes 12 features, this one gives 8/,
  );
  assertThrows(() => first.forwardThrough(second, x.subarray(1), 3), /Input must be/);
  assertThrows(
    () => first.forwardThrough(second, x, 3, { out: new Float32Array(10) }),
    /Output buffer needs 48/,
  );
  const y = new Float32Array(48);
  assertThrows(
    () => first.forwardThrough(second, x, 3, { out: y, residual: y }),
    /must not overlap/,
  );
});

import { throws as assertThrows } from "node:assert/strict";
import type { Activation } from "../ops/linear.ts";
import { LinearI8 } from "../ops/linear_i8.ts";
import {
  int8ActivationQmax,
  quantizeActivations,
  type QuantizedActivations,
  quantizeWeights,
} from "../ops/quantize.ts";
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
  int8Exact,
  int8SaturatingPairs,
  type RefActivations,
  requantizeReference,
} from "./reference/gemm_i8.ts";
import { quantizeOrtReference, quantizeReference } from "./reference/quantize.ts";
import { kernels, VARIANT_NUMERICS } from "../ffi/library.ts";

const ACTIVATIONS: Activation[] = ["none", "gelu", "gelu_tanh"];

/** Reference activations of fp32 input, through the reference quantizer. */
function refActivations(
  x: Float32Array,
  m: number,
  k: number,
  mode: "per-token" | "per-tensor",
): RefActivations {
  return { m, k, ...quantizeReference(x, m, k, mode, int8ActivationQmax()) };
}

Deno.test(`gemm_i8 s32 sums equal the reference exactly on every shape (${variantLabel()})`, () => {
  let seed = 1;
  for (const [m, k, n] of LINEAR_SHAPES) {
    for (const mode of ["per-token", "per-tensor"] as const) {
      const x = randomF32(m * k, seed++, -2, 3);
      const weight = {
        out: n,
        in: k,
        weight: randomF32(n * k, seed++),
        bias: randomF32(n, seed++),
      };
      const qw = quantizeWeights(weight);
      using op = new LinearI8(qw, { activationQuantization: mode });
      const q = op.quantizeInput(x, m);
      const exact = op.forwardExact(q);
      assertEqualInts(
        exact,
        int8Exact(refActivations(x, m, k, mode), qw),
        `s32 [${m},${k},${n}] ${mode}`,
      );
    }
  }
});

Deno.test(`gemm_i8 fp32 epilogue matches the reference (${variantLabel()})`, () => {
  let seed = 500;
  for (const [m, k, n] of LINEAR_SHAPES) {
    for (const activation of ACTIVATIONS) {
      for (const withResidual of [false, true]) {
        const x = randomF32(m * k, seed++);
        const weight = {
          out: n,
          in: k,
          weight: randomF32(n * k, seed++),
          bias: randomF32(n, seed++),
        };
        const qw = quantizeWeights(weight);
        const residual = withResidual ? randomF32(m * n, seed++) : undefined;
        using op = new LinearI8(qw, { activation });
        const y = op.forward(x, m, { residual });
        const ref = refActivations(x, m, k, "per-token");
        const expected = int8Epilogue(int8Exact(ref, qw), ref, qw, { activation, residual });
        assertClose(y, expected, {
          rtol: 1e-5,
          atol: activation === "gelu" ? INT8_GELU_ATOL : 1e-6,
          what: `gemm_i8 [${m},${k}]x[${n},${k}]^T ${activation}${withResidual ? "+res" : ""}`,
        });
      }
    }
  }
});

/** Activations given directly as quantized rows (every value chosen by the test). */
function rowsOf(q: Uint8Array, m: number, k: number, zero: number): QuantizedActivations {
  const stride = Math.ceil(k / 4) * 4;
  const data = new Uint8Array(m * stride);
  for (let t = 0; t < m; t++) data.set(q.subarray(t * k, (t + 1) * k), t * stride);
  return {
    layout: "rows",
    m,
    k,
    stride,
    data,
    scale: new Float32Array(m).fill(0.5),
    zeroPoint: new Int32Array(m).fill(zero),
    qmax: int8ActivationQmax(),
  };
}

Deno.test(`gemm_i8 is exact at the extreme values: weights +-127 and -128, activations 0 and the bound (${variantLabel()})`, () => {
  // All pairs at the int16 limit of vpmaddubsw (2 * 127 * 128 = 32512 per pair) where the bound
  // is 127; u8 x s8 extremes straight into s32 where it is 255 (VNNI). K = 4096.
  const top = int8ActivationQmax();
  const [m, k, n] = [5, 4096, 24];
  const next = rng(3);
  const weight = new Int8Array(n * k);
  for (let c = 0; c < n; c++) {
    for (let i = 0; i < k; i++) {
      const pick = c % 4 === 0
        ? 127
        : c % 4 === 1
        ? -128
        : c % 4 === 2
        ? -127
        : next() < 0.5
        ? 127
        : -128;
      weight[c * k + i] = pick;
    }
  }
  const qw = { out: n, in: k, weight, scale: new Float32Array(n).fill(0.01), bias: null };
  const q = new Uint8Array(m * k);
  for (let t = 0; t < m; t++) {
    for (let i = 0; i < k; i++) q[t * k + i] = t === 0 ? top : t === 1 ? 0 : next() < 0.5 ? top : 0;
  }
  for (const zero of [0, top, 64]) {
    const x = rowsOf(q, m, k, zero);
    using op = new LinearI8(qw);
    assertEqualInts(
      op.forwardExact(x),
      int8Exact({ m, k, q, scale: x.scale, zeroPoint: x.zeroPoint }, qw),
      `extremes, zero point ${zero}`,
    );
  }
});

Deno.test(`gemm_i8 "ort-u8": 8-bit activations give ORT's sums, saturating pairs on AVX2 only (${variantLabel()})`, () => {
  // AVX2's vpmaddubsw saturates each pair of u8 x s8 products to int16, as ONNX Runtime's AVX2
  // U8S8 kernel does; VNNI and the baseline are exact, as ORT's are on those CPUs.
  const saturates = VARIANT_NUMERICS[kernels().isa].int8PairsSaturate;
  const expect = saturates ? int8SaturatingPairs : int8Exact;
  let seed = 1200;
  for (const [m, k, n] of LINEAR_SHAPES) {
    const x = randomF32(m * k, seed++, -2, 3);
    const qw = quantizeWeights({ out: n, in: k, weight: randomF32(n * k, seed++) });
    using op = new LinearI8(qw, { activationQuantization: "ort-u8" });
    const q = op.quantizeInput(x, m);
    const ref = quantizeOrtReference(x);
    const acts = {
      m,
      k,
      q: ref.q,
      scale: new Float32Array(m).fill(ref.scale),
      zeroPoint: new Int32Array(m).fill(ref.zero),
    };
    assertEqualInts(op.forwardExact(q), expect(acts, qw), `ort-u8 s32 [${m},${k},${n}]`);
  }
  // Pairs that do saturate: activations 255 against weights 127 and -128.
  const [m, k, n] = [3, 64, 16];
  const weight = new Int8Array(n * k).map((_, i) => (i % 3 === 0 ? -128 : 127));
  const qw = { out: n, in: k, weight, scale: new Float32Array(n).fill(0.01), bias: null };
  const codes = new Uint8Array(m * k).map((_, i) => (i % 5 === 0 ? 0 : 255));
  const x = { ...rowsOf(codes, m, k, 7), qmax: 255 };
  using op = new LinearI8(qw, { activationQuantization: "ort-u8" });
  const acts = { m, k, q: codes, scale: x.scale, zeroPoint: x.zeroPoint };
  const got = op.forwardExact(x);
  assertEqualInts(got, expect(acts, qw), "ort-u8 saturating extremes");
  const exact = int8Exact(acts, qw);
  if (saturates === got.every((v, i) => v === exact[i])) {
    throw new Error(`Saturation ${saturates ? "expected but absent" : "present but not expected"}`);
  }
  // A 7-bit op refuses 8-bit codes (VNNI's ops take them), and the ORT op refuses other codes.
  using own = new LinearI8(qw);
  if (int8ActivationQmax() === 127) {
    assertThrows(() => own.forwardExact(x), /take activations up to 127, got qmax 255/);
  } else {
    assertEqualInts(own.forwardExact(x), int8Exact(acts, qw), "8-bit codes on VNNI");
  }
  const halved = { ...rowsOf(codes.map((v) => v >> 1), m, k, 7), qmax: 127 };
  assertThrows(() => op.forwardExact(halved), /qmax 255/);
});

Deno.test(`gemm_i8 requantized u8 output is within one step of the reference (${variantLabel()})`, () => {
  const [m, k, n] = [19, 70, 45];
  const x = randomF32(m * k, 77);
  const qw = quantizeWeights({
    out: n,
    in: k,
    weight: randomF32(n * k, 78),
    bias: randomF32(n, 79),
  });
  const residual = randomF32(m * n, 80);
  using op = new LinearI8(qw, { activation: "gelu" });
  const out = op.forwardRequantized(x, m, { scale: 0.02, zeroPoint: 40, residual });
  const ref = refActivations(x, m, k, "per-token");
  const y = int8Epilogue(int8Exact(ref, qw), ref, qw, { activation: "gelu", residual });
  const expected = requantizeReference(y, 0.02, 40, 127);
  let off = 0;
  for (let i = 0; i < expected.length; i++) {
    const d = Math.abs(out.data[i] - expected[i]);
    if (d > 1) throw new Error(`u8 output ${i} is ${out.data[i]}, expected ${expected[i]}`);
    off += d;
  }
  if (off > expected.length / 100) throw new Error(`${off} outputs differ by one step`);
  assertEqualInts([out.m, out.k, out.qmax, out.zeroPoint[0]], [m, n, 127, 40], "output header");
  // The u8 output feeds the next int8 op directly.
  using next = new LinearI8(quantizeWeights({ out: 8, in: n, weight: randomF32(8 * n, 81) }));
  const chained = next.forwardQuantized(out);
  if (chained.length !== m * 8) throw new Error("Chained output has the wrong size");
});

Deno.test("gemm_i8 rejects bad weights, inputs and options with clear errors", () => {
  assertThrows(
    () => new LinearI8({ out: 3, in: 4, weight: new Float32Array(11) }),
    /needs 12 float32 values/,
  );
  assertThrows(
    () =>
      new LinearI8({ out: 2, in: 2, weight: new Int8Array(4), scale: new Float32Array([1, 0]) }),
    /scale 1 must be positive/,
  );
  assertThrows(
    () =>
      new LinearI8({ out: 2, in: 2, weight: new Float32Array(4) }, {
        activationQuantization: "per-row" as "per-token",
      }),
    /Unknown activation quantization "per-row"/,
  );
  using op = new LinearI8({ out: 3, in: 4, weight: randomF32(12, 1) });
  assertThrows(() => op.forward(new Float32Array(7), 2), /at least 2 x 4 = 8 values/);
  assertThrows(() => op.forward(new Float32Array([1, 2, NaN, 4]), 1), /NaN or infinity/);
  const q = quantizeActivations(randomF32(8, 2), 2, 4, { qmax: 127 });
  q.data[1] = 200;
  assertThrows(() => op.forwardExact(q), /at most 127.*found 200/);
  assertThrows(
    () => op.forwardRequantized(randomF32(8, 3), 2, { scale: 0, zeroPoint: 0 }),
    /positive/,
  );
  assertThrows(
    () => op.forwardRequantized(randomF32(8, 3), 2, { scale: 1, zeroPoint: 300, qmax: 255 }),
    /zero point must be an integer in \[0, 255\], got 300/,
  );
  const wide = quantizeActivations(randomF32(10, 2), 2, 5);
  assertThrows(() => op.forwardQuantized(wide), /has 5 features, the op takes 4/);
});

Deno.test("the int8 harness catches a wrong epilogue and a wrong zero point", () => {
  const [m, k, n] = [6, 40, 12];
  const x = randomF32(m * k, 21);
  const qw = quantizeWeights({
    out: n,
    in: k,
    weight: randomF32(n * k, 22),
    bias: randomF32(n, 23),
  });
  using op = new LinearI8(qw);
  const ref = refActivations(x, m, k, "per-token");
  const y = op.forward(x, m);
  assertThrows(() =>
    assertClose(y, int8Epilogue(int8Exact(ref, qw), ref, qw, { activation: "gelu" }))
  );
  const exact = op.forwardExact(op.quantizeInput(x, m));
  const shifted = { ...ref, zeroPoint: ref.zeroPoint.map((z) => z + 1) };
  assertThrows(() => assertEqualInts(exact, int8Exact(shifted, qw)));
});

import * as assert from "node:assert/strict";
import { kernels } from "../ffi/library.ts";
import { CpuFeature } from "../ffi/library.ts";
import { bf16Hardware, LinearBf16 } from "../ops/linear_bf16.ts";
import type { Activation } from "../ops/linear.ts";
import { assertClose, LINEAR_SHAPES, randomF32, variantLabel } from "./harness.ts";
import { linearBf16Reference, roundBf16 } from "./reference/linear_bf16.ts";
import { linearReference } from "./reference/linear_f32.ts";

function randomWeight(n: number, k: number, seed: number) {
  return { out: n, in: k, weight: randomF32(n * k, seed), bias: randomF32(n, seed + 1) };
}

Deno.test(
  `linear_bf16 equals the pairwise reference bit for bit on every shape (${variantLabel()}, ${
    bf16Hardware() ? "vdpbf16ps" : "emulated"
  })`,
  () => {
    let seed = 100;
    for (const [m, k, n] of LINEAR_SHAPES) {
      for (const withResidual of [false, true]) {
        const x = randomF32(m * k, seed++);
        const weight = randomWeight(n, k, seed++);
        seed++;
        const residual = withResidual ? randomF32(m * n, seed++) : undefined;
        using op = new LinearBf16(weight);
        const y = op.forward(x, m, { residual });
        const expected = linearBf16Reference(x, m, weight, { residual });
        for (let i = 0; i < y.length; i++) {
          if (!Object.is(y[i], expected[i])) {
            assert.fail(
              `linear_bf16 [${m},${k}]x[${n},${k}]^T${
                withResidual ? "+res" : ""
              }: element ${i} is ${y[i]}, expected ${expected[i]} (${variantLabel()})`,
            );
          }
        }
      }
    }
  },
);

Deno.test("linear_bf16 fuses the GELUs, and stays within bf16 precision of fp32", () => {
  const [m, k, n] = [19, 96, 40];
  const x = randomF32(m * k, 1);
  const weight = randomWeight(n, k, 2);
  for (const activation of ["gelu", "gelu_tanh"] as Activation[]) {
    using op = new LinearBf16(weight, { activation });
    const y = op.forward(x, m);
    assertClose(y, linearBf16Reference(x, m, weight, { activation }), {
      rtol: 1e-5,
      what: `linear_bf16 ${activation}`,
    });
    // Against fp32: each operand carries 2^-9 relative rounding, so about 2^-8 per product.
    assertClose(y, linearReference(x, m, weight, { activation }), {
      rtol: 2e-2,
      what: `linear_bf16 ${activation} vs fp32`,
    });
  }
});

Deno.test("the bf16 reference catches a kernel that skipped the rounding or the pair order", () => {
  const [m, k, n] = [3, 9, 5];
  const x = randomF32(m * k, 7);
  const weight = randomWeight(n, k, 8);
  const exact = linearBf16Reference(x, m, weight);
  const unrounded = Float32Array.from(linearReference(x, m, weight));
  assert.ok(exact.some((v, i) => v !== unrounded[i]), "fp32 results must differ from bf16's");
  assert.equal(roundBf16(1.00390625), 1, "a tie rounds to even");
  assert.equal(roundBf16(1.01171875), 1.015625, "above the tie rounds up");
  assert.ok(Object.is(roundBf16(-1e-40), -0), "a subnormal flushes to a signed zero");
});

Deno.test("linear_bf16 says whether it runs vdpbf16ps: only the AVX-512 kernels on an AVX512_BF16 CPU", () => {
  const lib = kernels();
  const cpuHas = (Number(lib.symbols.sb_cpu_features()) & CpuFeature.avx512bf16) !== 0;
  assert.equal(bf16Hardware(), cpuHas && lib.isa === "avx512vnni");
});

Deno.test("linear_bf16 packs to half the fp32 bytes and rejects bad shapes", () => {
  using op = new LinearBf16(randomWeight(64, 768, 3));
  // 64 columns x 384 pairs of 4 bytes, plus the fp32 bias.
  assert.equal(op.packedBytes, 64 * 384 * 4 + 64 * 4);
  assert.throws(
    () => new LinearBf16({ out: 3, in: 4, weight: new Float32Array(11) }),
    /needs 12 float32 values, got Float32Array\(11\)/,
  );
  assert.throws(() => op.forward(new Float32Array(700), 1), /at least 1 x 768/);
  const disposed = new LinearBf16({ out: 2, in: 2, weight: new Float32Array(4) });
  disposed[Symbol.dispose]();
  assert.throws(() => disposed.forward(new Float32Array(2), 1), /after it was disposed/);
});

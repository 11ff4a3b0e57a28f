import { throws as assertThrows } from "node:assert/strict";
import { LinearF32 } from "../ops/linear_f32.ts";
import type { Activation } from "../ops/linear.ts";
import { assertClose, LINEAR_SHAPES, randomF32, variantLabel } from "./harness.ts";
import { linearReference } from "./reference/linear_f32.ts";

const ACTIVATIONS: Activation[] = ["none", "gelu", "gelu_tanh"];

Deno.test(`linear_f32 matches the reference on every shape and epilogue (${variantLabel()})`, () => {
  let seed = 1;
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
        const residual = withResidual ? randomF32(m * n, seed++) : undefined;
        using op = new LinearF32(weight, { activation });
        const y = op.forward(x, m, { residual });
        assertClose(y, linearReference(x, m, weight, { activation, residual }), {
          rtol: 1e-5,
          what: `linear_f32 [${m},${k}]x[${n},${k}]^T ${activation}${withResidual ? "+res" : ""}`,
        });
      }
    }
  }
});

Deno.test("linear_f32 without bias, and into a caller's buffer at an offset", () => {
  const [m, k, n] = [9, 40, 21];
  const x = randomF32(m * k, 7);
  const weight = { out: n, in: k, weight: randomF32(n * k, 8) };
  using op = new LinearF32(weight);
  const big = new Float32Array(m * n + 5);
  const out = big.subarray(5);
  op.forward(x, m, { out });
  assertClose(out, linearReference(x, m, weight), { what: "no-bias linear" });
});

Deno.test("the harness catches a wrong epilogue (deliberately broken kernel output)", () => {
  const [m, k, n] = [7, 33, 19];
  const x = randomF32(m * k, 11);
  const weight = { out: n, in: k, weight: randomF32(n * k, 12), bias: randomF32(n, 13) };
  using op = new LinearF32(weight, { activation: "none" });
  const y = op.forward(x, m);
  // The kernel ran without GELU; comparing against a GELU reference must fail.
  assertThrows(
    () => assertClose(y, linearReference(x, m, weight, { activation: "gelu" }), { rtol: 1e-5 }),
    /linear|output/,
  );
  // Missing bias must fail too.
  assertThrows(() => assertClose(y, linearReference(x, m, { ...weight, bias: null })));
  // A single flipped element must fail.
  const broken = Float32Array.from(y);
  broken[n + 3] += 1e-3;
  assertThrows(() => assertClose(broken, linearReference(x, m, weight)));
});

Deno.test("linear_f32 rejects bad shapes with clear errors", () => {
  assertThrows(
    () => new LinearF32({ out: 3, in: 4, weight: new Float32Array(11) }),
    /needs 12 float32 values, got Float32Array\(11\)/,
  );
  assertThrows(
    () => new LinearF32({ out: 3, in: 4, weight: new Float32Array(12), bias: new Float32Array(2) }),
    /bias needs 3 float32 values/,
  );
  using op = new LinearF32({ out: 3, in: 4, weight: new Float32Array(12) });
  assertThrows(() => op.forward(new Float32Array(7), 2), /at least 2 x 4 = 8 values/);
  assertThrows(() => op.forward(new Float32Array(8), 0), /positive integer/);
  const shared = new Float32Array(20);
  assertThrows(
    () => op.forward(shared.subarray(0, 8), 2, { out: shared.subarray(4, 10) }),
    /must not overlap/,
  );
  assertThrows(() =>
    new LinearF32({ out: 3, in: 4, weight: new Float32Array(12) }, {
      activation: "relu" as Activation,
    }), /Unknown activation "relu"/);
});

Deno.test("linear_f32 used after dispose throws instead of touching freed memory", () => {
  const op = new LinearF32({ out: 2, in: 2, weight: new Float32Array(4) });
  op[Symbol.dispose]();
  assertThrows(() => op.forward(new Float32Array(2), 1), /after it was disposed/);
});

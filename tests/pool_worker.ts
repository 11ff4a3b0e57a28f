/// <reference lib="deno.worker" />
// Helper for pool_test.ts: runs many linear calls in a Deno Worker and checks each result.
import { LinearF32 } from "../ops/linear_f32.ts";
import { assertClose, randomF32 } from "./harness.ts";
import { linearReference } from "./reference/linear_f32.ts";

self.onmessage = (event: MessageEvent<{ seed: number; calls: number }>) => {
  const { seed, calls } = event.data;
  try {
    const [m, k, n] = [24, 96, 72];
    const x = randomF32(m * k, seed);
    const weight = {
      out: n,
      in: k,
      weight: randomF32(n * k, seed + 1),
      bias: randomF32(n, seed + 2),
    };
    const expected = linearReference(x, m, weight, { activation: "gelu" });
    using op = new LinearF32(weight, { activation: "gelu" });
    const y = new Float32Array(m * n);
    for (let i = 0; i < calls; i++) {
      y.fill(NaN);
      op.forward(x, m, { out: y });
      assertClose(y, expected, { what: `worker call ${i}` });
    }
    self.postMessage({ ok: true, calls });
  } catch (error) {
    self.postMessage({ ok: false, error: (error as Error).message, calls: 0 });
  }
};

import { equal } from "node:assert/strict";
import { kernels, setThreads, threads } from "../ffi/library.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import { assertClose, randomF32, variantLabel } from "./harness.ts";
import { linearReference } from "./reference/linear_f32.ts";

Deno.test(`worker pool: thread counts 1..4 give the same result (${variantLabel()})`, () => {
  const [m, k, n] = [33, 70, 90];
  const x = randomF32(m * k, 21);
  const weight = { out: n, in: k, weight: randomF32(n * k, 22), bias: randomF32(n, 23) };
  const expected = linearReference(x, m, weight, { activation: "gelu" });
  const before = threads();
  try {
    for (const count of [1, 2, 3, 4]) {
      equal(setThreads(count), count);
      using op = new LinearF32(weight, { activation: "gelu" });
      assertClose(op.forward(x, m), expected, { what: `linear with ${count} threads` });
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("worker pool: concurrent calls from several Deno Workers are safe", async () => {
  kernels();
  const workerUrl = new URL("./pool_worker.ts", import.meta.url);
  const workers = [0, 1, 2].map(() => new Worker(workerUrl, { type: "module" }));
  try {
    const replies = await Promise.all(
      workers.map((worker, index) =>
        new Promise<{ ok: boolean; error?: string; calls: number }>((resolve, reject) => {
          worker.onmessage = (event) => resolve(event.data);
          worker.onerror = (event) => {
            event.preventDefault();
            reject(new Error(event.message));
          };
          worker.postMessage({ seed: 100 + index, calls: 40 });
        })
      ),
    );
    // The main isolate calls too while the workers run.
    const x = randomF32(16 * 48, 5);
    const weight = { out: 40, in: 48, weight: randomF32(40 * 48, 6), bias: randomF32(40, 7) };
    using op = new LinearF32(weight);
    assertClose(op.forward(x, 16), linearReference(x, 16, weight), { what: "main isolate" });
    for (const reply of replies) {
      equal(reply.error, undefined);
      equal(reply.ok, true);
      equal(reply.calls, 40);
    }
  } finally {
    for (const worker of workers) worker.terminate();
  }
});

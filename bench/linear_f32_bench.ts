/**
 * `deno bench` for the dense fp32 linear at BERT shapes, ours vs ONNX Runtime's MatMul in the
 * same group (Deno prints the ratio). GFLOP/s and the fraction of the fp32 peak are printed by
 * `deno task bench:gemm`, which runs the same pairs interleaved with an in-run peak probe.
 *
 *   deno bench -A bench/linear_f32_bench.ts
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { setThreads } from "../ffi/library.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import { loadOrtSession, matMulModel } from "./peers/ort_node.ts";
import { transpose2d } from "../encoder/weights.ts";

const THREADS = Number(Deno.env.get("SPARSEBERT_THREADS") ?? 2);
setThreads(THREADS);

const SHAPES: [number, number, number][] = [];
for (const m of [128, 384]) {
  for (const [k, n] of [[768, 768], [768, 3072], [3072, 768], [1024, 4096], [4096, 1024]]) {
    SHAPES.push([m, k, n]);
  }
}

function filled(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sin(i * 12.9898 + seed) * 0.1;
  return out;
}

for (const [m, k, n] of SHAPES) {
  const group = `linear_f32 M=${m} K=${k} N=${n} (${THREADS} threads)`;
  const weight = filled(n * k, 1);
  const x = filled(m * k, 2);
  const ours = new LinearF32({ out: n, in: k, weight });
  const y = new Float32Array(m * n);
  const model = matMulModel({ m: null, k, n, weights: transpose2d(weight, n, k) });
  const session = await loadOrtSession(model, { threads: THREADS });
  const feeds = { X: new ort.Tensor("float32", x, [m, k]) };
  Deno.bench(`ours ${m}x${k}x${n}`, { group, baseline: true }, () => {
    ours.forward(x, m, { out: y });
  });
  Deno.bench(`ort ${m}x${k}x${n}`, { group }, async () => {
    await session.run(feeds);
  });
}

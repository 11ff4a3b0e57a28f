/**
 * `deno bench` for whole encoders: ours vs ONNX Runtime fp32 on the same ONNX file, MiniLM
 * (all-MiniLM-L6-v2) and a generated BERT-Base, sequence 128, batch 1 and 8, 2 threads
 * (`SPARSEBERT_THREADS`). `deno task bench:encoder` runs the same pairs interleaved with
 * medians, GFLOP/s and the fraction of the fp32 peak.
 *
 *   deno bench -A bench/encoder_bench.ts
 *
 * @module
 */
import { setThreads } from "../ffi/library.ts";
import { benchModelPath, ENCODER_BENCH_MODELS, encoderPair } from "./_encoder_setup.ts";

const THREADS = Number(Deno.env.get("SPARSEBERT_THREADS") ?? 2);
setThreads(THREADS);
const SEQ = 128;

for (const model of ENCODER_BENCH_MODELS) {
  const path = await benchModelPath(model);
  for (const batch of [1, 8]) {
    const pair = await encoderPair(path, { batch, seq: SEQ, threads: THREADS });
    const group = `${model} seq ${SEQ} batch ${batch} (${THREADS} threads)`;
    Deno.bench(`ours ${model} b${batch}`, { group, baseline: true }, () => pair.ours());
    Deno.bench(`ort ${model} b${batch}`, { group }, async () => {
      await pair.ort();
    });
  }
}

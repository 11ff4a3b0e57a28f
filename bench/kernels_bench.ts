/**
 * `deno bench` for the sparse and int8 kernels at M = 128, K x N = 768 x 3072: the sparse int8
 * kernel at 70% and 90% block sparsity against dense int8, dense fp32 and ONNX Runtime
 * (MatMulInteger, fp32 MatMul), one group per comparison so Deno prints the ratios. The full
 * table with GOP/s and the fraction of the int8 peak is `deno task bench:kernels`.
 *
 *   deno bench -A bench/kernels_bench.ts
 *
 * @module
 */
import { setThreads } from "../ffi/library.ts";
import { setupShape } from "./_kernels_setup.ts";

const THREADS = Number(Deno.env.get("SPARSEBERT_THREADS") ?? 2);
setThreads(THREADS);

const [m, k, n] = [128, 768, 3072];
const setup = await setupShape({ m, k, n, threads: THREADS, sparsities: [0.7, 0.9] });
const byName = new Map(setup.contenders.map((c) => [c.name, c.run]));

function bench(group: string, name: string, baseline = false): void {
  const run = byName.get(name);
  if (run === undefined) throw new Error(`No contender "${name}"`);
  Deno.bench(name, { group, baseline }, async () => {
    await run();
  });
}

const shape = `M=${m} K=${k} N=${n}, ${THREADS} threads`;
// Kernels from quantized u8 activations.
bench(`int8 kernels ${shape}`, "ort_matmul_integer", true);
bench(`int8 kernels ${shape}`, "gemm_i8_kernel");
bench(`int8 kernels ${shape}`, "spmm_i8_kernel@0.7");
bench(`int8 kernels ${shape}`, "spmm_i8_kernel@0.9");
// Whole ops, fp32 in and out.
bench(`fp32 in/out ${shape}`, "ort_matmul_f32", true);
bench(`fp32 in/out ${shape}`, "linear_f32");
bench(`fp32 in/out ${shape}`, "gemm_i8_op");
bench(`fp32 in/out ${shape}`, "spmm_i8_op@0.7");
bench(`fp32 in/out ${shape}`, "spmm_i8_op@0.9");
bench(`fp32 in/out ${shape}`, "spmm_f32@0.9");

/**
 * Contenders of the sparse/int8 kernel benchmark for one shape: our sparse int8 (kernel and
 * whole op), sparse fp32, dense int8, dense fp32, and ONNX Runtime's MatMulInteger and fp32
 * MatMul as one-op models on the same threads. Shared by `bench/kernels_bench.ts` and
 * `bench/kernels.ts`.
 *
 * What each timing covers:
 *   - `*_kernel`: the int8 kernel from already quantized u8 activations to fp32 output
 *     (ORT MatMulInteger likewise starts from u8 and writes s32);
 *   - `*_op` and the fp32 contenders: fp32 in, fp32 out, quantization included.
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { kernels } from "../ffi/library.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import { LinearI8 } from "../ops/linear_i8.ts";
import { quantizeActivations, quantizeWeights } from "../ops/quantize.ts";
import { SparseLinearF32 } from "../ops/sparse_linear_f32.ts";
import { SparseLinearI8 } from "../ops/sparse_linear_i8.ts";
import { mulberry32 } from "../ops/random.ts";
import { randomBlockSparse } from "../ops/sparsity.ts";
import { loadOrtSession, matMulIntegerModel, matMulModel } from "./peers/ort_node.ts";
import { type Contender, probeBest } from "./_timing.ts";

/** Block sparsities of the full benchmark. */
export const SPARSITIES: readonly number[] = [0, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95];
/** BERT linear shapes [K (in), N (out)]. */
export const SHAPES: readonly [number, number][] = [
  [768, 768],
  [768, 3072],
  [3072, 768],
  [1024, 4096],
  [4096, 1024],
];

/** Everything timed for one (M, K, N). */
export interface ShapeSetup {
  m: number;
  k: number;
  n: number;
  /** Contenders, named `spmm_i8_kernel@0.9`, `gemm_i8_kernel`, `ort_matmul_integer`, ... */
  contenders: Contender[];
  /** Multiply-accumulates actually needed per contender name (kept 4x1 blocks only). */
  macs: Map<string, number>;
  /** Frees native memory and ORT sessions. */
  release(): Promise<void>;
}

/** Options of {@linkcode setupShape}. */
export interface SetupOptions {
  m: number;
  k: number;
  n: number;
  threads: number;
  sparsities: readonly number[];
  /** Skip the ONNX Runtime contenders. */
  noOrt?: boolean;
  /** Skip the sparse fp32 contenders. */
  noSparseF32?: boolean;
}

function gaussianish(n: number, seed: number): Float32Array {
  const next = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (next() + next() + next() - 1.5) * 0.8;
  return out;
}

function transpose(w: Float32Array, n: number, k: number): Float32Array {
  const t = new Float32Array(k * n);
  for (let c = 0; c < n; c++) for (let i = 0; i < k; i++) t[i * n + c] = w[c * k + i];
  return t;
}

/** Builds the contenders of one shape (weights packed, sessions loaded, inputs quantized). */
export async function setupShape(options: SetupOptions): Promise<ShapeSetup> {
  const { m, k, n, threads, sparsities } = options;
  const x = gaussianish(m * k, 7);
  const bias = gaussianish(n, 8);
  const dense = randomBlockSparse({ out: n, in: k, sparsity: 0, seed: 9 });
  const disposables: Disposable[] = [];
  const contenders: Contender[] = [];
  const macs = new Map<string, number>();
  const yF32 = new Float32Array(m * n);

  const f32 = new LinearF32({ out: n, in: k, weight: dense, bias });
  disposables.push(f32);
  contenders.push({ name: "linear_f32", run: () => f32.forward(x, m, { out: yF32 }) });
  macs.set("linear_f32", m * k * n);

  const denseI8 = new LinearI8(quantizeWeights({ out: n, in: k, weight: dense, bias }));
  disposables.push(denseI8);
  const rows = quantizeActivations(x, m, k);
  contenders.push({
    name: "gemm_i8_kernel",
    run: () => denseI8.forwardQuantized(rows, { out: yF32 }),
  });
  contenders.push({ name: "gemm_i8_op", run: () => denseI8.forward(x, m, { out: yF32 }) });
  macs.set("gemm_i8_kernel", m * k * n);
  macs.set("gemm_i8_op", m * k * n);

  const packed = quantizeActivations(x, m, k, { layout: "packed" });
  for (const sparsity of sparsities) {
    const weight = randomBlockSparse({
      out: n,
      in: k,
      sparsity,
      seed: 10 + Math.round(100 * sparsity),
    });
    const sparse = new SparseLinearI8(quantizeWeights({ out: n, in: k, weight, bias }));
    disposables.push(sparse);
    const needed = Math.round((1 - sparse.blockSparsity) * Math.ceil(n / 4) * k) * 4 * m;
    const kernelName = `spmm_i8_kernel@${sparsity}`;
    const opName = `spmm_i8_op@${sparsity}`;
    contenders.push({
      name: kernelName,
      run: () => sparse.forwardQuantized(packed, { out: yF32 }),
    });
    contenders.push({ name: opName, run: () => sparse.forward(x, m, { out: yF32 }) });
    macs.set(kernelName, needed);
    macs.set(opName, needed);
    if (!options.noSparseF32) {
      const sparseF32 = new SparseLinearF32({ out: n, in: k, weight, bias });
      disposables.push(sparseF32);
      const name = `spmm_f32@${sparsity}`;
      contenders.push({ name, run: () => sparseF32.forward(x, m, { out: yF32 }) });
      macs.set(name, sparseF32.nonZeros * m);
    }
  }

  const sessions: ort.InferenceSession[] = [];
  if (!options.noOrt) {
    const q = quantizeWeights({ out: n, in: k, weight: dense });
    const wI8 = new Int8Array(k * n);
    for (let c = 0; c < n; c++) for (let i = 0; i < k; i++) wI8[i * n + c] = q.weight[c * k + i];
    const integer = await loadOrtSession(
      matMulIntegerModel({ m: null, k, n, weights: wI8, xZeroPoint: 64 }),
      { threads },
    );
    const u8 = new Uint8Array(m * k);
    for (let t = 0; t < m; t++) {
      u8.set(rows.data.subarray(t * rows.stride, t * rows.stride + k), t * k);
    }
    const integerFeeds = { X: new ort.Tensor("uint8", u8, [m, k]) };
    contenders.push({ name: "ort_matmul_integer", run: () => integer.run(integerFeeds) });
    macs.set("ort_matmul_integer", m * k * n);
    const matmul = await loadOrtSession(
      matMulModel({ m: null, k, n, weights: transpose(dense, n, k) }),
      { threads },
    );
    const feeds = { X: new ort.Tensor("float32", x, [m, k]) };
    contenders.push({ name: "ort_matmul_f32", run: () => matmul.run(feeds) });
    macs.set("ort_matmul_f32", m * k * n);
    sessions.push(integer, matmul);
  }

  return {
    m,
    k,
    n,
    contenders,
    macs,
    async release() {
      for (const d of disposables) d[Symbol.dispose]();
      for (const s of sessions) await s.release();
    },
  };
}

/** The int8 peak (GOP/s) of the current thread count (`probeBest`). */
export function probePeakI8(): number {
  const lib = kernels().symbols;
  return probeBest(
    () => lib.sb_probe_peak_i8(1_000_000n),
    () => Number(lib.sb_probe_peak_i8(4_000_000n)),
  );
}

/**
 * onnxruntime-node as an in-process peer: session loading with the thread settings every
 * comparison uses, a timing loop, the BERT inputs the Python peers use, and one-op ONNX models
 * (fp32 `MatMul`, `MatMulInteger`) for the kernel benchmarks.
 *
 * ```ts
 * import { bertFeeds, loadOrtSession, timeOrtRuns } from "./bench/peers/ort_node.ts";
 * const session = await loadOrtSession(".cache/test-models/bert-mini.onnx", { threads: 2 });
 * const feeds = bertFeeds(session, { batch: 1, seq: 128, seed: 1 });
 * const stats = await timeOrtRuns(session, feeds, { iterations: 20, warmup: 3 });
 * console.log(stats.medianMs, stats.p90Ms);
 * await session.release();
 * ```
 *
 * @module
 */

import * as ort from "onnxruntime-node";
import { lcg32 } from "../../ops/random.ts";
import { rawTensor } from "../../formats/onnx_tensors.ts";
import { DataType, type OnnxTensor } from "../../formats/onnx_types.ts";
import { encodeOnnxModel, type OnnxModelInit } from "../../formats/onnx_write.ts";

/** Settings of {@linkcode loadOrtSession}. */
export interface OrtSessionOptions {
  /** `intraOpNumThreads`: threads inside one operator (the thread count of a comparison). */
  threads: number;
  /** Graph optimization level (default `"all"`, as the Python peer uses). */
  graphOptimizationLevel?: "disabled" | "basic" | "extended" | "all";
}

/**
 * Loads an ONNX model (path or bytes) into onnxruntime-node with the comparison settings:
 * `intraOpNumThreads = threads`, `interOpNumThreads: 1`, `executionMode: "sequential"`,
 * `graphOptimizationLevel: "all"`, CPU provider only. Call `release()` on the result.
 */
export async function loadOrtSession(
  model: string | Uint8Array,
  options: OrtSessionOptions,
): Promise<ort.InferenceSession> {
  const { threads, graphOptimizationLevel = "all" } = options;
  if (!Number.isInteger(threads) || threads < 1 || threads > 256) {
    throw new RangeError(`Thread count must be an integer in [1, 256], got '${threads}'`);
  }
  const sessionOptions: ort.InferenceSession.SessionOptions = {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: "sequential",
    graphOptimizationLevel,
    executionProviders: ["cpu"],
  };
  try {
    return typeof model === "string"
      ? await ort.InferenceSession.create(model, sessionOptions)
      : await ort.InferenceSession.create(model, sessionOptions);
  } catch (err) {
    const label = typeof model === "string" ? `'${model}'` : `of ${model.byteLength} bytes`;
    throw new Error(`onnxruntime-node cannot load the model ${label}`, { cause: err });
  }
}

/** Latency statistics of a timed loop. */
export interface LatencyStats {
  /** Per-iteration latencies in milliseconds, in run order. */
  latenciesMs: number[];
  /** Median (linear interpolation between order statistics, as numpy's default). */
  medianMs: number;
  /** 90th percentile. */
  p90Ms: number;
  /** 99th percentile. */
  p99Ms: number;
  /** Mean. */
  meanMs: number;
  /** Fastest iteration. */
  minMs: number;
  /** Slowest iteration. */
  maxMs: number;
  /** `itemsPerRun * iterations / sum(latencies)`. */
  itemsPerS: number;
}

/** Percentile `q` in [0, 100] of sorted values, numpy's default (linear) definition. */
function percentile(sorted: number[], q: number): number {
  const pos = (sorted.length - 1) * (q / 100);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, sorted.length - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * Summarizes latencies with the same percentile definition as bench/peers/peer_runner.py
 * (numpy `percentile`, linear interpolation), so that all runtimes are reported alike.
 */
export function latencyStats(latenciesMs: number[], itemsPerRun = 1): LatencyStats {
  if (latenciesMs.length === 0) throw new RangeError("Latency list is empty");
  for (const x of latenciesMs) {
    if (!Number.isFinite(x) || x < 0) throw new RangeError(`Latency '${x}' is not a duration`);
  }
  const sorted = [...latenciesMs].sort((a, b) => a - b);
  const total = latenciesMs.reduce((a, b) => a + b, 0);
  return {
    latenciesMs: [...latenciesMs],
    medianMs: percentile(sorted, 50),
    p90Ms: percentile(sorted, 90),
    p99Ms: percentile(sorted, 99),
    meanMs: total / latenciesMs.length,
    minMs: sorted[0],
    maxMs: sorted[sorted.length - 1],
    itemsPerS: total > 0 ? (itemsPerRun * latenciesMs.length * 1000) / total : 0,
  };
}

/** Settings of {@linkcode timeOrtRuns}. */
export interface TimeRunsOptions {
  /** Timed iterations (1..1e6). */
  iterations: number;
  /** Untimed iterations first (default 3). */
  warmup?: number;
  /** Items one run processes, for `itemsPerS` (default: the batch, dim 0 of the first feed). */
  itemsPerRun?: number;
}

/** Result of {@linkcode timeOrtRuns}: the statistics and the last run's outputs. */
export interface TimedRuns extends LatencyStats {
  /** Outputs of the last iteration. */
  outputs: ort.InferenceSession.OnnxValueMapType;
}

/** Runs `session` on `feeds` `warmup + iterations` times and returns the timed latencies. */
export async function timeOrtRuns(
  session: ort.InferenceSession,
  feeds: Record<string, ort.Tensor>,
  options: TimeRunsOptions,
): Promise<TimedRuns> {
  const { iterations, warmup = 3 } = options;
  if (!Number.isInteger(iterations) || iterations < 1 || iterations > 1_000_000) {
    throw new RangeError(`Iterations must be an integer in [1, 1000000], got '${iterations}'`);
  }
  if (!Number.isInteger(warmup) || warmup < 0 || warmup > 10_000) {
    throw new RangeError(`Warmup must be an integer in [0, 10000], got '${warmup}'`);
  }
  const first = Object.values(feeds)[0];
  const itemsPerRun = options.itemsPerRun ?? (first?.dims.length ? first.dims[0] : 1);
  let outputs = {} as ort.InferenceSession.OnnxValueMapType;
  for (let i = 0; i < warmup; i++) outputs = await session.run(feeds);
  const latencies: number[] = new Array(iterations);
  for (let i = 0; i < iterations; i++) {
    const t0 = performance.now();
    outputs = await session.run(feeds);
    latencies[i] = performance.now() - t0;
  }
  return { ...latencyStats(latencies, itemsPerRun), outputs };
}

/**
 * Token ids in [1000, 2000) for a [batch, seq] input, row-major, from the 32-bit LCG that
 * bench/peers/peer_runner.py uses (`state = state * 1664525 + 1013904223 mod 2^32`,
 * `id = 1000 + (state >>> 16) % 1000`, state starting at `seed`), so that every runtime sees the
 * same tokens.
 */
export function bertInputIds(batch: number, seq: number, seed: number): BigInt64Array {
  for (const [name, v] of [["Batch", batch], ["Sequence length", seq]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 1 << 20) {
      throw new RangeError(`${name} must be an integer in [1, 1048576], got '${v}'`);
    }
  }
  if (!Number.isInteger(seed) || seed < 0) {
    throw new RangeError(`Seed must be a non-negative integer, got '${seed}'`);
  }
  const out = new BigInt64Array(batch * seq);
  const next = lcg32(seed);
  for (let i = 0; i < out.length; i++) out[i] = BigInt(1000 + ((next() >>> 16) % 1000));
  return out;
}

/** Shape and seed of {@linkcode bertFeeds}. */
export interface BertFeedOptions {
  /** Batch size. */
  batch: number;
  /** Sequence length. */
  seq: number;
  /** Token id seed (default 1, as peer_runner.py). */
  seed?: number;
}

/**
 * The feeds a BERT-family session needs: `input_ids` from {@linkcode bertInputIds}, an all-ones
 * `attention_mask`, all-zero `token_type_ids`, in each input's declared int64/int32 type. Fails
 * on any other input name.
 */
export function bertFeeds(
  session: ort.InferenceSession,
  options: BertFeedOptions,
): Record<string, ort.Tensor> {
  const { batch, seq, seed = 1 } = options;
  const ids = bertInputIds(batch, seq, seed);
  const dims = [batch, seq];
  const feeds: Record<string, ort.Tensor> = {};
  for (const meta of session.inputMetadata) {
    let values: BigInt64Array;
    if (meta.name === "input_ids") values = ids;
    else if (meta.name === "attention_mask") values = new BigInt64Array(ids.length).fill(1n);
    else if (meta.name === "token_type_ids") values = new BigInt64Array(ids.length);
    else {
      throw new Error(
        `Model input '${meta.name}' is not one of input_ids, attention_mask, token_type_ids`,
      );
    }
    const type = meta.isTensor ? meta.type : "int64";
    if (type === "int64") feeds[meta.name] = new ort.Tensor("int64", values, dims);
    else if (type === "int32") {
      feeds[meta.name] = new ort.Tensor("int32", Int32Array.from(values, Number), dims);
    } else {
      throw new Error(`Model input '${meta.name}' has type '${type}', expected int64 or int32`);
    }
  }
  return feeds;
}

// ---------------------------------------------------------------------------------------------
// One-op models for the kernel benchmarks

function checkDims(m: number | null, k: number, n: number): void {
  for (const [name, v] of [["K", k], ["N", n], ["M", m ?? 1]] as const) {
    if (!Number.isInteger(v) || v < 1 || v > 1 << 16) {
      throw new RangeError(`Dimension ${name} must be an integer in [1, 65536], got '${v}'`);
    }
  }
}

function oneOpModel(
  node: { opType: string; inputs: string[] },
  inputs: { name: string; elemType: number; shape: (number | string)[] }[],
  output: { elemType: number; shape: (number | string)[] },
  initializers: OnnxTensor[],
): Uint8Array {
  const model: OnnxModelInit = {
    irVersion: 8,
    opsetImport: [{ domain: "", version: 13 }],
    producerName: "sparsebert-bench",
    producerVersion: "",
    domain: "",
    modelVersion: 0,
    metadata: {},
    graph: {
      name: `one_op_${node.opType}`,
      nodes: [{
        name: node.opType,
        opType: node.opType,
        domain: "",
        inputs: node.inputs,
        outputs: ["Y"],
        attributes: [],
      }],
      initializers,
      inputs: inputs.map((i) => ({ name: i.name, elemType: i.elemType, shape: i.shape })),
      outputs: [{ name: "Y", elemType: output.elemType, shape: output.shape }],
      valueInfo: [],
    },
  };
  return encodeOnnxModel(model);
}

/** Shape and weights of {@linkcode matMulModel}. */
export interface MatMulModelOptions {
  /** Rows of X (tokens); `null` makes the row count a symbolic dimension `M`. */
  m: number | null;
  /** Inner dimension. */
  k: number;
  /** Output columns. */
  n: number;
  /** W, row-major [K, N]. */
  weights: Float32Array;
}

/**
 * An fp32 one-op model `Y[M,N] = X[M,K] · W[K,N]` with X the graph input and W an initializer.
 * Returns the encoded ONNX bytes (load them with {@linkcode loadOrtSession}).
 */
export function matMulModel(options: MatMulModelOptions): Uint8Array {
  const { m, k, n, weights } = options;
  checkDims(m, k, n);
  if (weights.length !== k * n) {
    throw new RangeError(`Weights hold ${weights.length} values, expected K*N = ${k * n}`);
  }
  const rows = m ?? "M";
  const w = new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength).slice();
  return oneOpModel(
    { opType: "MatMul", inputs: ["X", "W"] },
    [{ name: "X", elemType: DataType.FLOAT, shape: [rows, k] }],
    { elemType: DataType.FLOAT, shape: [rows, n] },
    [rawTensor("W", DataType.FLOAT, [k, n], w)],
  );
}

/** Shape, weights and zero-point of {@linkcode matMulIntegerModel}. */
export interface MatMulIntegerModelOptions {
  /** Rows of X (tokens); `null` makes the row count a symbolic dimension `M`. */
  m: number | null;
  /** Inner dimension. */
  k: number;
  /** Output columns. */
  n: number;
  /** W (s8), row-major [K, N]; symmetric (no weight zero-point). */
  weights: Int8Array;
  /** Zero-point of the u8 activations X, in [0, 255]. */
  xZeroPoint: number;
}

/**
 * An int8 one-op model `Y[M,N] (s32) = (X[M,K] (u8) - xZeroPoint) · W[K,N] (s8)` as ONNX
 * `MatMulInteger`, the form ORT's dynamic quantization emits: X the graph input, W and the u8
 * zero-point initializers, no weight zero-point. Returns the encoded ONNX bytes.
 */
export function matMulIntegerModel(options: MatMulIntegerModelOptions): Uint8Array {
  const { m, k, n, weights, xZeroPoint } = options;
  checkDims(m, k, n);
  if (weights.length !== k * n) {
    throw new RangeError(`Weights hold ${weights.length} values, expected K*N = ${k * n}`);
  }
  if (!Number.isInteger(xZeroPoint) || xZeroPoint < 0 || xZeroPoint > 255) {
    throw new RangeError(`Zero-point must be an integer in [0, 255], got '${xZeroPoint}'`);
  }
  const rows = m ?? "M";
  const w = new Uint8Array(weights.buffer, weights.byteOffset, weights.byteLength).slice();
  return oneOpModel(
    { opType: "MatMulInteger", inputs: ["X", "W", "x_zero_point"] },
    [{ name: "X", elemType: DataType.UINT8, shape: [rows, k] }],
    { elemType: DataType.INT32, shape: [rows, n] },
    [
      rawTensor("W", DataType.INT8, [k, n], w),
      rawTensor("x_zero_point", DataType.UINT8, [], Uint8Array.of(xZeroPoint)),
    ],
  );
}

/**
 * One-op ONNX Runtime sessions for kernel benchmarks, built in memory with the project's own
 * ONNX encoder (`models/onnx_proto.ts`).
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { DataType, encodeOnnxModel, makeTensor } from "../models/onnx_proto.ts";
import { transpose2d } from "../models/weights.ts";

/** Session options matching ours: `threads` intra-op, sequential, full graph optimisation. */
export function ortSessionOptions(threads: number): ort.InferenceSession.SessionOptions {
  return {
    intraOpNumThreads: threads,
    interOpNumThreads: 1,
    executionMode: "sequential",
    graphOptimizationLevel: "all",
  };
}

/**
 * An ORT session computing `y = x @ W^T` for input `x` [M, K] (dynamic M) and a torch-layout
 * weight `[n, k]`, stored as the MatMul initializer `[k, n]` as Hugging Face exports do.
 */
export async function ortMatMulSession(
  weight: Float32Array,
  n: number,
  k: number,
  threads: number,
): Promise<ort.InferenceSession> {
  const bytes = encodeOnnxModel({
    irVersion: 8,
    opsetImport: [{ domain: "", version: 14 }],
    producerName: "sparsebert-bench",
    producerVersion: "1",
    domain: "",
    modelVersion: 1,
    metadata: {},
    graph: {
      name: "matmul",
      nodes: [{
        name: "matmul",
        opType: "MatMul",
        domain: "",
        inputs: ["x", "w"],
        outputs: ["y"],
        attributes: [],
      }],
      initializers: [makeTensor("w", DataType.FLOAT, [k, n], transpose2d(weight, n, k))],
      inputs: [{ name: "x", elemType: DataType.FLOAT, shape: ["m", k] }],
      outputs: [{ name: "y", elemType: DataType.FLOAT, shape: ["m", n] }],
      valueInfo: [],
    },
  });
  return await ort.InferenceSession.create(bytes, ortSessionOptions(threads));
}

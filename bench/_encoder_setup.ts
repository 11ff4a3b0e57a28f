/**
 * Shared set-up of the encoder benchmarks: the models (real MiniLM from the cache, generated
 * BERT-Base), a full-length input batch, our encoder and an ONNX Runtime session on the same
 * file with the comparable settings (intra-op threads, one inter-op thread, sequential, all
 * graph optimisations).
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { BertEncoder, type BertEncoderOptions } from "../encoder/bert.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { modelFiles } from "../hub/registry.ts";
import type { BertConfig } from "../encoder/weights.ts";
import { ensureTestModel } from "../tests/fixtures/write_test_model.ts";
import { loadOrtSession } from "./peers/ort_node.ts";

/** Models the encoder benchmarks know. */
export const ENCODER_BENCH_MODELS = ["minilm", "bert-base"] as const;
/** One of {@linkcode ENCODER_BENCH_MODELS}. */
export type EncoderBenchModel = typeof ENCODER_BENCH_MODELS[number];

/** The ONNX file of a benchmark model (generating BERT-Base on first use). */
export async function benchModelPath(model: EncoderBenchModel): Promise<string> {
  if (model === "minilm") {
    const path = modelFiles("all-minilm-l6-v2").onnx!;
    try {
      await Deno.stat(path);
    } catch {
      throw new Error(`${path} is not in the model cache; run "deno task models" first`);
    }
    return path;
  }
  return (await ensureTestModel({ preset: "bert-base" })).path;
}

/** A loaded pair of contenders on one input. */
export interface EncoderPair extends AsyncDisposable {
  /** Architecture of the model. */
  config: BertConfig;
  /** Our encoder. */
  encoder: BertEncoder;
  /** The ORT session on the same file. */
  session: ort.InferenceSession;
  /** One forward pass of ours (into a preallocated output). */
  ours: () => void;
  /** One run of ORT. */
  ort: () => Promise<unknown>;
  /** FLOPs of one forward pass (linear layers + attention products). */
  flops: number;
}

/** Loads `path` into our encoder and an ORT session; inputs are `batch` x `seq` real tokens. */
export async function encoderPair(
  path: string,
  shape: { batch: number; seq: number; threads: number },
  options: BertEncoderOptions = {},
): Promise<EncoderPair> {
  const { batch, seq, threads } = shape;
  const weights = await importOnnx(path);
  const c = weights.config;
  const rows = batch * seq;
  const inputIds = new Int32Array(rows);
  for (let i = 0; i < rows; i++) inputIds[i] = 1000 + ((i * 7919) % 20000);
  const attentionMask = new Int32Array(rows).fill(1);
  const tokenTypeIds = new Int32Array(rows);
  const encoder = new BertEncoder(weights, options);
  encoder.plan(batch, seq);
  const out = new Float32Array(rows * c.hiddenSize);
  const session = await loadOrtSession(path, { threads });
  const int64 = (a: Int32Array) =>
    new ort.Tensor("int64", BigInt64Array.from(a, (v) => BigInt(v)), [batch, seq]);
  const all: Record<string, Int32Array> = {
    input_ids: inputIds,
    attention_mask: attentionMask,
    token_type_ids: tokenTypeIds,
  };
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of session.inputNames) feeds[name] = int64(all[name]);
  const h = c.hiddenSize;
  const perLayer = 2 * rows * (4 * h * h + 2 * h * c.intermediateSize) +
    2 * 2 * batch * seq * seq * h;
  return {
    config: c,
    encoder,
    session,
    ours: () => {
      encoder.forward({ inputIds, attentionMask, tokenTypeIds, batch, seq }, { out });
    },
    ort: () => session.run(feeds),
    flops: perLayer * c.numLayers,
    async [Symbol.asyncDispose]() {
      encoder[Symbol.dispose]();
      await session.release();
    },
  };
}

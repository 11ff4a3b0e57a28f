/**
 * What the server needs from a model, independent of how it runs: the data types crossing
 * the worker process boundary, the inference interface a worker implements over the library's
 * pipelines, and the messages exchanged with a worker.
 *
 * @module
 */
import type { QuestionAnsweringResult } from "../pipelines/logits.ts";
import type { TokenClassificationResult } from "../pipelines/pipeline.ts";
import type { TextInput } from "../pipelines/tokenizer.ts";
import type { PoolingMode } from "../ops/pooling.ts";
import type { ModelConfig } from "./config.ts";

/** What a worker loads: the model's configuration, less what only the server uses. */
export type ModelSource = Pick<
  ModelConfig,
  | "name"
  | "task"
  | "model"
  | "fallback"
  | "tokenizer"
  | "kernel"
  | "pooling"
  | "normalize"
  | "maxLength"
  | "maxBatch"
  | "maxBatchTokens"
>;

/** What a worker reports once its model is loaded. */
export interface ModelInfo {
  /** The model actually loaded (`model`, or `fallback` when `model` failed). */
  loaded: string;
  /** Why `model` was not loaded when the fallback was, else `null`. */
  fallbackReason: string | null;
  /** Width of an embedding (after any Dense module), or of the logits for classification. */
  hiddenSize: number;
  /** Width of the encoder's token vectors (`/embed_all`). */
  tokenWidth: number;
  /** Class labels of a classification or token-classification head, else `null`. */
  labels: string[] | null;
  /** The `tokenizer.json` the pipeline uses (the main thread loads the same file). */
  tokenizerPath: string;
  /** Kernel family of each linear op, with counts, e.g. `{ "dense-f32": 36 }`. */
  kernels: Record<string, number>;
  /** Seconds the load (and warm-up) took. */
  loadSeconds: number;
  /**
   * The largest batch the server can send, run once at start so that every buffer that grows
   * with the batch is already allocated (see `reserveLargestBatch`), and the native workspace
   * that planned, in bytes.
   */
  reserved: { batch: number; seq: number; workspaceBytes: number };
  /** Kernel threads in effect in the process. */
  threads: number;
  /** Feature extraction: the pooling and default normalisation in effect, and the prompts. */
  embedding: {
    pooling: PoolingMode;
    normalize: boolean;
    prompts: Record<string, string>;
    defaultPromptName: string | null;
    /** sentence-transformers' do_lower_case: lower-case texts before tokenizing. */
    doLowerCase: boolean;
    /** Whether prompt tokens are pooled too (include_prompt; false is not supported). */
    includePrompt: boolean;
  } | null;
}

/** A padded batch of token sequences, row-major `[batch, seq]`. */
export interface TokenBatch {
  /** Token ids. */
  inputIds: Int32Array;
  /** 1 for real tokens, 0 for padding. */
  attentionMask: Int32Array;
  /** Segment ids. */
  tokenTypeIds: Int32Array;
  /** Rows. */
  batch: number;
  /** Columns. */
  seq: number;
  /**
   * The tokens pooling counts, where it differs from the attention mask (a model that pools
   * without its prompt: include_prompt false); absent: the attention mask.
   */
  poolMask?: Uint8Array;
}

/** One class and its probability. */
export interface LabelScore {
  /** Class label. */
  label: string;
  /** Probability (softmax; the sigmoid for a one-label head). */
  score: number;
  /** The raw logit. */
  logit: number;
}

/** A question and the context holding its answer. */
export interface QaPair {
  /** The question. */
  question: string;
  /** The context. */
  context: string;
}

/** Options for the text tasks. */
export interface TextTaskOptions {
  /** Longest sequence. */
  maxLength: number;
}

/** The inference a worker offers. Every method runs one batch. */
export interface InferenceBackend {
  /** What was loaded. */
  readonly info: ModelInfo;
  /** Pooled embeddings, not normalised (a request decides): `[batch * hiddenSize]`. */
  embed(batch: TokenBatch): Promise<Float32Array>;
  /** The encoder's token vectors: `[batch * seq * hiddenSize]`. */
  embedTokens(batch: TokenBatch): Promise<Float32Array>;
  /** All classes with their probabilities, best first, per text or text pair. */
  classify(texts: TextInput[], options: TextTaskOptions): Promise<LabelScore[][]>;
  /** The best span per pair. */
  answer(pairs: QaPair[], options: TextTaskOptions): Promise<QuestionAnsweringResult[]>;
  /** Classified tokens per text (the pipeline's default filtering). */
  classifyTokens(texts: string[], options: TextTaskOptions): Promise<TokenClassificationResult[][]>;
  /** Frees the model. */
  dispose(): void;
}

/** A worker's JavaScript memory when it answered (`Deno.memoryUsage()`), bytes. */
export interface WorkerMemory {
  /** V8 heap in use. */
  heapUsed: number;
  /** V8 heap committed (its young and old generations' reserved pages, used or not). */
  heapTotal: number;
  /** Memory of ArrayBuffers and other objects outside the V8 heap. */
  external: number;
  /** Collections the worker ran for dead ArrayBuffers, and their milliseconds in all. */
  collections: number;
  gcMs: number;
}

/** A method of {@linkcode InferenceBackend} with one batch argument, as sent to a worker. */
export type BackendCall =
  | { op: "embed"; batch: TokenBatch }
  | { op: "embedTokens"; batch: TokenBatch }
  | { op: "classify"; texts: TextInput[]; options: TextTaskOptions }
  | { op: "answer"; pairs: QaPair[]; options: TextTaskOptions }
  | { op: "classifyTokens"; texts: string[]; options: TextTaskOptions };

/** Messages the server sends a worker process. */
export type ToWorker =
  | {
    type: "load";
    source: ModelSource;
    /** Kernel threads (0: this worker's share of the library default). */
    threads: number;
    /** Workers sharing the machine's cores (all instances of all models). */
    share: number;
  }
  | { type: "call"; id: number; call: BackendCall };

/** Messages a worker process sends the server. */
export type FromWorker =
  | { type: "loaded"; info: ModelInfo; pid: number }
  | { type: "load-failed"; message: string }
  | { type: "result"; id: number; value: unknown; memory: WorkerMemory }
  | { type: "failed"; id: number; message: string };

/** Runs one call on a backend (the worker's dispatcher). */
export function runCall(backend: InferenceBackend, call: BackendCall): Promise<unknown> {
  switch (call.op) {
    case "embed":
      return backend.embed(call.batch);
    case "embedTokens":
      return backend.embedTokens(call.batch);
    case "classify":
      return backend.classify(call.texts, call.options);
    case "answer":
      return backend.answer(call.pairs, call.options);
    case "classifyTokens":
      return backend.classifyTokens(call.texts, call.options);
  }
}

/**
 * The {@linkcode InferenceBackend} over the library's pipelines (`pipelines/pipeline.ts`), as a
 * worker runs it. Embeddings call the feature-extraction pipeline on the server's own padded
 * batch (the main thread tokenized it); the text tasks call the pipelines; question answering
 * merges the context windows of every pair in the batch into one call of the pipeline's logits.
 *
 * @module
 */
import { setThreads, threads } from "../ffi/library.ts";
import { loadModel } from "../hub/load.ts";
import type { TextInput } from "../pipelines/tokenizer.ts";
import { answerOf, bestSpans, type QuestionAnsweringResult } from "../pipelines/logits.ts";
import {
  type ClassificationResult,
  type EncodedInput,
  type FeatureExtractionPipeline,
  pipeline,
  type PipelineBase,
  type QuestionAnsweringPipeline,
  type QuestionWindows,
  type TextClassificationPipeline,
  type TokenClassificationPipeline,
  type TokenClassificationResult,
} from "../pipelines/pipeline.ts";
import type {
  InferenceBackend,
  LabelScore,
  ModelInfo,
  ModelSource,
  QaPair,
  TextTaskOptions,
  TokenBatch,
} from "./backend.ts";
import type { KernelChoice } from "./config.ts";

/** Longest answer in word pieces and question word pieces kept (the pipeline's defaults). */
export const QA_MAX_ANSWER = 15;
/** Question word pieces the question-answering pipeline keeps. */
export const QA_MAX_QUESTION = 64;

/** Options of {@linkcode buildPipeline}. */
export interface BuildPipelineOptions {
  /** Kernel choice. */
  kernel: KernelChoice;
  /** Longest sequence in tokens. */
  maxLength: number;
  /** `tokenizer.json` to use when the model has none next to it, or `null`. */
  tokenizer: string | null;
}

/**
 * Loads `model` and builds the pipeline of `task` the way the server does (tests use this to
 * compute the expected results).
 *
 * @throws Error naming the model when it cannot be loaded or lacks what the task needs.
 */
export async function buildPipeline(
  task: ModelSource["task"],
  model: string,
  options: BuildPipelineOptions,
): Promise<PipelineBase> {
  // The kernel chooser builds every linear: `auto` per layer (int8 kernels where the file has
  // int8 weights, sparse kernels where they measure faster), else the kind the configuration
  // forces; a compiled model brings its own choice.
  const loaded = await loadModel(model, {
    maxLength: options.maxLength,
    kernels: options.kernel === "auto" ? { precision: "auto" } : { kernels: options.kernel },
    tokenizer: options.tokenizer ?? undefined,
  });
  const pipe = await pipeline(task, loaded);
  await loaded.saveKernelCache?.();
  return pipe;
}

/** What the configuration says, else what the model declares (bge: CLS), else mean + L2. */
function embeddingSettings(pipe: PipelineBase, source: ModelSource): ModelInfo["embedding"] {
  const declared = pipe.model.embedding ?? null;
  return {
    pooling: source.pooling ?? declared?.pooling ?? "mean",
    normalize: source.normalize ?? declared?.normalize ?? true,
    prompts: declared?.prompts ?? {},
    defaultPromptName: declared?.defaultPromptName ?? null,
    doLowerCase: declared?.doLowerCase ?? false,
    includePrompt: declared?.includePrompt ?? true,
  };
}

function countKernels(pipe: PipelineBase): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const l of pipe.encoder.linears()) counts[l.kind] = (counts[l.kind] ?? 0) + 1;
  return counts;
}

class PipelineBackend implements InferenceBackend {
  readonly info: ModelInfo;
  #pipe: PipelineBase;
  #source: ModelSource;

  constructor(pipe: PipelineBase, source: ModelSource, info: ModelInfo) {
    this.#pipe = pipe;
    this.#source = source;
    this.info = info;
  }

  #require<T extends PipelineBase>(task: ModelSource["task"]): T {
    if (this.#pipe.task !== task) {
      throw new Error(`Model "${this.#source.name}" is a ${this.#pipe.task} model, not ${task}`);
    }
    return this.#pipe as T;
  }

  /** The batch the main thread tokenized, as the pipelines take it. */
  #encoded(batch: TokenBatch): EncodedInput {
    return {
      shape: [batch.batch, batch.seq],
      inputIds: batch.inputIds,
      attentionMask: batch.attentionMask,
      tokenTypeIds: batch.tokenTypeIds,
    };
  }

  embed(batch: TokenBatch): Promise<Float32Array> {
    const pipe = this.#require<FeatureExtractionPipeline>("feature-extraction");
    // Normalisation is the request's choice, applied by the server after the batch.
    return Promise.resolve(pipe.embedEncoded(this.#encoded(batch), {
      pooling: this.info.embedding!.pooling,
      normalize: false,
      poolMask: batch.poolMask,
    }));
  }

  embedTokens(batch: TokenBatch): Promise<Float32Array> {
    const pipe = this.#require<FeatureExtractionPipeline>("feature-extraction");
    return Promise.resolve(pipe.hiddenStates(this.#encoded(batch)));
  }

  async classify(texts: TextInput[], _options: TextTaskOptions): Promise<LabelScore[][]> {
    const pipe = this.#require<TextClassificationPipeline>("text-classification");
    const topK = pipe.labels.length;
    const inputs = texts.map((t) => typeof t === "string" ? t : { text: t[0], textPair: t[1] });
    const out = await pipe(inputs, { topK, truncation: true });
    // With one label the pipeline returns one result per text, not one array per text.
    return topK === 1
      ? (out as ClassificationResult[]).map((r) => [r])
      : out as ClassificationResult[][];
  }

  answer(pairs: QaPair[], _options: TextTaskOptions): Promise<QuestionAnsweringResult[]> {
    const pipe = this.#require<QuestionAnsweringPipeline>("question-answering");
    const windows = pairs.map((p) => pipe.windows(p.question, p.context));
    const seq = Math.max(...windows.map((w) => w.shape[1]));
    const total = windows.reduce((s, w) => s + w.shape[0], 0);
    const inputIds = new Int32Array(total * seq).fill(pipe.tokenizer.padTokenId);
    const attentionMask = new Int32Array(total * seq);
    const tokenTypeIds = new Int32Array(total * seq);
    let row = 0;
    for (const w of windows) {
      const [n, s] = w.shape;
      for (let r = 0; r < n; r++) {
        inputIds.set(w.inputIds.subarray(r * s, (r + 1) * s), (row + r) * seq);
        attentionMask.set(w.attentionMask.subarray(r * s, (r + 1) * s), (row + r) * seq);
        tokenTypeIds.set(w.tokenTypeIds.subarray(r * s, (r + 1) * s), (row + r) * seq);
      }
      row += n;
    }
    const { data } = pipe.logits({ shape: [total, seq], inputIds, attentionMask, tokenTypeIds });
    row = 0;
    const answers = windows.map((w: QuestionWindows, i: number) => {
      const n = w.shape[0];
      const logits = data.subarray(row * seq * 2, (row + n) * seq * 2);
      row += n;
      const [best] = bestSpans(logits, { ...w, shape: [n, seq] }, {
        topK: 1,
        maxAnswer: QA_MAX_ANSWER,
      });
      const context = pairs[i].context;
      return answerOf(pipe.tokenizer, context, pipe.tokenizer.offsets(context), w, best);
    });
    return Promise.resolve(answers);
  }

  async classifyTokens(
    texts: string[],
    _options: TextTaskOptions,
  ): Promise<TokenClassificationResult[][]> {
    const pipe = this.#require<TokenClassificationPipeline>("token-classification");
    return await pipe(texts, { truncation: true }) as TokenClassificationResult[][];
  }

  dispose(): void {
    this.#pipe.dispose();
  }
}

async function warmUp(pipe: PipelineBase): Promise<void> {
  switch (pipe.task) {
    case "feature-extraction":
      await (pipe as FeatureExtractionPipeline)(["warm up"], { pooling: "mean" });
      break;
    case "text-classification":
      await (pipe as TextClassificationPipeline)(["warm up"]);
      break;
    case "token-classification":
      await (pipe as TokenClassificationPipeline)(["warm up"]);
      break;
    case "question-answering":
      await (pipe as QuestionAnsweringPipeline)("what?", "a warm up");
      break;
  }
}

/**
 * Runs one batch of the largest shape the server can send (`maxBatchTokens` padded tokens of
 * `maxLength`, at most `maxBatch` inputs) through the path its batches take. The encoder's
 * workspace, the attention scratch, the int8 layers' staging and the pooled token vectors only
 * grow, and each grows to the largest batch seen; planning that batch at start makes the
 * worker's memory known before it takes traffic and flat under load, where it otherwise
 * stepped up the first time a backlog ran a new largest batch (issue 17's soak). An
 * out-of-memory for the configuration then fails the start, not a request.
 */
export function reserveLargestBatch(
  pipe: PipelineBase,
  limits: Pick<ModelSource, "maxLength" | "maxBatch" | "maxBatchTokens">,
): ModelInfo["reserved"] {
  const seq = Math.min(limits.maxLength, pipe.encoder.config.maxPositionEmbeddings);
  const batch = Math.max(1, Math.min(limits.maxBatch, Math.ceil(limits.maxBatchTokens / seq)));
  const input: EncodedInput = {
    shape: [batch, seq],
    inputIds: new Int32Array(batch * seq).fill(pipe.tokenizer.padTokenId),
    attentionMask: new Int32Array(batch * seq).fill(1),
    tokenTypeIds: new Int32Array(batch * seq),
  };
  if (pipe.task === "feature-extraction") {
    (pipe as FeatureExtractionPipeline).embedEncoded(input, { pooling: "mean", normalize: false });
  } else {
    // The heads' outputs are small; the encoder's buffers are what grows.
    pipe.encoder.forward({
      inputIds: input.inputIds,
      attentionMask: input.attentionMask,
      batch,
      seq,
    });
  }
  return { batch, seq, workspaceBytes: pipe.encoder.workspaceBytes };
}

/**
 * Loads the model of `source` (its fallback when it fails and one is given), warms it up and
 * returns the backend a worker serves.
 *
 * @throws Error naming the model (and the fallback's failure too) when nothing loads.
 */
export async function loadPipelineBackend(
  source: ModelSource,
  options: { threads: number },
): Promise<InferenceBackend> {
  if (options.threads > 0) setThreads(options.threads);
  const started = performance.now();
  const build = (model: string) =>
    buildPipeline(source.task, model, {
      kernel: source.kernel,
      maxLength: source.maxLength,
      tokenizer: source.tokenizer,
    });
  let loaded = source.model;
  let fallbackReason: string | null = null;
  let pipe: PipelineBase;
  try {
    pipe = await build(source.model);
  } catch (err) {
    if (source.fallback === null) {
      throw new Error(`Cannot load model "${source.model}": ${(err as Error).message}`, {
        cause: err,
      });
    }
    fallbackReason = (err as Error).message;
    loaded = source.fallback;
    try {
      pipe = await build(source.fallback);
    } catch (err2) {
      throw new Error(
        `Cannot load model "${source.model}" (${fallbackReason}) nor its fallback "${source.fallback}" (${
          (err2 as Error).message
        })`,
        { cause: err2 },
      );
    }
  }
  let reserved: ModelInfo["reserved"];
  try {
    await warmUp(pipe);
    reserved = reserveLargestBatch(pipe, source);
  } catch (err) {
    pipe.dispose();
    throw new Error(`Model "${loaded}" failed its warm-up call: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const labels = "labels" in pipe ? [...(pipe.labels as readonly string[])] : null;
  const info: ModelInfo = {
    loaded,
    fallbackReason,
    hiddenSize: pipe.task === "feature-extraction"
      ? (pipe as FeatureExtractionPipeline).sentenceHead.width
      : pipe.encoder.hiddenSize,
    tokenWidth: pipe.encoder.hiddenSize,
    labels,
    tokenizerPath: pipe.model.weights.source.tokenizer ?? "",
    kernels: countKernels(pipe),
    loadSeconds: (performance.now() - started) / 1000,
    reserved,
    threads: threads(),
    embedding: pipe.task === "feature-extraction" ? embeddingSettings(pipe, source) : null,
  };
  if (info.tokenizerPath === "") {
    pipe.dispose();
    throw new Error(`Model "${loaded}" has no tokenizer.json; set "tokenizer" for it`);
  }
  return new PipelineBackend(pipe, source, info);
}

/**
 * Task pipelines in the Transformers.js shape:
 *
 * ```ts
 * const extractor = await pipeline("feature-extraction", "all-minilm-l6-v2");
 * const out = await extractor(["Hello world", "Sparse BERT"], { pooling: "mean", normalize: true });
 * // out.data: Float32Array [2 * 384], out.dims: [2, 384]
 * extractor.dispose();
 * ```
 *
 * `pipeline(task, model, options)` loads the model (a path or registry name, see
 * {@linkcode loadModel}, or an already loaded {@linkcode LoadedModel}), builds the encoder and
 * the task head, and returns a callable object with `task`, `encoder` (for token-level
 * callers: `pipe.encoder.forward(...)`), `tokenizer`, `config`, `logits(...)` (raw head output)
 * and `dispose()` / `[Symbol.dispose]`.
 *
 * Tasks: `"feature-extraction"` (token states or pooled sentence vectors), `"text-classification"`
 * (softmax over the labels of a sequence classifier), `"token-classification"` (a label per
 * word piece) and `"question-answering"` (best answer span over context windows with a doc
 * stride). The computation is synchronous; calls return promises for API compatibility.
 *
 * @module
 */
import type { AttentionPrecision } from "../ops/attention.ts";
import { setThreads } from "../ffi/library.ts";
import { l2NormalizeRows, pool, POOLING_MODES, type PoolingMode } from "../ops/pooling.ts";
import { BertEncoder, denseF32Linear, type LinearFactory } from "../encoder/bert.ts";
import type { KernelChoiceOptions } from "../encoder/kernel_choice.ts";
import { loadModel } from "../hub/load.ts";
import { SentenceHead, TaskHead } from "./heads.ts";
import { answerOf, bestSpans, type QuestionAnsweringResult, sigmoid, softmax } from "./logits.ts";
import type { LoadedModel } from "../hub/loaded_model.ts";
import {
  applyPrompt,
  type EmbeddingDefinition,
  resolvePrompt,
} from "../formats/sentence_config.ts";
import { type BertTokenizer, type EncodedBatch, padBatch, type TextInput } from "./tokenizer.ts";
import type { BertConfig, HeadWeights } from "../encoder/weights.ts";

/** Tasks {@linkcode pipeline} can build. */
export type PipelineTask =
  | "feature-extraction"
  | "text-classification"
  | "question-answering"
  | "token-classification";

/**
 * Pooling of feature-extraction outputs: `"none"` keeps one vector per token; the others are
 * sentence-transformers' modes (see {@linkcode PoolingMode}).
 */
export type FeaturePooling = "none" | PoolingMode;

/** Every {@linkcode FeaturePooling}. */
export const FEATURE_POOLING: readonly FeaturePooling[] = ["none", ...POOLING_MODES];

/** A tensor result: flat data and its dimensions (row-major). */
export interface FeatureTensor {
  /** Values, row-major over `dims`. */
  data: Float32Array;
  /** Dimensions, e.g. `[batch, hidden]` or `[batch, seq, hidden]`. */
  dims: number[];
}

/** Options of {@linkcode pipeline}; the call options given here become the call defaults. */
export interface PipelineOptions {
  /** Builds the encoder's linear layers (dense fp32 by default). */
  linear?: LinearFactory;
  /** Fuse the Q/K/V projections into one GEMM (default true). */
  fuseQkv?: boolean;
  /**
   * Products of the attention: `"fp32"`, `"int8"`, or `"auto"` (default: int8 when the model's
   * Q/K/V run int8, see `BertEncoderOptions.attentionPrecision`).
   */
  attentionPrecision?: AttentionPrecision | "auto";
  /** Choose kernels per layer when `model` is a path or name (see `encoder/kernel_choice.ts`). */
  kernels?: KernelChoiceOptions;
  /** Longest tokenized input; default the smaller of the tokenizer's and the model's limits. */
  maxLength?: number;
  /** Tokenizer file; default the one beside the model (see `LoadModelOptions.tokenizer`). */
  tokenizer?: string;
  /** Sets the process-wide kernel thread count. */
  threads?: number;
  /** Texts per encoder call (default 32). */
  batchSize?: number;
  /**
   * Feature extraction: default pooling; absent: what the model declares (sentence-transformers
   * `1_Pooling`, or its registry entry: bge CLS, MiniLM mean), else `"none"` as Transformers.js.
   */
  pooling?: FeaturePooling;
  /** Feature extraction: default L2 normalisation; absent: whether the model has `Normalize`. */
  normalize?: boolean;
  /** Cut texts longer than `maxLength` instead of failing (default false). */
  truncation?: boolean;
  /** Progress lines while a registry model is fetched. */
  log?: (line: string) => void;
}

/**
 * The pooling a model declares (its sentence-transformers files or registry entry), else
 * `"none"` as in Transformers.js.
 */
export function declaredPooling(declared: EmbeddingDefinition | null): FeaturePooling {
  return declared === null ? "none" : declared.pooling;
}

/** Members shared by every pipeline. */
export interface PipelineBase extends Disposable {
  /** The task. */
  readonly task: PipelineTask;
  /** The encoder, for token-level callers (`forward`, `plan`). */
  readonly encoder: BertEncoder;
  /** The tokenizer. */
  readonly tokenizer: BertTokenizer;
  /** The architecture. */
  readonly config: Readonly<BertConfig>;
  /** The loaded model (weights and source). */
  readonly model: LoadedModel;
  /** Frees the native memory of the encoder and head. Idempotent. */
  dispose(): void;
}

/** Per-call options of a feature-extraction pipeline. */
export interface FeatureExtractionOptions {
  /**
   * A prompt of the model's `config_sentence_transformers.json` to put before every text
   * (e.g. `"query"`); default its `default_prompt_name`, else none.
   */
  promptName?: string;
  /** `"none"` (token vectors `[batch, seq, H]`), `"mean"` or `"cls"` (`[batch, H]`). */
  pooling?: FeaturePooling;
  /** Divide each output vector by its L2 norm. */
  normalize?: boolean;
  /** Cut texts longer than the limit instead of failing. */
  truncation?: boolean;
}

/** Options of {@linkcode FeatureExtractionPipeline.embedEncoded}. */
export interface EmbedEncodedOptions {
  /** `"mean"` or `"cls"`. */
  pooling: Exclude<FeaturePooling, "none">;
  /** Divide each vector by its L2 norm (after the Dense modules). */
  normalize: boolean;
  /**
   * The tokens pooling counts, `[batch * seq]`, where they differ from the attention mask (a
   * model that pools without its prompt); default the attention mask.
   */
  poolMask?: Uint8Array;
  /** Output buffer of `batch * width` values; allocated when absent. */
  out?: Float32Array;
}

/** `extractor(texts, options)`: token or sentence vectors. */
export interface FeatureExtractionPipeline extends PipelineBase {
  /** Embeds one text or a batch. With pooling `"none"` sequences are padded to the longest. */
  (texts: string | string[], options?: FeatureExtractionOptions): Promise<FeatureTensor>;
  /** The model's `Dense` modules after pooling (identity when it declares none). */
  readonly sentenceHead: SentenceHead;
  /**
   * Sentence vectors `[batch * width]` of a batch tokenized by the caller: the encoder, pooling,
   * the Dense modules and, when asked, L2 normalisation (what the call does per chunk).
   */
  embedEncoded(input: EncodedInput, options: EmbedEncodedOptions): Float32Array;
  /** The encoder's token vectors `[batch * seq * H]` of a batch tokenized by the caller. */
  hiddenStates(input: EncodedInput): Float32Array;
}

/** One label and its probability. */
export interface ClassificationResult {
  /** Label name (`config.json` `id2label`, else `LABEL_i`). */
  label: string;
  /** Probability: softmax over the labels, or the sigmoid of a one-label head (a cross-encoder). */
  score: number;
  /** The head's raw logit for this label. */
  logit: number;
}

/** A text, or a text pair (a cross-encoder's query and passage), to classify. */
export type ClassificationInput = string | { text: string; textPair: string };

/** Per-call options of a text-classification pipeline. */
export interface TextClassificationOptions {
  /** Labels returned per text, best first (default 1). */
  topK?: number;
  /** Cut texts longer than the limit instead of failing. */
  truncation?: boolean;
}

/** Input of the raw-logit methods: a tokenized, padded batch. */
export type EncodedInput = Pick<
  EncodedBatch,
  "shape" | "inputIds" | "attentionMask" | "tokenTypeIds"
>;

/** What a pipeline with a classification head adds to {@linkcode PipelineBase}. */
export interface LabelledPipeline extends PipelineBase {
  /** Label names by index. */
  readonly labels: readonly string[];
  /**
   * Raw logits of an encoded batch: `[batch, labels]` from a sequence head, `[batch, seq,
   * labels]` from a token head.
   */
  logits(input: EncodedInput): FeatureTensor;
}

/** `classifier(texts, options)`: sequence classification. */
export interface TextClassificationPipeline extends LabelledPipeline {
  /**
   * Classifies one text (→ `[{label, score}]`, `topK` entries) or a batch (→ one entry per text
   * when `topK` is 1, else one array per text), as Transformers.js does.
   */
  (
    texts: ClassificationInput | ClassificationInput[],
    options?: TextClassificationOptions,
  ): Promise<ClassificationResult[] | ClassificationResult[][]>;
}

/** One labelled word piece. */
export interface TokenClassificationResult {
  /** Label name. */
  entity: string;
  /** Softmax probability of that label. */
  score: number;
  /** Token position in the encoded sequence (special tokens counted). */
  index: number;
  /** The word piece. */
  word: string;
  /** Where the word piece is in the text (`text.slice(start, end)`), or null if unknown. */
  start: number | null;
  /** End of the word piece in the text (exclusive), or null. */
  end: number | null;
}

/** Per-call options of a token-classification pipeline. */
export interface TokenClassificationOptions {
  /** Labels left out of the result (default `["O"]`). */
  ignoreLabels?: string[];
  /** Cut texts longer than the limit instead of failing. */
  truncation?: boolean;
}

/** `tagger(texts, options)`: a label per word piece. */
export interface TokenClassificationPipeline extends LabelledPipeline {
  /** Tags one text (→ array of entities) or a batch (→ one array per text). */
  (
    texts: string | string[],
    options?: TokenClassificationOptions,
  ): Promise<TokenClassificationResult[] | TokenClassificationResult[][]>;
}

/** Per-call options of a question-answering pipeline. */
export interface QuestionAnsweringOptions {
  /** Answers returned, best first (default 1: a single result, not an array). */
  topK?: number;
  /** Context tokens shared by consecutive windows (default 128, at most half a window). */
  docStride?: number;
  /** Longest answer in word pieces (default 15). */
  maxAnswerLength?: number;
  /** Question word pieces kept (default 64). */
  maxQuestionLength?: number;
}

/** Context windows of one question, tokenized and padded. */
export interface QuestionWindows extends EncodedInput {
  /** Per window: the first context word piece it holds. */
  contextStart: number[];
  /** Per window: how many context word pieces it holds. */
  contextLength: number[];
  /** Per window: the position of its first context token in the sequence. */
  offset: number[];
  /** Token ids of the whole context. */
  contextIds: number[];
}

/** `qa(question, context, options)`: extractive question answering. */
export interface QuestionAnsweringPipeline extends PipelineBase {
  /** Finds the best answer span (or the `topK` best) of `question` in `context`. */
  (
    question: string,
    context: string,
    options?: QuestionAnsweringOptions,
  ): Promise<QuestionAnsweringResult | QuestionAnsweringResult[]>;
  /** Splits the context into windows with a doc stride and tokenizes them. */
  windows(question: string, context: string, options?: QuestionAnsweringOptions): QuestionWindows;
  /** Raw logits `[batch, seq, 2]` (start, end per token) of an encoded batch. */
  logits(input: EncodedInput): FeatureTensor;
}

/** The pipeline type of each task. */
export interface PipelineByTask {
  /** Feature extraction. */
  "feature-extraction": FeatureExtractionPipeline;
  /** Sequence classification. */
  "text-classification": TextClassificationPipeline;
  /** Word-piece classification. */
  "token-classification": TokenClassificationPipeline;
  /** Extractive question answering. */
  "question-answering": QuestionAnsweringPipeline;
}

const TASKS: readonly PipelineTask[] = [
  "feature-extraction",
  "text-classification",
  "question-answering",
  "token-classification",
];

const HEAD_KIND: Record<Exclude<PipelineTask, "feature-extraction">, HeadWeights["kind"]> = {
  "text-classification": "classification",
  "token-classification": "token-classification",
  "question-answering": "question-answering",
};

/**
 * Builds a pipeline for `task` on `model` (a path, a registry name, or a loaded model).
 *
 * @throws Error when the task is unknown, the model cannot be loaded, has no tokenizer, or
 *   lacks the head the task needs.
 */
export async function pipeline<T extends PipelineTask>(
  task: T,
  model: string | LoadedModel,
  options: PipelineOptions = {},
): Promise<PipelineByTask[T]> {
  if (!TASKS.includes(task)) {
    throw new Error(`Unknown task "${task}": expected one of ${TASKS.join(", ")}`);
  }
  if (options.threads !== undefined) setThreads(options.threads);
  const loaded = typeof model === "string"
    ? await loadModel(model, {
      maxLength: options.maxLength,
      tokenizer: options.tokenizer,
      log: options.log,
      kernels: options.kernels,
    })
    : model;
  if (loaded.tokenizer === null) {
    throw new Error(
      `Model "${loaded.path}" has no tokenizer (looked for tokenizer.json, <stem>-tokenizer.json ` +
        "and <stem>.tokenizer.json beside it); pass the tokenizer option (--tokenizer PATH)",
    );
  }
  const batchSize = options.batchSize ?? 32;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`batchSize must be a positive integer, got ${batchSize}`);
  }
  const weights = loaded.weights;
  let head: TaskHead | null = null;
  if (task !== "feature-extraction") {
    const kind = HEAD_KIND[task as Exclude<PipelineTask, "feature-extraction">];
    if (weights.head === null || weights.head.kind !== kind) {
      throw new Error(
        `Model "${loaded.path}" has ${
          weights.head ? `a ${weights.head.kind} head` : "no task head"
        }; "${task}" needs a ${kind} head`,
      );
    }
  }
  // One factory builds every linear: the encoder's and the heads'.
  const linear = options.linear ?? loaded.linear ?? denseF32Linear;
  let encoder: BertEncoder;
  try {
    if (task !== "feature-extraction") head = new TaskHead(weights, linear);
    encoder = new BertEncoder(weights, {
      linear,
      fuseQkv: options.fuseQkv ?? loaded.fuseQkv,
      attentionPrecision: options.attentionPrecision,
    });
    await loaded.saveKernelCache?.();
  } catch (error) {
    head?.[Symbol.dispose]();
    throw error;
  }
  const base = new PipelineCore(task, loaded, encoder, head, batchSize, options, linear);
  switch (task) {
    case "feature-extraction":
      return base.featureExtraction() as PipelineByTask[T];
    case "text-classification":
      return base.textClassification() as PipelineByTask[T];
    case "token-classification":
      return base.tokenClassification() as PipelineByTask[T];
    default:
      return base.questionAnswering() as PipelineByTask[T];
  }
}

/**
 * `fn` as a function returning a promise: what it throws becomes a rejection, as from an async
 * function (the pipelines' calls are synchronous underneath but promise-based, as
 * Transformers.js's are).
 */
function promised<A extends unknown[], R>(fn: (...args: A) => R): (...args: A) => Promise<R> {
  return (...args) => {
    try {
      return Promise.resolve(fn(...args));
    } catch (error) {
      return Promise.reject(error);
    }
  };
}

class PipelineCore {
  #disposed = false;
  #sentenceHead: SentenceHead | null = null;
  /** Token vectors that pooling consumes: reused (grow-only) so steady batches allocate none. */
  #pooledTokens: Float32Array = new Float32Array(0);

  constructor(
    readonly task: PipelineTask,
    readonly model: LoadedModel,
    readonly encoder: BertEncoder,
    readonly head: TaskHead | null,
    readonly batchSize: number,
    readonly defaults: PipelineOptions,
    readonly linear: LinearFactory,
  ) {}

  get tokenizer(): BertTokenizer {
    return this.model.tokenizer!;
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#pooledTokens = new Float32Array(0);
    this.encoder[Symbol.dispose]();
    this.head?.[Symbol.dispose]();
    this.#sentenceHead?.[Symbol.dispose]();
  }

  /** Attaches the shared members to a call function. */
  #wrap<F extends (...args: never[]) => unknown, E extends object>(
    call: F,
    extra: E,
  ): F & E & PipelineBase {
    const members = {
      task: this.task,
      encoder: this.encoder,
      tokenizer: this.tokenizer,
      config: this.encoder.config,
      model: this.model,
      dispose: () => this.dispose(),
      [Symbol.dispose]: () => this.dispose(),
      ...extra,
    };
    for (const key of Reflect.ownKeys(members)) {
      Object.defineProperty(call, key, {
        value: (members as Record<string | symbol, unknown>)[key],
        enumerable: typeof key === "string",
      });
    }
    return call as F & E & PipelineBase;
  }

  #check(): void {
    if (this.#disposed) throw new Error(`The ${this.task} pipeline was used after dispose()`);
  }

  /** Encoder output of one tokenized batch, into `out` when given. */
  #hidden(input: EncodedInput, out?: Float32Array): Float32Array {
    this.#check();
    const [batch, seq] = input.shape;
    return this.encoder.forward({
      inputIds: input.inputIds,
      attentionMask: input.attentionMask,
      tokenTypeIds: this.encoder.config.typeVocabSize > 0 ? input.tokenTypeIds : null,
      batch,
      seq,
    }, { out });
  }

  /** The reused token-vector buffer, grown to `values` when smaller. */
  #pooledTokensFor(values: number): Float32Array {
    if (this.#pooledTokens.length < values) this.#pooledTokens = new Float32Array(values);
    return this.#pooledTokens.subarray(0, values);
  }

  #logits(input: EncodedInput): FeatureTensor {
    const [batch, seq] = input.shape;
    const hidden = this.#hidden(input);
    const head = this.head!;
    const data = head.logits(hidden, batch, seq);
    const labels = head.labels.length;
    return {
      data,
      dims: head.kind === "classification" ? [batch, labels] : [batch, seq, labels],
    };
  }

  #encode(texts: TextInput[], truncation: boolean | undefined): EncodedBatch {
    return this.tokenizer.encodeBatch(texts, {
      truncation: truncation ?? this.defaults.truncation ?? false,
    });
  }

  /** Splits `items` into encoder batches of at most `batchSize`. */
  *#chunks<T>(items: T[]): Generator<T[]> {
    for (let i = 0; i < items.length; i += this.batchSize) {
      yield items.slice(i, i + this.batchSize);
    }
  }

  featureExtraction(): FeatureExtractionPipeline {
    const call = promised((
      texts: string | string[],
      options: FeatureExtractionOptions = {},
    ): FeatureTensor => this.#extract(texts, options));
    this.#sentenceHead = new SentenceHead(
      this.model.embedding?.dense ?? [],
      this.encoder.hiddenSize,
      this.linear,
    );
    return this.#wrap(call, {
      sentenceHead: this.#sentenceHead,
      embedEncoded: (input: EncodedInput, options: EmbedEncodedOptions) =>
        this.#embedEncoded(input, options),
      hiddenStates: (input: EncodedInput) => this.#hidden(input),
    });
  }

  #extract(input: string | string[], options: FeatureExtractionOptions): FeatureTensor {
    this.#check();
    const declared = this.model.embedding ?? null;
    const prompt = resolvePrompt(declared, options.promptName);
    const { texts, excluded } = applyPrompt(declared, prompt, textList(input), this.tokenizer);
    const pooling = options.pooling ?? this.defaults.pooling ?? declaredPooling(declared);
    if (!FEATURE_POOLING.includes(pooling)) {
      throw new RangeError(
        `Unknown pooling "${pooling}": expected ${FEATURE_POOLING.map((p) => `"${p}"`).join(", ")}`,
      );
    }
    // A declared Normalize module applies to sentence embeddings, not to token vectors.
    const normalize = options.normalize ?? this.defaults.normalize ??
      (pooling === "none" ? false : declared?.normalize ?? false);
    const h = this.encoder.hiddenSize;
    if (pooling === "none") {
      // Token vectors: one padded [batch, seq, H] tensor over the whole input.
      const encoded = this.#encode(texts, options.truncation);
      const [batch, seq] = encoded.shape;
      const data = this.#hidden(encoded);
      if (normalize) l2NormalizeRows(data, batch * seq, h);
      return { data, dims: [batch, seq, h] };
    }
    const head = this.#sentenceHead!;
    const width = head.width;
    const data = new Float32Array(texts.length * width);
    let row = 0;
    for (const chunk of this.#chunks(texts)) {
      const encoded = this.#encode(chunk, options.truncation);
      const [batch, seq] = encoded.shape;
      let poolMask: Uint8Array | undefined;
      if (excluded > 0) {
        // include_prompt false: [CLS] and the prompt's tokens do not count in the pooling.
        poolMask = Uint8Array.from(encoded.attentionMask);
        for (let b = 0; b < batch; b++) poolMask.fill(0, b * seq, b * seq + excluded);
      }
      const out = data.subarray(row * width, (row + batch) * width);
      this.#embedEncoded(encoded, { pooling, normalize, poolMask, out });
      row += batch;
    }
    return { data, dims: [texts.length, width] };
  }

  /** Encoder, pooling, Dense modules, Normalize (sentence-transformers' order) of one batch. */
  #embedEncoded(input: EncodedInput, options: EmbedEncodedOptions): Float32Array {
    const [batch, seq] = input.shape;
    const head = this.#sentenceHead!;
    const width = head.width;
    const out = options.out ?? new Float32Array(batch * width);
    if (out.length < batch * width) {
      throw new RangeError(`The output needs ${batch * width} values, got ${out.length}`);
    }
    const mask = options.poolMask ?? Uint8Array.from(input.attentionMask);
    if (mask.length !== batch * seq) {
      throw new RangeError(`The pool mask needs ${batch * seq} values, got ${mask.length}`);
    }
    // Pooling reads the token vectors and keeps none of them, so one buffer serves every batch.
    const tokens = this.#pooledTokensFor(batch * seq * this.encoder.hiddenSize);
    const hidden = this.#hidden(input, tokens);
    const shape = { batch, seq, hidden: this.encoder.hiddenSize, mask };
    if (head.identity) {
      pool(hidden, shape, { mode: options.pooling, normalize: options.normalize, out });
      return out;
    }
    const y = head.apply(pool(hidden, shape, { mode: options.pooling }), batch);
    if (options.normalize) l2NormalizeRows(y, batch, width);
    out.set(y.subarray(0, batch * width));
    return out;
  }

  textClassification(): TextClassificationPipeline {
    const call = promised((
      texts: ClassificationInput | ClassificationInput[],
      options: TextClassificationOptions = {},
    ) => this.#classify(texts, options));
    return this.#wrap(call, this.#labelledHead());
  }

  /** What a pipeline with a classification head adds: its labels, and the raw logits. */
  #labelledHead(): Pick<LabelledPipeline, "labels" | "logits"> {
    return { labels: this.head!.labels, logits: (input) => this.#logits(input) };
  }

  #classify(
    input: ClassificationInput | ClassificationInput[],
    options: TextClassificationOptions,
  ): ClassificationResult[] | ClassificationResult[][] {
    this.#check();
    const inputs = classificationInputs(input);
    const labels = this.head!.labels;
    const topK = options.topK ?? 1;
    if (!Number.isInteger(topK) || topK < 1) {
      throw new RangeError(`topK must be a positive integer, got ${topK}`);
    }
    const results: ClassificationResult[][] = [];
    for (const chunk of this.#chunks(inputs)) {
      const { data } = this.#logits(this.#encode(chunk, options.truncation));
      for (let b = 0; b < chunk.length; b++) {
        const logits = data.subarray(b * labels.length, (b + 1) * labels.length);
        // One label is a score, not a choice (HF's convention): its sigmoid.
        const probs = labels.length === 1 ? Float64Array.of(sigmoid(logits[0])) : softmax(logits);
        const ranked = [...probs.keys()].sort((i, j) => probs[j] - probs[i]).slice(0, topK);
        results.push(ranked.map((i) => ({ label: labels[i], score: probs[i], logit: logits[i] })));
      }
    }
    if (!Array.isArray(input)) return results[0];
    return topK === 1 ? results.map((r) => r[0]) : results;
  }

  tokenClassification(): TokenClassificationPipeline {
    const call = promised((texts: string | string[], options: TokenClassificationOptions = {}) =>
      this.#tag(texts, options)
    );
    return this.#wrap(call, this.#labelledHead());
  }

  #tag(
    input: string | string[],
    options: TokenClassificationOptions,
  ): TokenClassificationResult[] | TokenClassificationResult[][] {
    this.#check();
    const texts = textList(input);
    const labels = this.head!.labels;
    const ignore = new Set(options.ignoreLabels ?? ["O"]);
    const leading = this.tokenizer.leadingSpecialTokens;
    const results: TokenClassificationResult[][] = [];
    for (const chunk of this.#chunks(texts)) {
      const encoded = this.#encode(chunk, options.truncation);
      const [batch, seq] = encoded.shape;
      const { data } = this.#logits(encoded);
      for (let b = 0; b < batch; b++) {
        const entities: TokenClassificationResult[] = [];
        const offsets = this.tokenizer.offsets(chunk[b]);
        for (let s = 0; s < seq; s++) {
          const row = b * seq + s;
          if (encoded.attentionMask[row] === 0) continue;
          const word = this.tokenizer.decode([encoded.inputIds[row]], true);
          if (word === "") continue; // a special token
          const probs = softmax(data.subarray(row * labels.length, (row + 1) * labels.length));
          let best = 0;
          for (let i = 1; i < probs.length; i++) if (probs[i] > probs[best]) best = i;
          if (ignore.has(labels[best])) continue;
          const at = offsets[s - leading] ?? null;
          entities.push({
            entity: labels[best],
            score: probs[best],
            index: s,
            word,
            start: at?.[0] ?? null,
            end: at?.[1] ?? null,
          });
        }
        results.push(entities);
      }
    }
    return typeof input === "string" ? results[0] : results;
  }

  questionAnswering(): QuestionAnsweringPipeline {
    const call = promised((
      question: string,
      context: string,
      options: QuestionAnsweringOptions = {},
    ): QuestionAnsweringResult | QuestionAnsweringResult[] =>
      this.#answer(question, context, options)
    );
    return this.#wrap(call, {
      windows: (question: string, context: string, options: QuestionAnsweringOptions = {}) =>
        this.#windows(question, context, options),
      logits: (input: EncodedInput) => this.#logits(input),
    });
  }

  #windows(question: string, context: string, options: QuestionAnsweringOptions): QuestionWindows {
    if (typeof question !== "string" || typeof context !== "string") {
      throw new TypeError("Question answering needs a question string and a context string");
    }
    const tok = this.tokenizer;
    const maxQuestion = options.maxQuestionLength ?? 64;
    const question_ = tok.tokenize(question).slice(0, maxQuestion);
    const contextTokens = tok.tokenize(context);
    if (question_.length === 0) throw new Error("The question has no tokens");
    if (contextTokens.length === 0) throw new Error("The context has no tokens");
    const maxLength = tok.maxLength;
    const room = maxLength - question_.length - tok.numSpecialTokens(true);
    if (room < 1) {
      throw new Error(
        `The question (${question_.length} tokens) leaves no room for context within ${maxLength} tokens`,
      );
    }
    const stride = Math.min(options.docStride ?? 128, Math.floor(room / 2));
    if (!Number.isInteger(stride) || stride < 0) {
      throw new RangeError(`docStride must be a non-negative integer, got ${options.docStride}`);
    }
    const step = room - stride;
    const rows: {
      ids: number[];
      typeIds: number[];
      start: number;
      length: number;
      offset: number;
    }[] = [];
    for (let start = 0;; start += step) {
      const end = Math.min(start + room, contextTokens.length);
      const piece = contextTokens.slice(start, end);
      const { tokens, typeIds } = tok.withSpecialTokens(question_, piece);
      let offset = typeIds.indexOf(1);
      if (offset < 0) offset = tokens.length - piece.length - 1;
      rows.push({
        ids: tok.convertTokensToIds(tokens),
        typeIds,
        start,
        length: piece.length,
        offset,
      });
      if (end >= contextTokens.length) break;
    }
    const seq = Math.max(...rows.map((r) => r.ids.length));
    return {
      ...padBatch(rows, seq, tok.padTokenId),
      contextStart: rows.map((r) => r.start),
      contextLength: rows.map((r) => r.length),
      offset: rows.map((r) => r.offset),
      contextIds: tok.convertTokensToIds(contextTokens),
    };
  }

  #answer(
    question: string,
    context: string,
    options: QuestionAnsweringOptions,
  ): QuestionAnsweringResult | QuestionAnsweringResult[] {
    this.#check();
    const topK = options.topK ?? 1;
    const maxAnswer = options.maxAnswerLength ?? 15;
    if (!Number.isInteger(topK) || topK < 1) {
      throw new RangeError(`topK must be a positive integer, got ${topK}`);
    }
    if (!Number.isInteger(maxAnswer) || maxAnswer < 1) {
      throw new RangeError(`maxAnswerLength must be a positive integer, got ${maxAnswer}`);
    }
    const windows = this.#windows(question, context, options);
    const { data } = this.#logits(windows);
    const spans = bestSpans(data, windows, { topK, maxAnswer });
    const offsets = this.tokenizer.offsets(context);
    const results = spans.map((s) => answerOf(this.tokenizer, context, offsets, windows, s));
    return topK === 1 ? results[0] : results;
  }
}

function classificationInputs(input: ClassificationInput | ClassificationInput[]): TextInput[] {
  const list = Array.isArray(input) ? input : [input];
  if (list.length === 0) throw new TypeError("Expected a text or a non-empty array of texts");
  return list.map((item) => {
    if (typeof item === "string") return item;
    if (
      item !== null && typeof item === "object" && typeof item.text === "string" &&
      typeof item.textPair === "string"
    ) return [item.text, item.textPair];
    throw new TypeError("Expected a text, or { text, textPair } for a text pair");
  });
}

function textList(input: string | string[]): string[] {
  const texts = typeof input === "string" ? [input] : input;
  if (!Array.isArray(texts) || texts.length === 0 || texts.some((t) => typeof t !== "string")) {
    throw new TypeError("Expected a text or a non-empty array of texts");
  }
  return texts;
}

/**
 * A served model in the server process: its tokenizer (limits are checked and texts tokenized
 * here, so a bad input is refused before it queues), its batcher, and its worker processes.
 *
 * @module
 */
import { BertTokenizer, type TextInput } from "../pipelines/tokenizer.ts";
import { l2NormalizeRows } from "../ops/pooling.ts";
import { applyPrompt, PromptError, resolvePrompt } from "../formats/sentence_config.ts";
import type { ModelConfig } from "./config.ts";
import type { LabelScore, ModelInfo, QaPair, TokenBatch } from "./backend.ts";
import {
  Batcher,
  CancelledError,
  ClosedError,
  OverloadedError,
  QueueTimeoutError,
  type Sized,
} from "./batcher.ts";
import { HttpError, typeName } from "./http.ts";
import { QA_MAX_QUESTION } from "./pipeline_backend.ts";
import { WorkerFaultError, WorkerInstance, WorkerUnavailableError } from "./instances.ts";
import type { Metrics } from "./metrics.ts";
import type { QuestionAnsweringResult } from "../pipelines/logits.ts";
import type { TokenClassificationResult } from "../pipelines/pipeline.ts";

/** A sequence of token ids ready to batch. */
export interface TokenRow {
  /** Token ids, special tokens included. */
  ids: Int32Array;
  /** Segment ids. */
  typeIds: Int32Array;
  /** Attention mask, or `null` for all ones. */
  mask: Int32Array | null;
  /** Return the encoder's token vectors (`[length * hidden]`) instead of the pooled vector. */
  tokenVectors?: boolean;
  /** Leading tokens the pooling leaves out ([CLS] + prompt when include_prompt is false). */
  poolSkip?: number;
}

type Item = TokenRow | TextInput | QaPair;

/** Embeddings of one request and the tokens they took. */
export interface EmbedResult {
  /** One embedding per input. */
  embeddings: Float32Array[];
  /** Tokens run, special tokens included. */
  tokens: number;
}

/** Options of {@linkcode ServedModel.start}. */
export interface ServedModelOptions {
  /** Kernel threads per worker process (0: its share of the library default). */
  threads: number;
  /** Worker processes sharing the machine's cores (all instances of all models). */
  share: number;
  /** Longest an input may wait in the queue. */
  queueTimeoutMs: number;
  /** Longest text in characters. */
  maxTextChars: number;
  /** Seconds for `Retry-After`. */
  retryAfterS: number;
  /** Metrics registry. */
  metrics: Metrics;
  /** Structured log sink (worker events). */
  log: (fields: Record<string, unknown>) => void;
}

/** Options for tokenizing request texts. */
export interface TokenizeOptions {
  /** Cut texts over the limit instead of refusing them. */
  truncate: boolean;
  /** Which end a cut removes: `"right"` (default, keeps the start) or `"left"`. */
  direction?: "left" | "right";
  /**
   * Text put before every input (a resolved prompt, see {@linkcode ServedModel.prompt});
   * default the model's default prompt, if it declares one.
   */
  prompt?: string;
  /** Field name used in error messages, e.g. `"input"`. */
  param: string;
  /** Whether the field held a single text (errors then name `input`, not `input[0]`). */
  single: boolean;
}

const YIELD_EVERY_MS = 8;

function yieldToEventLoop(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** One model being served. */
export class ServedModel {
  /** Its configuration. */
  readonly config: ModelConfig;
  /** The main thread's tokenizer (same file as the worker's pipeline). */
  readonly tokenizer: BertTokenizer;
  /** What instance 0 loaded. */
  readonly info: ModelInfo;
  #instances: WorkerInstance[];
  #batcher: Batcher<Item, unknown>;
  #options: ServedModelOptions;

  private constructor(
    config: ModelConfig,
    tokenizer: BertTokenizer,
    instances: WorkerInstance[],
    options: ServedModelOptions,
  ) {
    this.config = config;
    this.tokenizer = tokenizer;
    this.#instances = instances;
    this.info = instances[0].info;
    this.#options = options;
    this.#batcher = new Batcher<Item, unknown>({
      maxBatch: config.maxBatch,
      maxBatchTokens: config.maxBatchTokens,
      maxWaitMs: config.maxWaitMs,
      buckets: config.buckets,
      maxQueue: config.maxQueue,
      queueTimeoutMs: options.queueTimeoutMs,
      executors: instances.map((instance) => this.#executor(instance)),
      onBatch: (r) => options.metrics.batch(config.name, r),
    });
    options.metrics.registerQueue(config.name, {
      depth: () => this.#batcher.depth,
      running: () => this.#batcher.running,
      workersLive: () => instances.filter((i) => i.live).length,
      workers: () => instances.length,
      workerResidentBytes: () => instances.reduce((s, i) => s + i.residentBytes(), 0),
      workerHeapBytes: () => instances.reduce((s, i) => s + i.memory().heapUsed, 0),
      workerHeapCommittedBytes: () => instances.reduce((s, i) => s + i.memory().heapTotal, 0),
      workerCollections: () => instances.reduce((s, i) => s + i.memory().collections, 0),
      workerCollectionSeconds: () => instances.reduce((s, i) => s + i.memory().gcMs / 1000, 0),
      workerExternalBytes: () => instances.reduce((s, i) => s + i.memory().external, 0),
    });
  }

  /**
   * Loads the tokenizer and starts `config.instances` workers, each loading the model.
   *
   * @throws Error naming the model when the tokenizer or the model cannot be loaded.
   */
  static async start(config: ModelConfig, options: ServedModelOptions): Promise<ServedModel> {
    const source = {
      name: config.name,
      task: config.task,
      model: config.model,
      fallback: config.fallback,
      tokenizer: config.tokenizer,
      kernel: config.kernel,
      pooling: config.pooling,
      normalize: config.normalize,
      maxLength: config.maxLength,
      maxBatch: config.maxBatch,
      maxBatchTokens: config.maxBatchTokens,
    };
    const start = {
      threads: options.threads,
      share: options.share,
      log: options.log,
      onFault: (fault: { model: string; cause: string }) =>
        options.metrics.workerFault(fault.model, fault.cause),
    };
    const first = await WorkerInstance.start(source, start);
    const instances = [first];
    try {
      // The others load the model the first one ended up with, so all instances agree.
      const pinned = { ...source, model: first.info.loaded, fallback: null };
      for (let i = 1; i < config.instances; i++) {
        instances.push(await WorkerInstance.start(pinned, start));
      }
      const tokenizer = await BertTokenizer.fromFile(first.info.tokenizerPath, {
        maxLength: config.maxLength,
      });
      return new ServedModel(config, tokenizer, instances, options);
    } catch (err) {
      for (const instance of instances) instance.close();
      throw err;
    }
  }

  /** Whether at least one worker of this model is live (none: readiness is false). */
  get live(): boolean {
    return this.#instances.some((i) => i.live);
  }

  /** Process ids of the live workers (for operators and the fault tests). */
  get workerPids(): number[] {
    return this.#instances.map((i) => i.pid).filter((p) => p !== null);
  }

  /** Inputs waiting in this model's queue. */
  get queueDepth(): number {
    return this.#batcher.depth;
  }

  /** Whether `count` more inputs fit in the queue now. */
  hasRoom(count = 1): boolean {
    return this.#batcher.hasRoom(count);
  }

  /** Longest sequence in tokens. */
  get maxLength(): number {
    return this.config.maxLength;
  }

  #executor(instance: WorkerInstance): (items: Item[], bucket: number) => Promise<unknown[]> {
    const run = this.#run(instance);
    // A batch given to an instance whose worker is restarting waits for it (bounded).
    return async (items, bucket) => {
      await instance.whenLive(this.#options.queueTimeoutMs);
      return await run(items, bucket);
    };
  }

  #run(instance: WorkerInstance): (items: Item[], bucket: number) => Promise<unknown[]> {
    const maxLength = this.config.maxLength;
    switch (this.config.task) {
      case "feature-extraction":
        return async (items) => {
          const rows = items as TokenRow[];
          const pooled = rows.filter((r) => !r.tokenVectors);
          const tokens = rows.filter((r) => r.tokenVectors);
          const out = new Map<TokenRow, Float32Array>();
          if (pooled.length > 0) {
            const vectors = await instance.embed(this.#pad(pooled));
            const hidden = vectors.length / pooled.length;
            pooled.forEach((r, i) => out.set(r, vectors.subarray(i * hidden, (i + 1) * hidden)));
          }
          if (tokens.length > 0) {
            const batch = this.#pad(tokens);
            const vectors = await instance.embedTokens(batch);
            const width = vectors.length / (tokens.length * batch.seq);
            tokens.forEach((r, i) => {
              const start = i * batch.seq * width;
              out.set(r, vectors.subarray(start, start + r.ids.length * width));
            });
          }
          return rows.map((r) => out.get(r)!);
        };
      case "text-classification":
        return (items) => instance.classify(items as TextInput[], { maxLength });
      case "question-answering":
        return (items) => instance.answer(items as QaPair[], { maxLength });
      case "token-classification":
        return (items) => instance.classifyTokens(items as string[], { maxLength });
    }
  }

  /**
   * The prompt text of `name` (a request's prompt_name), else of the model's default prompt,
   * else "".
   *
   * @throws HttpError 422 for an unknown prompt (TEI's message, listing the prompts).
   */
  prompt(name: unknown): string {
    if (name !== undefined && name !== null && typeof name !== "string") {
      throw new HttpError(400, `"prompt_name" must be a string, got ${typeName(name)}`, {
        param: "prompt_name",
      });
    }
    try {
      return resolvePrompt(this.info.embedding, name);
    } catch (err) {
      if (!(err instanceof PromptError)) throw err;
      throw new HttpError(422, err.message, { param: "prompt_name" });
    }
  }

  /** Pads rows into one batch (pad id, mask of ones unless given). */
  #pad(rows: TokenRow[]): TokenBatch {
    const seq = Math.max(...rows.map((r) => r.ids.length));
    const batch = rows.length;
    const inputIds = new Int32Array(batch * seq).fill(this.tokenizer.padTokenId);
    const attentionMask = new Int32Array(batch * seq);
    const tokenTypeIds = new Int32Array(batch * seq);
    rows.forEach((r, i) => {
      inputIds.set(r.ids, i * seq);
      tokenTypeIds.set(r.typeIds, i * seq);
      if (r.mask === null) attentionMask.fill(1, i * seq, i * seq + r.ids.length);
      else attentionMask.set(r.mask, i * seq);
    });
    const padded: TokenBatch = { inputIds, attentionMask, tokenTypeIds, batch, seq };
    if (rows.some((r) => (r.poolSkip ?? 0) > 0)) {
      const poolMask = Uint8Array.from(attentionMask);
      rows.forEach((r, i) => poolMask.fill(0, i * seq, i * seq + (r.poolSkip ?? 0)));
      padded.poolMask = poolMask;
    }
    return padded;
  }

  #name(options: TokenizeOptions, i: number): string {
    return options.single ? options.param : `${options.param}[${i}]`;
  }

  #checkChars(text: string, name: string): void {
    if (text.length > this.#options.maxTextChars) {
      throw new HttpError(
        422,
        `${name} has ${text.length} characters, over the limit of ${this.#options.maxTextChars}`,
        { param: name, code: "text_too_long" },
      );
    }
  }

  /**
   * Tokenizes texts with the model's limits.
   *
   * @throws HttpError 422 naming the input and quoting the limit when a text is too long.
   */
  async tokenize(inputs: TextInput[], options: TokenizeOptions): Promise<TokenRow[]> {
    const limit = this.config.maxLength;
    const prompt = options.prompt ?? this.prompt(undefined); // default: the model's default prompt
    // Only embedding models declare prompts and casing; their inputs are texts, not pairs.
    const embedding = this.info.embedding;
    const { texts, excluded: poolSkip } = embedding === null
      ? { texts: inputs, excluded: 0 }
      : applyPrompt(embedding, prompt, inputs as string[], this.tokenizer);
    const rows: TokenRow[] = [];
    let slice = performance.now();
    for (let i = 0; i < texts.length; i++) {
      const name = this.#name(options, i);
      for (const part of typeof texts[i] === "string" ? [texts[i] as string] : texts[i]) {
        this.#checkChars(part, name);
      }
      let encoded = this.tokenizer.encode(texts[i], { maxLength: Number.MAX_SAFE_INTEGER });
      if (encoded.ids.length > limit) {
        if (!options.truncate) {
          throw new HttpError(
            422,
            `${name} has ${encoded.ids.length} tokens, over the limit of ${limit} tokens of ` +
              `model "${this.config.name}"; shorten it or send "truncate": true`,
            { param: name, code: "context_length_exceeded" },
          );
        }
        encoded = this.tokenizer.encode(texts[i], {
          maxLength: limit,
          truncation: true,
          truncationSide: options.direction ?? "right",
        });
      }
      rows.push({
        ids: Int32Array.from(encoded.ids),
        typeIds: Int32Array.from(encoded.typeIds),
        mask: null,
        ...(poolSkip > 0 ? { poolSkip } : {}),
      });
      if (performance.now() - slice > YIELD_EVERY_MS) {
        await yieldToEventLoop();
        slice = performance.now();
      }
    }
    return rows;
  }

  /**
   * Checks texts for a text task: character limit, and the token limit unless truncating.
   * Returns each text's token count (capped at the limit) for bucketing.
   */
  async checkTexts(texts: TextInput[], options: TokenizeOptions): Promise<number[]> {
    const rows = await this.tokenize(texts, options);
    return rows.map((r) => r.ids.length);
  }

  /**
   * Checks question/context pairs. Long contexts are split into windows with a doc stride by
   * the pipeline, so only the question is held to a limit: the pipeline keeps its first
   * {@linkcode QA_MAX_QUESTION} word pieces, which the server does only when asked to truncate.
   * Returns each pair's token count (capped at the limit) for bucketing.
   */
  async checkPairs(pairs: QaPair[], options: TokenizeOptions): Promise<number[]> {
    const limit = this.config.maxLength;
    const special = this.tokenizer.numSpecialTokens(true);
    const lengths: number[] = [];
    let slice = performance.now();
    for (let i = 0; i < pairs.length; i++) {
      const name = this.#name(options, i);
      const q = `${options.single ? "" : `${name}.`}question`;
      const c = `${options.single ? "" : `${name}.`}context`;
      this.#checkChars(pairs[i].question, q);
      this.#checkChars(pairs[i].context, c);
      const questionTokens = this.tokenizer.tokenize(pairs[i].question).length;
      const contextTokens = this.tokenizer.tokenize(pairs[i].context).length;
      if (questionTokens === 0 || contextTokens === 0) {
        const which = questionTokens === 0 ? q : c;
        throw new HttpError(400, `${which} has no tokens; send some text`, { param: which });
      }
      if (questionTokens > QA_MAX_QUESTION && !options.truncate) {
        throw new HttpError(
          422,
          `${q} has ${questionTokens} tokens, over the limit of ${QA_MAX_QUESTION} question ` +
            `tokens; shorten it or send "truncate": true`,
          { param: q, code: "context_length_exceeded" },
        );
      }
      lengths.push(
        Math.min(limit, Math.min(questionTokens, QA_MAX_QUESTION) + contextTokens + special),
      );
      if (performance.now() - slice > YIELD_EVERY_MS) {
        await yieldToEventLoop();
        slice = performance.now();
      }
    }
    return lengths;
  }

  /**
   * Checks token id sequences given by the client: ids in the vocabulary, length within the
   * limit, type ids and mask of 0/1, first token attended. `single` names the one row `param`
   * rather than `param[0]`.
   *
   * @throws HttpError 400 or 422 naming the row.
   */
  checkTokenRows(rows: TokenRow[], param: string, single = false): void {
    const vocab = this.tokenizer.vocabSize;
    const limit = this.config.maxLength;
    rows.forEach((row, r) => {
      const name = single ? param : `${param}[${r}]`;
      if (row.ids.length === 0) {
        throw new HttpError(400, `${name} is empty; send at least one token`, { param: name });
      }
      if (row.ids.length > limit) {
        throw new HttpError(
          422,
          `${name} has ${row.ids.length} tokens, over the limit of ${limit} tokens of model "${this.config.name}"`,
          { param: name, code: "context_length_exceeded" },
        );
      }
      for (let i = 0; i < row.ids.length; i++) {
        const id = row.ids[i];
        if (!(id >= 0 && id < vocab)) {
          throw new HttpError(
            400,
            `${name}[${i}] is token id ${id}, outside the vocabulary 0..${vocab - 1}`,
            { param: `${name}[${i}]` },
          );
        }
        if (row.typeIds[i] !== 0 && row.typeIds[i] !== 1) {
          throw new HttpError(
            400,
            `token_type_ids of ${name} has ${row.typeIds[i]} at ${i}; expected 0 or 1`,
            { param: "token_type_ids" },
          );
        }
        if (row.mask !== null && row.mask[i] !== 0 && row.mask[i] !== 1) {
          throw new HttpError(
            400,
            `attention_mask of ${name} has ${row.mask[i]} at ${i}; expected 0 or 1`,
            { param: "attention_mask" },
          );
        }
      }
      if (row.mask !== null && row.mask[0] !== 1) {
        throw new HttpError(
          400,
          `attention_mask of ${name} starts with 0; the first token must be attended`,
          { param: "attention_mask" },
        );
      }
    });
  }

  #submit<R>(inputs: Sized<Item>[], signal: AbortSignal | undefined): Promise<R[]> {
    return this.#batcher.submit(inputs, signal).catch((err) => {
      throw this.#mapError(err);
    }) as Promise<R[]>;
  }

  #mapError(err: unknown): Error {
    const retry = { "retry-after": String(this.#options.retryAfterS) };
    if (err instanceof OverloadedError) {
      this.#options.metrics.rejected("queue_full");
      return new HttpError(429, `Model "${this.config.name}" is overloaded: ${err.message}`, {
        code: "queue_full",
        headers: retry,
      });
    }
    if (err instanceof QueueTimeoutError) {
      this.#options.metrics.rejected("queue_timeout");
      return new HttpError(503, err.message, { code: "queue_timeout", headers: retry });
    }
    if (err instanceof ClosedError) {
      return new HttpError(503, err.message, { code: "shutting_down", headers: retry });
    }
    if (err instanceof CancelledError) {
      return new HttpError(499, err.message, { code: "client_closed_request" });
    }
    if (err instanceof WorkerFaultError) {
      return new HttpError(
        503,
        `Model "${this.config.name}" lost this request: ${err.message}; it is restarting, retry`,
        { code: "worker_failed", headers: retry },
      );
    }
    if (err instanceof WorkerUnavailableError) {
      return new HttpError(503, err.message, { code: "worker_unavailable", headers: retry });
    }
    if (err instanceof HttpError) return err;
    return new HttpError(500, `Inference failed: ${(err as Error).message}`, {
      code: "inference_failed",
      cause: err,
    });
  }

  /**
   * Embeds token rows (already checked); one embedding per row (token vectors for rows that
   * ask for them), L2-normalised when `normalize` says so (default: the model's setting).
   */
  async embedRows(
    rows: TokenRow[],
    signal?: AbortSignal,
    options: { normalize?: boolean } = {},
  ): Promise<EmbedResult> {
    const inputs = rows.map((row) => ({ item: row, length: row.ids.length }));
    const embeddings = await this.#submit<Float32Array>(inputs, signal);
    if (options.normalize ?? this.info.embedding?.normalize ?? false) {
      const width = this.info.hiddenSize;
      for (const e of embeddings) l2NormalizeRows(e, e.length / width, width);
    }
    return { embeddings, tokens: rows.reduce((s, r) => s + r.ids.length, 0) };
  }

  /** Classifies texts or pairs (lengths from {@linkcode checkTexts}); all classes, best first. */
  classify(texts: TextInput[], lengths: number[], signal?: AbortSignal): Promise<LabelScore[][]> {
    return this.#submit(texts.map((t, i) => ({ item: t, length: lengths[i] })), signal);
  }

  /** Answers questions (lengths from {@linkcode checkPairs}). */
  answer(
    pairs: QaPair[],
    lengths: number[],
    signal?: AbortSignal,
  ): Promise<QuestionAnsweringResult[]> {
    return this.#submit(pairs.map((p, i) => ({ item: p, length: lengths[i] })), signal);
  }

  /** Classifies the tokens of texts (lengths from {@linkcode checkTexts}). */
  classifyTokens(
    texts: string[],
    lengths: number[],
    signal?: AbortSignal,
  ): Promise<TokenClassificationResult[][]> {
    return this.#submit(texts.map((t, i) => ({ item: t, length: lengths[i] })), signal);
  }

  /** Stops taking inputs and waits for queued and running batches to finish. */
  drain(): Promise<void> {
    return this.#batcher.close();
  }

  /** Stops the workers. */
  close(): void {
    this.#batcher[Symbol.dispose]();
    for (const instance of this.#instances) instance.close();
  }
}

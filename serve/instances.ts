/**
 * The main thread's side of the inference workers: one {@linkcode WorkerInstance} per model
 * instance, each a Deno Worker running `worker.ts` with its own copy of the model. A worker
 * that dies is restarted; the batch it was running fails with an error (500).
 *
 * @module
 */
import type {
  BackendCall,
  FromWorker,
  LabelScore,
  ModelInfo,
  ModelSource,
  QaAnswer,
  QaPair,
  TextTaskOptions,
  TokenBatch,
  TokenEntity,
  ToWorker,
} from "./backend.ts";
import type { TextInput } from "../models/tokenizer.ts";

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** Options of {@linkcode WorkerInstance.start}. */
export interface StartOptions {
  /** Kernel threads for the process (0: library default). */
  threads: number;
  /** Longest wait for the model to load, in milliseconds. */
  loadTimeoutMs?: number;
  /** Called with a line of text when the worker restarts or logs. */
  log?: (line: string) => void;
}

const WORKER_URL = new URL("./worker.ts", import.meta.url).href;

/** One inference worker with one model. */
export class WorkerInstance {
  #source: ModelSource;
  #options: StartOptions;
  #worker: Worker | null = null;
  #pending = new Map<number, Pending>();
  #nextId = 1;
  #info: ModelInfo | null = null;
  #closed = false;
  #restarts = 0;

  private constructor(source: ModelSource, options: StartOptions) {
    this.#source = source;
    this.#options = options;
  }

  /**
   * Starts a worker and loads the model in it.
   *
   * @throws Error with the worker's message when the model cannot be loaded.
   */
  static async start(source: ModelSource, options: StartOptions): Promise<WorkerInstance> {
    const instance = new WorkerInstance(source, options);
    instance.#info = await instance.#spawn();
    return instance;
  }

  /** What the worker loaded. */
  get info(): ModelInfo {
    return this.#info!;
  }

  /** Times the worker was restarted after dying. */
  get restarts(): number {
    return this.#restarts;
  }

  #spawn(): Promise<ModelInfo> {
    const worker = new Worker(WORKER_URL, { type: "module", name: `model:${this.#source.name}` });
    this.#worker = worker;
    return new Promise<ModelInfo>((resolve, reject) => {
      let loaded = false;
      const timeoutMs = this.#options.loadTimeoutMs ?? 300_000;
      const timer = setTimeout(() => {
        if (loaded) return;
        worker.terminate();
        reject(new Error(`Model "${this.#source.name}" did not load within ${timeoutMs} ms`));
      }, timeoutMs);
      worker.onmessage = (event: MessageEvent<FromWorker>) => {
        const message = event.data;
        switch (message.type) {
          case "loaded":
            loaded = true;
            clearTimeout(timer);
            resolve(message.info);
            break;
          case "load-failed":
            clearTimeout(timer);
            worker.terminate();
            reject(new Error(message.message));
            break;
          case "result":
          case "failed": {
            const pending = this.#pending.get(message.id);
            if (pending === undefined) return;
            this.#pending.delete(message.id);
            if (message.type === "result") pending.resolve(message.value);
            else pending.reject(new Error(message.message));
            break;
          }
        }
      };
      worker.onerror = (event: ErrorEvent) => {
        // Keep the error from taking down the main thread; fail what ran and restart.
        event.preventDefault();
        const reason = `Worker of model "${this.#source.name}" died: ${event.message}`;
        if (!loaded) {
          clearTimeout(timer);
          worker.terminate();
          reject(new Error(reason));
          return;
        }
        this.#restart(reason);
      };
      worker.onmessageerror = () => this.#restart("a message could not be deserialized");
      const load: ToWorker = { type: "load", source: this.#source, threads: this.#options.threads };
      worker.postMessage(load);
    });
  }

  #restart(reason: string): void {
    this.#worker?.terminate();
    this.#worker = null;
    const failed = [...this.#pending.values()];
    this.#pending.clear();
    for (const p of failed) p.reject(new Error(reason));
    if (this.#closed) return;
    this.#restarts++;
    this.#options.log?.(`${reason}; restarting it`);
    this.#spawn().then((info) => {
      this.#info = info;
    }).catch((err) => {
      this.#options.log?.(`Restart of model "${this.#source.name}" failed: ${err.message}`);
    });
  }

  #call<T>(call: BackendCall, transfer: Transferable[] = []): Promise<T> {
    if (this.#closed) return Promise.reject(new Error("The model instance is closed"));
    const worker = this.#worker;
    if (worker === null) {
      return Promise.reject(new Error(`Worker of model "${this.#source.name}" is restarting`));
    }
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      this.#pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      const message: ToWorker = { type: "call", id, call };
      worker.postMessage(message, transfer);
    });
  }

  /** Pooled embeddings `[batch * hiddenSize]`; the batch's arrays are transferred. */
  embed(batch: TokenBatch): Promise<Float32Array> {
    return this.#call<Float32Array>({ op: "embed", batch }, batchBuffers(batch));
  }

  /** Token vectors `[batch * seq * hiddenSize]`; the batch's arrays are transferred. */
  embedTokens(batch: TokenBatch): Promise<Float32Array> {
    return this.#call<Float32Array>({ op: "embedTokens", batch }, batchBuffers(batch));
  }

  /** All classes per text or text pair, best first. */
  classify(texts: TextInput[], options: TextTaskOptions): Promise<LabelScore[][]> {
    return this.#call({ op: "classify", texts, options });
  }

  /** The best span per pair. */
  answer(pairs: QaPair[], options: TextTaskOptions): Promise<QaAnswer[]> {
    return this.#call({ op: "answer", pairs, options });
  }

  /** Classified tokens per text. */
  classifyTokens(texts: string[], options: TextTaskOptions): Promise<TokenEntity[][]> {
    return this.#call({ op: "classifyTokens", texts, options });
  }

  /** Stops the worker; calls still pending fail. */
  close(): void {
    this.#closed = true;
    this.#worker?.terminate();
    this.#worker = null;
    for (const p of this.#pending.values()) p.reject(new Error("The model instance was closed"));
    this.#pending.clear();
  }
}

function batchBuffers(batch: TokenBatch): ArrayBuffer[] {
  return [
    batch.inputIds.buffer as ArrayBuffer,
    batch.attentionMask.buffer as ArrayBuffer,
    batch.tokenTypeIds.buffer as ArrayBuffer,
  ];
}

/**
 * The server's side of its inference workers: one {@linkcode WorkerInstance} per model
 * instance, each a child process running `worker.ts` with its own copy of the model and its
 * own kernel thread pool. A worker that dies (a native crash, the out-of-memory killer, a
 * signal) fails only the batch it was running, with {@linkcode WorkerFaultError} and the
 * reason; the instance then starts a new process (backing off while restarts keep failing),
 * and batches meanwhile wait for it ({@linkcode WorkerInstance.whenLive}). A failed batch is
 * never re-run: a request that crashed a worker would crash the next one too.
 *
 * @module
 */
import { NamedError } from "./errors.ts";
import type {
  BackendCall,
  FromWorker,
  LabelScore,
  ModelInfo,
  ModelSource,
  QaPair,
  TextTaskOptions,
  TokenBatch,
  ToWorker,
  WorkerMemory,
} from "./backend.ts";
import { encodeFrame, readFrames, TruncatedFrameError } from "./frames.ts";
import type { TextInput } from "../pipelines/tokenizer.ts";
import type { QuestionAnsweringResult } from "../pipelines/logits.ts";
import type { TokenClassificationResult } from "../pipelines/pipeline.ts";

/** A call lost because its worker process died while running it (the message says why). */
export class WorkerFaultError extends NamedError {}

/** No live worker came up in time for a batch (the instance keeps restarting). */
export class WorkerUnavailableError extends NamedError {}

/** What the instance reports when its worker dies. */
export interface WorkerFault {
  /** Served model name. */
  model: string;
  /** `signal:SIGSEGV`, `exit:134`, `protocol`. */
  cause: string;
  /** The sentence requests get. */
  reason: string;
  /** Process id of the dead worker. */
  pid: number;
}

/** Options of {@linkcode WorkerInstance.start}. */
export interface StartOptions {
  /** Kernel threads per worker (0: its share of the library default). */
  threads: number;
  /** Workers sharing the machine's cores (all instances of all models); default 1. */
  share?: number;
  /** Longest wait for the model to load, in milliseconds. */
  loadTimeoutMs?: number;
  /** Structured log sink (worker deaths, restarts, the worker's own stderr lines). */
  log?: (fields: Record<string, unknown>) => void;
  /** Called when a worker dies (after its calls failed, before the restart). */
  onFault?: (fault: WorkerFault) => void;
}

const WORKER_URL = new URL("./worker.ts", import.meta.url);
const ROOT_CONFIG = new URL("../deno.json", import.meta.url);
/** Restart delays while restarts keep failing (milliseconds); the last one repeats. */
const BACKOFF_MS = [0, 500, 1000, 2000, 5000, 10_000, 30_000];

interface Pending {
  resolve(value: unknown): void;
  reject(error: Error): void;
}

/** A worker's memory before its first answer, or with no worker live. */
const NO_MEMORY: Readonly<WorkerMemory> = {
  heapUsed: 0,
  heapTotal: 0,
  external: 0,
  collections: 0,
  gcMs: 0,
};

function workerArgs(): string[] {
  // --expose-gc: the worker collects dead batch buffers itself (`worker.ts`).
  const args = ["run", "-A", "--no-prompt", "--v8-flags=--expose-gc"];
  // Run from a checkout or a copy of the repository: the same import map and lock file.
  if (WORKER_URL.protocol === "file:") {
    try {
      Deno.statSync(ROOT_CONFIG);
      args.push("--config", ROOT_CONFIG.pathname);
    } catch { /* no deno.json next to the module: run without one */ }
  }
  args.push(WORKER_URL.href);
  return args;
}

function describeExit(status: Deno.CommandStatus): { cause: string; text: string } {
  if (status.signal !== null) {
    return { cause: `signal:${status.signal}`, text: `was killed by signal ${status.signal}` };
  }
  return { cause: `exit:${status.code}`, text: `exited with code ${status.code}` };
}

/** One child process and the calls it has been sent. */
class WorkerProcess {
  readonly child: Deno.ChildProcess;
  readonly pending = new Map<number, Pending>();
  /** The worker's last stderr line (it explains a death), or null. */
  lastStderr: string | null = null;
  /** The worker's JavaScript memory at its last answer. */
  memory: WorkerMemory = NO_MEMORY;
  /** Resolves with the exit status once the process is gone and its output is read. */
  readonly exited: Promise<Deno.CommandStatus>;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #onLoad: (message: FromWorker) => void;
  #protocolError: string | null = null;
  #malformed = false;

  constructor(onLoad: (message: FromWorker) => void, log: StartOptions["log"], name: string) {
    this.#onLoad = onLoad;
    this.child = new Deno.Command(Deno.execPath(), {
      args: workerArgs(),
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#writer = this.child.stdin.getWriter();
    const frames = this.#readFrames();
    const stderr = this.#readStderr(log, name);
    this.exited = Promise.all([this.child.status, frames, stderr]).then(([status]) => status);
  }

  /** Why the frame stream broke, if it did (the process is then killed). */
  get protocolError(): string | null {
    return this.#protocolError;
  }

  /**
   * Whether the worker broke the protocol (a malformed frame), so that the protocol is why it
   * ended; a stream cut inside a frame is the result of its end, whose cause is the exit status.
   */
  get brokeProtocol(): boolean {
    return this.#malformed;
  }

  async #readFrames(): Promise<void> {
    try {
      for await (const value of readFrames(this.child.stdout)) {
        const message = value as FromWorker;
        if (message.type === "result" || message.type === "failed") {
          const call = this.pending.get(message.id);
          if (call === undefined) continue;
          this.pending.delete(message.id);
          if (message.type === "result") {
            this.memory = message.memory;
            call.resolve(message.value);
          } else call.reject(new Error(message.message));
        } else {
          this.#onLoad(message);
        }
      }
    } catch (err) {
      this.#protocolError = (err as Error).message;
      this.#malformed = !(err instanceof TruncatedFrameError);
      this.kill("SIGKILL");
    }
  }

  async #readStderr(log: StartOptions["log"], name: string): Promise<void> {
    let rest = "";
    const decoder = new TextDecoder();
    for await (const chunk of this.child.stderr) {
      rest += decoder.decode(chunk, { stream: true });
      const lines = rest.split("\n");
      rest = lines.pop()!;
      for (const line of lines) this.#keep(line, log, name);
    }
    if (rest !== "") this.#keep(rest, log, name);
  }

  #keep(line: string, log: StartOptions["log"], name: string): void {
    if (line.trim() === "") return;
    if (line.startsWith('{"event":"slow_call"')) {
      // The worker's own report of a slow call (worker.ts), logged as an event of its own.
      try {
        log?.({ level: "warn", ...JSON.parse(line), model: name, pid: this.child.pid });
        return;
      } catch {
        // Not the worker's report after all: logged as a stderr line.
      }
    }
    this.lastStderr = line;
    log?.({ level: "warn", event: "worker_stderr", model: name, pid: this.child.pid, line });
  }

  send(message: ToWorker): void {
    // A write to a process that just died fails; its exit handler fails the call.
    this.#writer.write(encodeFrame(message)).catch(() => {});
  }

  kill(signal: Deno.Signal): void {
    try {
      this.child.kill(signal);
    } catch { /* already gone */ }
  }

  close(): void {
    this.#writer.close().catch(() => {});
    this.kill("SIGTERM");
  }
}

/** One inference worker with one model, restarted when it dies. */
export class WorkerInstance {
  #source: ModelSource;
  #options: StartOptions;
  #process: WorkerProcess | null = null;
  #nextId = 1;
  #info: ModelInfo | null = null;
  #pid: number | null = null;
  #closed = false;
  #restarts = 0;
  #failedStarts = 0;
  #live = false;
  #liveWaiters: (() => void)[] = [];
  #restartTimer: ReturnType<typeof setTimeout> | undefined;

  private constructor(source: ModelSource, options: StartOptions) {
    this.#source = source;
    this.#options = options;
  }

  /**
   * Starts a worker process and loads the model in it.
   *
   * @throws Error with the worker's message when the model cannot be loaded.
   */
  static async start(source: ModelSource, options: StartOptions): Promise<WorkerInstance> {
    const instance = new WorkerInstance(source, options);
    await instance.#spawn();
    return instance;
  }

  /** What the worker loaded. */
  get info(): ModelInfo {
    return this.#info!;
  }

  /** Times a worker of this instance died and was replaced. */
  get restarts(): number {
    return this.#restarts;
  }

  /** Whether a worker is loaded and serving now. */
  get live(): boolean {
    return this.#live;
  }

  /** Process id of the live worker, or `null` while it restarts. */
  get pid(): number | null {
    return this.#live ? this.#pid : null;
  }

  /**
   * Resolves once a worker is live (at once if one is).
   *
   * @throws WorkerUnavailableError when none is live within `timeoutMs`, or the instance closes.
   */
  whenLive(timeoutMs: number): Promise<void> {
    if (this.#live) return Promise.resolve();
    if (this.#closed) {
      return Promise.reject(new WorkerUnavailableError("The model instance is closed"));
    }
    return new Promise<void>((resolve, reject) => {
      const waiter = (): void => {
        clearTimeout(timer);
        if (this.#live) resolve();
        else reject(new WorkerUnavailableError("The model instance is closed"));
      };
      const timer = setTimeout(() => {
        this.#liveWaiters = this.#liveWaiters.filter((w) => w !== waiter);
        reject(
          new WorkerUnavailableError(
            `No worker of model "${this.#source.name}" came back within ${timeoutMs} ms after a fault`,
          ),
        );
      }, timeoutMs);
      this.#liveWaiters.push(waiter);
    });
  }

  #spawn(): Promise<ModelInfo> {
    return new Promise<ModelInfo>((resolve, reject) => {
      let settled = false;
      let loaded = false;
      const settle = (error: Error | null, info?: ModelInfo): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (error !== null) reject(error);
        else resolve(info!);
      };
      const process = new WorkerProcess(
        (message) => {
          if (message.type === "loaded") {
            loaded = true;
            this.#info = message.info;
            this.#pid = message.pid;
            this.#setLive(true);
            settle(null, message.info);
          } else if (message.type === "load-failed") {
            process.close();
            settle(new Error(message.message));
          }
        },
        this.#options.log,
        this.#source.name,
      );
      this.#process = process;
      const timeoutMs = this.#options.loadTimeoutMs ?? 300_000;
      const timer = setTimeout(() => {
        process.kill("SIGKILL");
        settle(new Error(`Model "${this.#source.name}" did not load within ${timeoutMs} ms`));
      }, timeoutMs);
      process.exited.then((status) => {
        const { cause, text } = describeExit(status);
        const last = process.lastStderr;
        const reason = `Worker ${process.child.pid} of model "${this.#source.name}" ${text}` +
          (process.protocolError !== null ? ` (${process.protocolError})` : "") +
          (last !== null ? `; its last output: ${last.slice(0, 300)}` : "");
        if (!settled) {
          settle(new Error(reason));
          return;
        }
        // A load that failed or timed out was reported by the start or restart that ran it.
        if (!loaded) return;
        this.#died(process, process.brokeProtocol ? "protocol" : cause, reason);
      });
      const load: ToWorker = {
        type: "load",
        source: this.#source,
        threads: this.#options.threads,
        share: this.#options.share ?? 1,
      };
      process.send(load);
    });
  }

  #setLive(live: boolean): void {
    this.#live = live;
    if (!live) return;
    this.#failedStarts = 0;
    const waiters = this.#liveWaiters;
    this.#liveWaiters = [];
    for (const w of waiters) w();
  }

  #died(process: WorkerProcess, cause: string, reason: string): void {
    if (this.#process !== process) return;
    this.#process = null;
    this.#setLive(false);
    const failed = [...process.pending.values()];
    process.pending.clear();
    for (const call of failed) call.reject(new WorkerFaultError(reason));
    if (this.#closed) return;
    this.#restarts++;
    const fault = { model: this.#source.name, cause, reason, pid: process.child.pid };
    this.#options.onFault?.(fault);
    this.#options.log?.({
      level: "error",
      event: "worker_died",
      ...fault,
      failed_calls: failed.length,
      restarts: this.#restarts,
    });
    this.#scheduleRestart();
  }

  #scheduleRestart(): void {
    const delay = BACKOFF_MS[Math.min(this.#failedStarts, BACKOFF_MS.length - 1)];
    this.#restartTimer = setTimeout(() => {
      if (this.#closed) return;
      const t0 = performance.now();
      this.#spawn().then((info) => {
        this.#options.log?.({
          level: "info",
          event: "worker_restarted",
          model: this.#source.name,
          pid: this.#pid,
          seconds: Math.round((performance.now() - t0) / 100) / 10,
          loaded: info.loaded,
        });
      }).catch((err) => {
        this.#failedStarts++;
        this.#options.log?.({
          level: "error",
          event: "worker_restart_failed",
          model: this.#source.name,
          message: (err as Error).message,
          retry_ms: BACKOFF_MS[Math.min(this.#failedStarts, BACKOFF_MS.length - 1)],
        });
        this.#scheduleRestart();
      });
    }, delay);
  }

  #call<T>(call: BackendCall): Promise<T> {
    if (this.#closed) return Promise.reject(new Error("The model instance is closed"));
    const process = this.#process;
    if (process === null || !this.#live) {
      return Promise.reject(
        new WorkerUnavailableError(`The worker of model "${this.#source.name}" is restarting`),
      );
    }
    const id = this.#nextId++;
    return new Promise<T>((resolve, reject) => {
      process.pending.set(id, { resolve: resolve as (v: unknown) => void, reject });
      process.send({ type: "call", id, call });
    });
  }

  /** Pooled embeddings `[batch * hiddenSize]`. */
  embed(batch: TokenBatch): Promise<Float32Array> {
    return this.#call<Float32Array>({ op: "embed", batch });
  }

  /** Token vectors `[batch * seq * hiddenSize]`. */
  embedTokens(batch: TokenBatch): Promise<Float32Array> {
    return this.#call<Float32Array>({ op: "embedTokens", batch });
  }

  /** All classes per text or text pair, best first. */
  classify(texts: TextInput[], options: TextTaskOptions): Promise<LabelScore[][]> {
    return this.#call({ op: "classify", texts, options });
  }

  /** The best span per pair. */
  answer(pairs: QaPair[], options: TextTaskOptions): Promise<QuestionAnsweringResult[]> {
    return this.#call({ op: "answer", pairs, options });
  }

  /** Classified tokens per text. */
  classifyTokens(
    texts: string[],
    options: TextTaskOptions,
  ): Promise<TokenClassificationResult[][]> {
    return this.#call({ op: "classifyTokens", texts, options });
  }

  /** Resident memory of the live worker in bytes (Linux `/proc`), or 0 when unknown. */
  residentBytes(): number {
    const pid = this.pid;
    if (pid === null) return 0;
    try {
      const pages = Number(Deno.readTextFileSync(`/proc/${pid}/statm`).split(" ")[1]);
      return Number.isFinite(pages) ? pages * 4096 : 0;
    } catch {
      return 0;
    }
  }

  /** The live worker's JavaScript memory at its last answer (zeros when none is live). */
  memory(): WorkerMemory {
    return this.#process?.memory ?? NO_MEMORY;
  }

  /** Stops the worker; calls still pending fail. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#restartTimer);
    const process = this.#process;
    this.#process = null;
    this.#setLive(false);
    for (const w of this.#liveWaiters) w();
    this.#liveWaiters = [];
    if (process === null) return;
    for (const p of process.pending.values()) p.reject(new Error("The model instance was closed"));
    process.pending.clear();
    process.close();
  }
}

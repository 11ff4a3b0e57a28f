/**
 * Entry of an inference worker process. The server starts one per model instance (see
 * `instances.ts`), so a native crash, an out-of-memory kill or a hang in a model takes down
 * that worker only, and each process has its own kernel thread pool. It loads one model through
 * the library's pipelines and runs the batches the server sends, one at a time.
 *
 * Protocol: frames (`frames.ts`) on stdin and stdout: {@linkcode ToWorker} in,
 * {@linkcode FromWorker} out (see `backend.ts`). stdout carries nothing else: console output
 * goes to stderr, which the server forwards to its log. The worker exits when stdin closes.
 *
 * @module
 */
import { cpuUsage } from "node:process";
import { threads } from "../ffi/library.ts";
import {
  type BackendCall,
  type FromWorker,
  type InferenceBackend,
  runCall,
  type ToWorker,
} from "./backend.ts";
import { encodeFrame, readFrames } from "./frames.ts";
import { loadPipelineBackend } from "./pipeline_backend.ts";

function keepStdoutForFrames(): void {
  const toStderr = (...args: unknown[]): void => console.error(...args);
  console.log = toStderr;
  console.info = toStderr;
  console.debug = toStderr;
}

function send(message: FromWorker): void {
  const frame = encodeFrame(message);
  let written = 0;
  // Bounded: every write moves at least one byte or throws (the server went away).
  while (written < frame.length) written += Deno.stdout.writeSync(frame.subarray(written));
}

/** A call that takes this long is reported on stderr (the server logs it as `slow_call`). */
export const SLOW_CALL_MS = 250;

/** The size of a call, for the slow-call report: batch x sequence, or the number of texts. */
function callSize(call: BackendCall): Record<string, number> {
  if (call.op === "embed" || call.op === "embedTokens") {
    return { batch: call.batch.batch, seq: call.batch.seq };
  }
  return { inputs: call.op === "answer" ? call.pairs.length : call.texts.length };
}

/**
 * Runs `call`; one that took {@linkcode SLOW_CALL_MS} or more is reported with the process's CPU
 * time over the same span: CPU close to threads x wall is work (a large batch), much less is
 * waiting (other processes on the cores, page faults, a pause).
 */
async function timedCall(backend: InferenceBackend, call: BackendCall): Promise<unknown> {
  const started = performance.now();
  const cpu = cpuUsage();
  try {
    return await runCall(backend, call);
  } finally {
    const ms = performance.now() - started;
    if (ms >= SLOW_CALL_MS) {
      const used = cpuUsage(cpu);
      const report = {
        event: "slow_call",
        op: call.op,
        ...callSize(call),
        ms: Math.round(ms),
        cpuMs: Math.round((used.user + used.system) / 1000),
        systemMs: Math.round(used.system / 1000),
        threads: threads(),
      };
      console.error(JSON.stringify(report));
    }
  }
}

/**
 * Bytes of memory outside the V8 heap (ArrayBuffers) a worker lets dead batches hold before it
 * collects them. V8 collects ArrayBuffers lazily: a worker answering a burst held up to 60 MiB
 * of dead batch buffers, and its resident memory grew with them and stayed (measured with
 * `/metrics` across a quiet-burst-quiet load; with a collection every 200 calls it stayed flat).
 */
export const EXTERNAL_SLACK_BYTES = 16 * 2 ** 20;

/**
 * Collects garbage after a call once external memory has grown {@linkcode EXTERNAL_SLACK_BYTES}
 * past the floor: what the loaded model holds, read at the first call (`gc` exists because
 * `instances.ts` starts workers with `--expose-gc`). V8 frees dead ArrayBuffers on a background
 * sweeper, so what a collection left live is read at the next call. When that reading is still
 * well above the floor after two collections in a row, it is live memory and becomes the floor,
 * so a model that legitimately grows is not collected after every call. (One high reading is
 * not enough: in the eleventh soak a single reading, likely buffers not yet swept, raised the
 * floor after minute 8 and the worker never collected again.)
 */
export class ExternalMemoryCollector {
  #floor = -1;
  #collected = false;
  #highAfterCollection = 0;
  #gc: (() => void) | undefined;
  #slack: number;
  /** Collections run, and their milliseconds in all. */
  collections = 0;
  milliseconds = 0;

  /** Defaults: the exposed `gc` and {@linkcode EXTERNAL_SLACK_BYTES}. */
  constructor(options: { gc?: () => void; slackBytes?: number } = {}) {
    this.#gc = options.gc ?? (globalThis as { gc?: () => void }).gc;
    this.#slack = options.slackBytes ?? EXTERNAL_SLACK_BYTES;
  }

  /** The external bytes counted as live (-1 before the first call). */
  get floor(): number {
    return this.#floor;
  }

  /**
   * Collects if dead buffers may exceed the slack; `external` is the call's reading of
   * `Deno.memoryUsage().external` (the one its answer reports).
   */
  afterCall(external: number): void {
    if (this.#gc === undefined) return;
    if (this.#floor < 0) {
      this.#floor = external;
      return;
    }
    if (this.#collected) {
      this.#collected = false;
      const high = external > this.#floor + this.#slack / 2;
      this.#highAfterCollection = high ? this.#highAfterCollection + 1 : 0;
      if (this.#highAfterCollection >= 2) {
        this.#floor = external;
        this.#highAfterCollection = 0;
      }
      return;
    }
    if (external <= this.#floor + this.#slack) return;
    const started = performance.now();
    this.#gc();
    this.milliseconds += performance.now() - started;
    this.collections++;
    this.#collected = true;
  }
}

let collector: ExternalMemoryCollector | null = null;

/** Kernel threads for this worker: as asked, else its share of the library default. */
function threadCount(asked: number, share: number): number {
  return asked > 0 ? asked : Math.max(1, Math.floor(threads() / Math.max(1, share)));
}

async function handle(message: ToWorker, backend: InferenceBackend | null) {
  if (message.type === "load") {
    try {
      const loaded = await loadPipelineBackend(message.source, {
        threads: threadCount(message.threads, message.share),
      });
      (globalThis as { gc?: () => void }).gc?.(); // what loading left behind
      collector = new ExternalMemoryCollector();
      send({ type: "loaded", info: loaded.info, pid: Deno.pid });
      return loaded;
    } catch (err) {
      send({ type: "load-failed", message: (err as Error).message });
      return backend;
    }
  }
  if (backend === null) {
    send({ type: "failed", id: message.id, message: "The model is not loaded" });
    return backend;
  }
  let external: number;
  try {
    const value = await timedCall(backend, message.call);
    const usage = Deno.memoryUsage();
    external = usage.external;
    const { heapUsed, heapTotal } = usage;
    const collections = collector?.collections ?? 0;
    const gcMs = collector?.milliseconds ?? 0;
    const memory = { heapUsed, heapTotal, external, collections, gcMs };
    send({ type: "result", id: message.id, value, memory });
  } catch (err) {
    send({ type: "failed", id: message.id, message: (err as Error).message });
    external = Deno.memoryUsage().external;
  }
  collector?.afterCall(external); // after the answer is sent, so no request waits for it
  return backend;
}

async function main(): Promise<void> {
  keepStdoutForFrames();
  let backend: InferenceBackend | null = null;
  for await (const message of readFrames(Deno.stdin.readable)) {
    backend = await handle(message as ToWorker, backend);
  }
  backend?.dispose();
}

if (import.meta.main) {
  await main();
  Deno.exit(0);
}

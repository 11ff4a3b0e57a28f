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
  try {
    const value = await timedCall(backend, message.call);
    const { heapUsed, external } = Deno.memoryUsage();
    send({ type: "result", id: message.id, value, memory: { heapUsed, external } });
  } catch (err) {
    send({ type: "failed", id: message.id, message: (err as Error).message });
  }
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

/**
 * The Python peers (ONNX Runtime, OpenVINO, DeepSparse, PyTorch) as long-lived subprocesses.
 *
 * Each peer is `bench/peers/peer_runner.py --serve` running in the venv that
 * tools/peers/setup_peers.ts created (`.cache/venv/peers` for ort/openvino/torch,
 * `.cache/venv/deepsparse` for deepsparse). The model is loaded once; every
 * {@linkcode PythonPeer.run} then measures N iterations, so that a harness can interleave
 * runtimes (A B A B) without reloading. Failures to start or run throw {@linkcode PeerError}
 * carrying the peer's stderr.
 *
 * ```ts
 * import { PythonPeer } from "./bench/peers/mod.ts";
 * await using peer = await PythonPeer.start({
 *   runtime: "openvino",
 *   model: ".cache/test-models/bert-mini.onnx",
 *   batch: 1,
 *   seq: 128,
 *   threads: 2,
 * });
 * const r = await peer.run({ iterations: 10, warmup: 2 });
 * console.log(peer.info.versions, r.medianMs, r.p90Ms);
 * ```
 *
 * @module
 */
import type { LatencyStats } from "./ort_node.ts";

/** The Python runtimes peer_runner.py drives. */
export type PeerRuntime = "ort" | "openvino" | "deepsparse" | "torch";

/** Every {@linkcode PeerRuntime}, in report order. */
export const PEER_RUNTIMES: readonly PeerRuntime[] = Object.freeze([
  "ort",
  "openvino",
  "deepsparse",
  "torch",
]);

/** Name of the venv under `.cache/venv/` that holds a runtime. */
export type PeerVenv = "peers" | "deepsparse";

const REPO_ROOT = new URL("../../", import.meta.url);
const RUNNER = new URL("./peer_runner.py", import.meta.url);

function urlPath(url: URL): string {
  return decodeURIComponent(url.pathname);
}

/** Path of bench/peers/peer_runner.py. */
export const PEER_RUNNER_PATH: string = urlPath(RUNNER);

/** Default folder of the venvs: `<repo>/.cache/venv`. */
export const DEFAULT_VENV_ROOT: string = urlPath(new URL(".cache/venv", REPO_ROOT));

/** The venv a runtime lives in: DeepSparse has its own (it pins numpy<2 and onnx 1.14). */
export function peerVenv(runtime: PeerRuntime): PeerVenv {
  assertRuntime(runtime);
  return runtime === "deepsparse" ? "deepsparse" : "peers";
}

/** Python interpreter of a runtime's venv (`<venvRoot>/<venv>/bin/python`). */
export function peerPython(runtime: PeerRuntime, venvRoot: string = DEFAULT_VENV_ROOT): string {
  return `${venvRoot}/${peerVenv(runtime)}/bin/python`;
}

function assertRuntime(runtime: string): asserts runtime is PeerRuntime {
  if (!(PEER_RUNTIMES as readonly string[]).includes(runtime)) {
    throw new TypeError(
      `Unknown peer runtime '${runtime}', expected one of ${PEER_RUNTIMES.join(", ")}`,
    );
  }
}

/** Where a peer failed. */
export type PeerStage =
  | "spawn"
  | "import"
  | "inspect"
  | "inputs"
  | "load"
  | "convert"
  | "run"
  | "command"
  | "protocol"
  | "timeout"
  | "exit";

/** A peer that failed to start, load, or run; `stderr` holds the tail of its stderr. */
export class PeerError extends Error {
  /** The runtime that failed. */
  readonly runtime: PeerRuntime;
  /** Where it failed. */
  readonly stage: PeerStage;
  /** The last 64 KiB of the peer's stderr (empty when it never started). */
  readonly stderr: string;
  /** Exit code, or `null` while alive or when killed by a signal. */
  readonly exitCode: number | null;
  /** Terminating signal, if any. */
  readonly signal: string | null;

  /** Builds the error; `message` should already name the runtime. */
  constructor(
    message: string,
    details: {
      runtime: PeerRuntime;
      stage: PeerStage;
      stderr?: string;
      exitCode?: number | null;
      signal?: string | null;
      cause?: unknown;
    },
  ) {
    super(message, { cause: details.cause });
    this.name = "PeerError";
    this.runtime = details.runtime;
    this.stage = details.stage;
    this.stderr = details.stderr ?? "";
    this.exitCode = details.exitCode ?? null;
    this.signal = details.signal ?? null;
  }
}

/**
 * How a child process ended, for error messages: "exited with code N", or "was killed by
 * SIGNAL", with a hint for SIGKILL (what the kernel's out-of-memory killer sends).
 */
export function exitText(status: Deno.CommandStatus): string {
  if (!status.signal) return `exited with code ${status.code}`;
  const hint = status.signal === "SIGKILL"
    ? " (from outside: the kernel's out-of-memory killer sends SIGKILL when memory runs out)"
    : "";
  return `was killed by ${status.signal}${hint}`;
}

/**
 * The most telling line of a failed peer's stderr: a native assertion (DeepSparse aborts with
 * `Assertion at ...`), else the last line of a Python traceback, else the last non-empty line.
 */
export function stderrSummary(stderr: string): string {
  const lines = stderr.split("\n").map((l) => l.trimEnd()).filter((l) => l.trim() !== "");
  const assertion = lines.find((l) => /^Assertion at /.test(l.trim()));
  if (assertion) return assertion.trim();
  for (let i = lines.length - 1; i >= 0; i--) {
    const l = lines[i];
    if (!/^\s/.test(l) && /^[A-Za-z_.]+(Error|Exception|Failure)\b/.test(l)) return l.trim();
  }
  return lines.length ? lines[lines.length - 1].trim() : "";
}

/** What to load, and how: the settings every runtime gets the same. */
export interface PeerLoadOptions {
  /** Which runtime. */
  runtime: PeerRuntime;
  /** ONNX file; omit with `selfTest`. */
  model?: string;
  /** Use peer_runner.py's tiny generated model instead of `model`. */
  selfTest?: boolean;
  /** Batch size (default 1). */
  batch?: number;
  /** Sequence length (default 128). */
  seq?: number;
  /** Threads per stream (default 1). */
  threads?: number;
  /** Concurrent inference loops (default 1): instances x threads for throughput runs. */
  streams?: number;
  /** Token id seed (default 1; see `bertInputIds` in ort_node.ts). */
  seed?: number;
  /** Folder holding the venvs (default `<repo>/.cache/venv`). */
  venvRoot?: string;
  /** Python interpreter to use instead of the venv's. */
  python?: string;
  /** Milliseconds allowed for start-up and model loading (default 300000). */
  startTimeoutMs?: number;
}

/** How long to measure: `iterations` or `seconds` per stream, after `warmup` iterations. */
export interface PeerRunOptions {
  /** Timed iterations per stream. */
  iterations?: number;
  /** Or: a time budget in seconds. */
  seconds?: number;
  /** Untimed iterations first (default 0 in serve mode). */
  warmup?: number;
  /**
   * Milliseconds the peer sleeps before warming up (default 0). When interleaving runtimes, give
   * ~200 so that the previous runtime's worker threads (ORT, OpenMP, DeepSparse spin after a run)
   * have gone idle and do not steal the cores being measured.
   */
  settleMs?: number;
  /** Milliseconds allowed for this command (default 600000). */
  timeoutMs?: number;
}

/** One model input as peer_runner.py saw it. */
export interface PeerModelInput {
  /** Input name. */
  name: string;
  /** `int64` or `int32`. */
  dtype: string;
  /** Declared dims: numbers or symbolic names. */
  dims: (number | string)[];
}

/** What a peer loaded, with which versions and effective settings. */
export interface PeerInfo {
  /** The runtime. */
  runtime: PeerRuntime;
  /** Batch size. */
  batch: number;
  /** Sequence length. */
  seq: number;
  /** Threads per stream. */
  threads: number;
  /** Streams. */
  streams: number;
  /** Token id seed. */
  seed: number;
  /** Package versions (runtime, python, numpy, onnx, ...). */
  versions: Record<string, string>;
  /** Effective runtime settings as the runtime reports them. */
  config: Record<string, unknown>;
  /** The model. */
  model: {
    /** Absolute path. */
    path: string;
    /** File size. */
    bytes: number;
    /** Inputs. */
    inputs: PeerModelInput[];
    /** Output names. */
    outputs: string[];
    /** Default-domain opset. */
    opset: number;
    /** `fp32`, `dynamic-int8`, `qdq-int8` or `qoperator-int8`. */
    quantization: string;
    /** Graph node count. */
    nodeCount: number;
  };
  /** Sum of all input ids (to check the generator matches `bertInputIds`). */
  inputIdsSum: number;
  /** Model load/compile time. */
  loadMs: number;
}

/** Summary of the first output of the last iteration of stream 0. */
export interface PeerOutputSummary {
  /** Shape. */
  shape: number[];
  /** Mean (null if not finite). */
  mean: number | null;
  /** Mean of absolute values (null if not finite). */
  meanAbs: number | null;
  /** Count of NaN/Inf values. */
  nonFinite: number;
  /** First (up to 4) values. */
  first: (number | null)[];
}

/**
 * One measurement: the latency statistics of `latencyStats` (numpy's linear-interpolation
 * percentiles) over every stream's iterations (`latenciesMs` stream after stream), and more.
 */
export interface PeerRunResult extends LatencyStats {
  /** Timed iterations, all streams together. */
  iterations: number;
  /** `batch * iterations / wall` (the streams run at once). */
  itemsPerS: number;
  /** Wall time of the timed part. */
  wallS: number;
  /** Warmup iterations run before timing. */
  warmup: number;
  /** Streams. */
  streams: number;
  /** Iterations of each stream. */
  perStreamIterations: number[];
  /** Output check values (absent if nothing ran). */
  output: PeerOutputSummary | null;
}

type Json = Record<string, unknown>;

function num(obj: Json, key: string, what: string): number {
  const v = obj[key];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new TypeError(`Peer reply field '${key}' of ${what} is '${String(v)}', not a number`);
  }
  return v;
}

function parseInfo(o: Json): PeerInfo {
  const m = (o.model ?? {}) as Json;
  return {
    runtime: o.runtime as PeerRuntime,
    batch: num(o, "batch", "ready"),
    seq: num(o, "seq", "ready"),
    threads: num(o, "threads", "ready"),
    streams: num(o, "streams", "ready"),
    seed: num(o, "seed", "ready"),
    versions: (o.versions ?? {}) as Record<string, string>,
    config: (o.config ?? {}) as Record<string, unknown>,
    model: {
      path: String(m.path),
      bytes: num(m, "bytes", "model"),
      inputs: (m.inputs ?? []) as PeerModelInput[],
      outputs: (m.outputs ?? []) as string[],
      opset: num(m, "opset", "model"),
      quantization: String(m.quantization),
      nodeCount: num(m, "node_count", "model"),
    },
    inputIdsSum: num(o, "input_ids_sum", "ready"),
    loadMs: num(o, "load_ms", "ready"),
  };
}

function parseResult(o: Json): PeerRunResult {
  const lat = o.latencies_ms;
  if (!Array.isArray(lat) || lat.some((x) => typeof x !== "number")) {
    throw new TypeError("Peer reply field 'latencies_ms' is not a list of numbers");
  }
  const out = o.output as Json | undefined;
  return {
    iterations: num(o, "iterations", "result"),
    latenciesMs: lat as number[],
    medianMs: num(o, "median_ms", "result"),
    p90Ms: num(o, "p90_ms", "result"),
    p99Ms: num(o, "p99_ms", "result"),
    meanMs: num(o, "mean_ms", "result"),
    minMs: num(o, "min_ms", "result"),
    maxMs: num(o, "max_ms", "result"),
    itemsPerS: num(o, "items_per_s", "result"),
    wallS: num(o, "wall_s", "result"),
    warmup: num(o, "warmup", "result"),
    streams: num(o, "streams", "result"),
    perStreamIterations: (o.per_stream_iterations ?? []) as number[],
    output: out
      ? {
        shape: out.shape as number[],
        mean: out.mean as number | null,
        meanAbs: out.mean_abs as number | null,
        nonFinite: out.non_finite as number,
        first: out.first as (number | null)[],
      }
      : null,
  };
}

function checkCount(name: string, v: number | undefined, max: number): void {
  if (v === undefined) return;
  if (!Number.isInteger(v) || v < 1 || v > max) {
    throw new RangeError(`${name} must be an integer in [1, ${max}], got '${v}'`);
  }
}

function runnerArgs(o: PeerLoadOptions): string[] {
  assertRuntime(o.runtime);
  checkCount("Batch", o.batch, 1 << 16);
  checkCount("Sequence length", o.seq, 1 << 16);
  checkCount("Threads", o.threads, 256);
  checkCount("Streams", o.streams, 64);
  if (o.seed !== undefined && (!Number.isInteger(o.seed) || o.seed < 0)) {
    throw new RangeError(`Seed must be a non-negative integer, got '${o.seed}'`);
  }
  if (!o.selfTest && !o.model) throw new TypeError("Peer options need 'model' or 'selfTest'");
  const args = [
    "-u",
    PEER_RUNNER_PATH,
    "--runtime",
    o.runtime,
    "--batch",
    String(o.batch ?? 1),
    "--seq",
    String(o.seq ?? 128),
    "--threads",
    String(o.threads ?? 1),
    "--streams",
    String(o.streams ?? 1),
    "--seed",
    String(o.seed ?? 1),
  ];
  if (o.selfTest) args.push("--self-test");
  else args.push("--model", o.model!);
  return args;
}

const STDERR_CAP = 64 * 1024;

/** Reads a byte stream into a bounded tail string. */
class TailBuffer {
  #text = "";
  readonly done: Promise<void>;
  constructor(stream: ReadableStream<Uint8Array>) {
    this.done = (async () => {
      const decoder = new TextDecoder();
      try {
        for await (const chunk of stream) {
          this.#text += decoder.decode(chunk, { stream: true });
          if (this.#text.length > 2 * STDERR_CAP) this.#text = this.#text.slice(-STDERR_CAP);
        }
      } catch {
        // The stream errors when the child is killed; what was read is kept.
      }
    })();
  }
  get text(): string {
    return this.#text.length > STDERR_CAP ? this.#text.slice(-STDERR_CAP) : this.#text;
  }
}

/** Splits a byte stream into lines. */
class LineReader {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }
  /** Next line, or `null` at end of stream. */
  async next(): Promise<string | null> {
    while (true) {
      const nl = this.#buffer.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.#reader.read();
      if (done) {
        if (this.#buffer === "") return null;
        const rest = this.#buffer;
        this.#buffer = "";
        return rest;
      }
      this.#buffer += value;
    }
  }
  cancel(): void {
    this.#reader.cancel().catch(() => {});
  }
}

const TIMEOUT = Symbol("timeout");

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | typeof TIMEOUT> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<typeof TIMEOUT>((resolve) => {
    timer = setTimeout(() => resolve(TIMEOUT), ms);
  });
  try {
    return await Promise.race([p, t]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * A Python peer process serving one loaded model. Start it with {@linkcode PythonPeer.start};
 * end it with {@linkcode PythonPeer.close} (or `await using`).
 */
export class PythonPeer implements AsyncDisposable {
  #child: Deno.ChildProcess;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;
  #lines: LineReader;
  #stderr: TailBuffer;
  #info: PeerInfo;
  #runtime: PeerRuntime;
  #busy = false;
  #closed = false;
  #status: Promise<Deno.CommandStatus>;

  private constructor(
    runtime: PeerRuntime,
    child: Deno.ChildProcess,
    lines: LineReader,
    stderr: TailBuffer,
    info: PeerInfo,
  ) {
    this.#runtime = runtime;
    this.#child = child;
    this.#stdin = child.stdin.getWriter();
    this.#lines = lines;
    this.#stderr = stderr;
    this.#info = info;
    this.#status = child.status;
  }

  /** Process id of the peer. */
  get pid(): number {
    return this.#child.pid;
  }

  /**
   * Spawns peer_runner.py in the runtime's venv and waits until the model is loaded. Throws
   * {@linkcode PeerError} (with the peer's stderr) when Python is missing, the runtime does not
   * import, the model does not load, or the process dies (DeepSparse aborts on graphs it cannot
   * plan).
   */
  static async start(options: PeerLoadOptions): Promise<PythonPeer> {
    const args = runnerArgs(options);
    const runtime = options.runtime;
    const python = options.python ?? peerPython(runtime, options.venvRoot);
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(python, {
        args: [...args, "--serve"],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: { PYTHONUNBUFFERED: "1", NM_DISABLE_ANALYTICS: "1" },
      }).spawn();
    } catch (err) {
      throw new PeerError(
        `Peer '${runtime}' cannot start '${python}': ${(err as Error).message} ` +
          "(run tools/peers/setup_peers.ts to create the venvs)",
        { runtime, stage: "spawn", cause: err },
      );
    }
    const stderr = new TailBuffer(child.stderr);
    const lines = new LineReader(child.stdout);
    const fail = async (stage: PeerStage, what: string): Promise<never> => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      const status = await child.status;
      await withTimeout(stderr.done, 2000);
      lines.cancel();
      const summary = stderrSummary(stderr.text);
      throw new PeerError(
        `Peer '${runtime}' ${what}` + (summary ? `: ${summary}` : ""),
        {
          runtime,
          stage,
          stderr: stderr.text,
          exitCode: status.signal ? null : status.code,
          signal: status.signal,
        },
      );
    };
    const line = await withTimeout(lines.next(), options.startTimeoutMs ?? 300_000);
    if (line === TIMEOUT) return await fail("timeout", "did not load the model in time");
    if (line === null) {
      const status = await child.status;
      await withTimeout(stderr.done, 2000);
      return await fail("exit", `${exitText(status)} while loading`);
    }
    let reply: Json;
    try {
      reply = JSON.parse(line);
    } catch {
      return await fail("protocol", `printed a non-JSON line '${line.slice(0, 200)}'`);
    }
    if (reply.ok !== true) {
      const stage = (reply.stage as PeerStage | undefined) ?? "load";
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
      const status = await child.status;
      await withTimeout(stderr.done, 2000);
      throw new PeerError(`Peer '${runtime}' failed at ${stage}: ${String(reply.error)}`, {
        runtime,
        stage,
        stderr: stderr.text,
        exitCode: status.code,
        signal: status.signal,
      });
    }
    return new PythonPeer(runtime, child, lines, stderr, parseInfo(reply));
  }

  /** What was loaded, versions and effective settings. */
  get info(): PeerInfo {
    return this.#info;
  }

  /** The runtime. */
  get runtime(): PeerRuntime {
    return this.#runtime;
  }

  /** The tail of the peer's stderr so far. */
  get stderr(): string {
    return this.#stderr.text;
  }

  async #request(cmd: Json, timeoutMs: number): Promise<Json> {
    if (this.#closed) {
      throw new PeerError(`Peer '${this.#runtime}' is closed`, {
        runtime: this.#runtime,
        stage: "command",
      });
    }
    if (this.#busy) {
      throw new PeerError(`Peer '${this.#runtime}' is already running a command`, {
        runtime: this.#runtime,
        stage: "command",
      });
    }
    this.#busy = true;
    try {
      try {
        await this.#stdin.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
      } catch (err) {
        return await this.#died("exit", "closed its input", err);
      }
      const line = await withTimeout(this.#lines.next(), timeoutMs);
      if (line === TIMEOUT) {
        return await this.#died("timeout", `did not answer within ${timeoutMs} ms`);
      }
      if (line === null) return await this.#died("exit", "exited while running");
      try {
        return JSON.parse(line);
      } catch (err) {
        return await this.#died("protocol", `printed a non-JSON line '${line.slice(0, 200)}'`, err);
      }
    } finally {
      this.#busy = false;
    }
  }

  async #died(stage: PeerStage, what: string, cause?: unknown): Promise<never> {
    this.#closed = true;
    // Whether it had already ended on its own says why (a SIGKILL we send would hide that).
    const early = stage === "timeout" ? TIMEOUT : await withTimeout(this.#status, 1000);
    try {
      this.#child.kill("SIGKILL");
    } catch { /* already gone */ }
    const status = await this.#status;
    await withTimeout(this.#stderr.done, 2000);
    const summary = stderrSummary(this.#stderr.text);
    throw new PeerError(
      `Peer '${this.#runtime}' ${what}` + (early === TIMEOUT ? "" : `: it ${exitText(early)}`) +
        (summary ? `: ${summary}` : ""),
      {
        runtime: this.#runtime,
        stage,
        stderr: this.#stderr.text,
        exitCode: status.signal ? null : status.code,
        signal: status.signal,
        cause,
      },
    );
  }

  /** Measures `iterations` (or `seconds`) per stream; throws {@linkcode PeerError}. */
  async run(options: PeerRunOptions): Promise<PeerRunResult> {
    const { iterations, seconds, warmup = 0, settleMs = 0, timeoutMs = 600_000 } = options;
    if ((iterations === undefined) === (seconds === undefined)) {
      throw new TypeError("Give exactly one of 'iterations' or 'seconds'");
    }
    checkCount("Iterations", iterations, 1_000_000);
    if (seconds !== undefined && !(seconds > 0 && seconds <= 3600)) {
      throw new RangeError(`Seconds must be in (0, 3600], got '${seconds}'`);
    }
    if (!Number.isInteger(warmup) || warmup < 0 || warmup > 10_000) {
      throw new RangeError(`Warmup must be an integer in [0, 10000], got '${warmup}'`);
    }
    if (!(settleMs >= 0 && settleMs <= 10_000)) {
      throw new RangeError(`Settle time must be in [0, 10000] ms, got '${settleMs}'`);
    }
    const cmd: Json = { cmd: "run", warmup, settle_ms: settleMs };
    if (iterations !== undefined) cmd.iterations = iterations;
    else cmd.seconds = seconds;
    const reply = await this.#request(cmd, timeoutMs);
    if (reply.ok !== true) {
      throw new PeerError(`Peer '${this.#runtime}' run failed: ${String(reply.error)}`, {
        runtime: this.#runtime,
        stage: (reply.stage as PeerStage | undefined) ?? "run",
        stderr: this.#stderr.text,
      });
    }
    return parseResult(reply);
  }

  /** Sends a raw command object (for protocol tests); returns the parsed reply. */
  async send(cmd: Record<string, unknown>, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    return await this.#request(cmd, timeoutMs);
  }

  /** Asks the peer to quit (killing it after 10 s) and waits for it to exit. */
  async close(): Promise<void> {
    if (this.#closed) return;
    try {
      await withTimeout(this.#request({ cmd: "quit" }, 10_000), 10_000);
    } catch {
      // A peer that died or hung is killed below.
    }
    this.#closed = true;
    try {
      await this.#stdin.close();
    } catch { /* already closed */ }
    if ((await withTimeout(this.#status, 5000)) === TIMEOUT) {
      try {
        this.#child.kill("SIGKILL");
      } catch { /* already gone */ }
      await this.#status;
    }
    this.#lines.cancel();
    await withTimeout(this.#stderr.done, 2000);
  }

  /** Same as {@linkcode PythonPeer.close}. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** {@linkcode PeerInfo} and one {@linkcode PeerRunResult} together. */
export interface PeerOnceResult {
  /** What was loaded. */
  info: PeerInfo;
  /** The measurement. */
  result: PeerRunResult;
}

/** Starts a peer, measures once, and closes it. Throws {@linkcode PeerError}. */
export async function runPeerOnce(
  options: PeerLoadOptions & PeerRunOptions,
): Promise<PeerOnceResult> {
  const peer = await PythonPeer.start(options);
  try {
    const result = await peer.run(options);
    return { info: peer.info, result };
  } finally {
    await peer.close();
  }
}

/** Status of one runtime as tools/peers/setup_peers.ts recorded it. */
export interface PeerRuntimeStatus {
  /** Whether it imported and ran the self-test model. */
  ok: boolean;
  /** The venv it lives in. */
  venv: PeerVenv;
  /** Versions reported by the self-test (when it ran). */
  versions?: Record<string, string>;
  /** Where it failed: `install`, `skipped`, or a {@linkcode PeerStage}. */
  stage?: string;
  /** The error (first line of the cause), when not ok. */
  error?: string;
  /** Tail of the failing process's output, when not ok. */
  detail?: string;
}

/** The file tools/peers/setup_peers.ts writes: `<venvRoot>/status.json`. */
export interface PeerSetupStatus {
  /** When the setup ran (ISO 8601). */
  date: string;
  /** Python used to create the venvs. */
  python: string;
  /** One entry per runtime. */
  runtimes: Record<PeerRuntime, PeerRuntimeStatus>;
}

/**
 * Reads the status tools/peers/setup_peers.ts recorded, or `null` when it never ran. A harness
 * reports runtimes with `ok: false` as failed with their `error`, instead of dropping them.
 */
export async function readPeerSetupStatus(
  venvRoot: string = DEFAULT_VENV_ROOT,
): Promise<PeerSetupStatus | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(`${venvRoot}/status.json`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  try {
    return JSON.parse(text) as PeerSetupStatus;
  } catch (err) {
    throw new Error(`Peer setup status '${venvRoot}/status.json' is not JSON`, { cause: err });
  }
}

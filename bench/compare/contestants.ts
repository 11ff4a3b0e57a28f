/**
 * One runtime with one model file loaded for one shape: a "contestant" of an interleaved
 * comparison. Every contestant is a separate process (the Python peers through
 * bench/peers/mod.ts, sparsebert and onnxruntime-node through bench/compare/deno_runner.ts),
 * so each holds its own model, a crash stays contained, and several instances of one runtime
 * can run side by side for the throughput search.
 *
 * ```ts
 * await using c = await startContestant({
 *   runtime: "sparsebert", form: "fp32", path: "m.onnx", batch: 1, seq: 128, threads: 2,
 *   instances: 1,
 * });
 * const sample = await c.run({ iterations: 10, warmup: 1, settleMs: 200 });
 * ```
 *
 * @module
 */

import { exitText, PeerError, type PeerRuntime, PythonPeer, stderrSummary } from "../peers/mod.ts";
import type { ModelForm, RuntimeName } from "./matrix.ts";

const ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname).replace(/\/$/, "");
const RUNNER = `${ROOT}/bench/compare/deno_runner.ts`;

/** What to load. */
export interface ContestantSpec {
  /** Runtime. */
  runtime: RuntimeName;
  /** Layout of the file. */
  form: ModelForm;
  /** ONNX file. */
  path: string;
  /** Batch size. */
  batch: number;
  /** Sequence length. */
  seq: number;
  /** Threads per instance. */
  threads: number;
  /** Concurrent instances (Python peers: streams of one process; Deno: processes). */
  instances: number;
  /** Token id seed (default 1). */
  seed?: number;
}

/** Settings of {@linkcode startContestant} that are not part of the spec. */
export interface StartOptions {
  /** Folder of the Python venvs (default bench/peers/mod.ts's). */
  venvRoot?: string;
  /** Sparsity from which sparsebert's chooser tries the sparse kernel (default 0.5). */
  sparseThreshold?: number;
  /** Ask sparsebert to probe the fp32 peak at its thread count. */
  probePeak?: boolean;
  /** Milliseconds allowed for loading (default 600000). */
  startTimeoutMs?: number;
}

/** What a contestant loaded: versions, effective settings, load time. */
export interface LoadInfo {
  /** Package versions. */
  versions: Record<string, string>;
  /** Effective settings (of the first instance). */
  config: Record<string, unknown>;
  /** Load time of the slowest instance. */
  loadMs: number;
  /** Sum of the input ids, to check every runtime got the same tokens. */
  inputIdsSum: number;
}

/** Summary of the first output of the last iteration. */
export interface OutputSummary {
  /** Shape. */
  shape: number[];
  /** Mean (null when not finite). */
  mean: number | null;
  /** Mean of absolute values (null when not finite). */
  meanAbs: number | null;
  /** NaN/Inf count. */
  nonFinite: number;
  /** First values. */
  first: (number | null)[];
}

/** One measurement: per-iteration latencies of all instances, and the wall time. */
export interface RunSample {
  /** Latencies (ms), instance after instance. */
  latenciesMs: number[];
  /** Wall time of the timed part (the longest instance). */
  wallS: number;
  /** Items processed (batch x iterations, all instances). */
  items: number;
  /** Output summary of instance 0. */
  output: OutputSummary | null;
}

/** How long to measure. */
export interface RunOptions {
  /** Timed iterations per instance. */
  iterations?: number;
  /** Or a time budget per instance. */
  seconds?: number;
  /** Untimed iterations first. */
  warmup: number;
  /** Sleep before warming up (ms). */
  settleMs: number;
  /** Milliseconds allowed for the command (default 600000). */
  timeoutMs?: number;
}

/** A contestant that failed: where, why, and the tail of its stderr. */
export class ContestantError extends Error {
  /** The runtime. */
  readonly runtime: RuntimeName;
  /** Where it failed: spawn, import, load, convert, inputs, run, exit, timeout, protocol... */
  readonly stage: string;
  /** Tail of stderr. */
  readonly stderr: string;

  /** Builds the error. */
  constructor(
    message: string,
    details: { runtime: RuntimeName; stage: string; stderr?: string; cause?: unknown },
  ) {
    super(message, { cause: details.cause });
    this.name = "ContestantError";
    this.runtime = details.runtime;
    this.stage = details.stage;
    this.stderr = details.stderr ?? "";
  }
}

/** A loaded contestant. */
export interface Contestant extends AsyncDisposable {
  /** What it loaded. */
  readonly spec: ContestantSpec;
  /** Versions and settings. */
  readonly info: LoadInfo;
  /** Process ids of its processes (for memory accounting). */
  readonly pids: readonly number[];
  /** Measures; throws {@linkcode ContestantError}. */
  run(options: RunOptions): Promise<RunSample>;
  /** Ends its processes. */
  close(): Promise<void>;
}

/** The venv runtime name of a Python contestant. */
function pythonRuntime(runtime: RuntimeName): PeerRuntime | null {
  switch (runtime) {
    case "ort-py":
      return "ort";
    case "openvino":
    case "deepsparse":
    case "torch":
      return runtime;
    default:
      return null;
  }
}

function checkSpec(spec: ContestantSpec): void {
  for (
    const [name, v, max] of [
      ["Batch", spec.batch, 65536],
      ["Sequence length", spec.seq, 65536],
      ["Threads", spec.threads, 64],
      ["Instances", spec.instances, 64],
    ] as const
  ) {
    if (!Number.isInteger(v) || v < 1 || v > max) {
      throw new RangeError(`${name} must be an integer in [1, ${max}], got '${v}'`);
    }
  }
}

/**
 * Starts a contestant and waits until its model is loaded.
 *
 * @throws ContestantError with the stage and the runtime's own message when it fails.
 */
export async function startContestant(
  spec: ContestantSpec,
  options: StartOptions = {},
): Promise<Contestant> {
  checkSpec(spec);
  const py = pythonRuntime(spec.runtime);
  if (py !== null) return await PythonContestant.start(spec, py, options);
  return await DenoContestant.start(spec, options);
}

function summaryFromPeer(
  o: {
    shape: number[];
    mean: number | null;
    meanAbs: number | null;
    nonFinite: number;
    first: (number | null)[];
  } | null,
): OutputSummary | null {
  return o
    ? { shape: o.shape, mean: o.mean, meanAbs: o.meanAbs, nonFinite: o.nonFinite, first: o.first }
    : null;
}

/**
 * A private copy of a model file (and its external data) for DeepSparse: deepsparse 1.8.0's
 * `compile_model(..., input_shapes=...)` rewrites the ONNX file IN PLACE with the fixed shapes
 * (`override_onnx_input_shapes(..., inplace=True)` in deepsparse/engine.py), which would leave
 * every later runtime a static-shape graph. Returns the copy's path and its folder.
 */
export async function privateCopy(path: string): Promise<{ path: string; dir: string }> {
  const slash = path.lastIndexOf("/");
  const parent = slash > 0 ? path.slice(0, slash) : ".";
  const base = path.slice(slash + 1);
  const dir = await Deno.makeTempDir({ dir: parent, prefix: ".deepsparse-copy-" });
  try {
    await Deno.copyFile(path, `${dir}/${base}`);
    try {
      await Deno.copyFile(`${path}.data`, `${dir}/${base}.data`);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  } catch (err) {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  }
  return { path: `${dir}/${base}`, dir };
}

class PythonContestant implements Contestant {
  readonly spec: ContestantSpec;
  readonly info: LoadInfo;
  #peer: PythonPeer;
  #scratch: string | null;

  private constructor(spec: ContestantSpec, peer: PythonPeer, scratch: string | null) {
    this.spec = spec;
    this.#peer = peer;
    this.#scratch = scratch;
    const i = peer.info;
    this.info = {
      versions: i.versions,
      config: i.config,
      loadMs: i.loadMs,
      inputIdsSum: i.inputIdsSum,
    };
  }

  static async start(
    spec: ContestantSpec,
    runtime: PeerRuntime,
    options: StartOptions,
  ): Promise<PythonContestant> {
    let model = spec.path;
    let scratch: string | null = null;
    try {
      if (runtime === "deepsparse") {
        const copy = await privateCopy(spec.path);
        model = copy.path;
        scratch = copy.dir;
      }
      const peer = await PythonPeer.start({
        runtime,
        model,
        batch: spec.batch,
        seq: spec.seq,
        threads: spec.threads,
        streams: spec.instances,
        seed: spec.seed ?? 1,
        venvRoot: options.venvRoot,
        startTimeoutMs: options.startTimeoutMs ?? 600_000,
      });
      return new PythonContestant(spec, peer, scratch);
    } catch (err) {
      if (scratch !== null) await Deno.remove(scratch, { recursive: true }).catch(() => {});
      throw fromPeerError(spec.runtime, err);
    }
  }

  get pids(): readonly number[] {
    return [this.#peer.pid];
  }

  async run(options: RunOptions): Promise<RunSample> {
    try {
      const r = await this.#peer.run({
        iterations: options.iterations,
        seconds: options.seconds,
        warmup: options.warmup,
        settleMs: options.settleMs,
        timeoutMs: options.timeoutMs ?? 600_000,
      });
      return {
        latenciesMs: r.latenciesMs,
        wallS: r.wallS,
        items: this.spec.batch * r.iterations,
        output: summaryFromPeer(r.output),
      };
    } catch (err) {
      throw fromPeerError(this.spec.runtime, err);
    }
  }

  async close(): Promise<void> {
    await this.#peer.close();
    if (this.#scratch !== null) {
      await Deno.remove(this.#scratch, { recursive: true }).catch(() => {});
      this.#scratch = null;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function fromPeerError(runtime: RuntimeName, err: unknown): ContestantError {
  if (err instanceof PeerError) {
    return new ContestantError(err.message, {
      runtime,
      stage: err.stage,
      stderr: err.stderr,
      cause: err,
    });
  }
  if (err instanceof ContestantError) return err;
  return new ContestantError(`${runtime}: ${(err as Error).message}`, {
    runtime,
    stage: "command",
    cause: err,
  });
}

// ---------------------------------------------------------------------------------------------
// Deno runner processes

const STDERR_CAP = 64 * 1024;
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

/** A child process speaking JSON lines: commands on stdin, one reply line each on stdout. */
class RunnerProcess {
  readonly runtime: RuntimeName;
  #child: Deno.ChildProcess;
  #writer: WritableStreamDefaultWriter<Uint8Array>;
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";
  #stderr = "";
  #stderrDone: Promise<void>;
  #closed = false;

  constructor(runtime: RuntimeName, child: Deno.ChildProcess) {
    this.runtime = runtime;
    this.#child = child;
    this.#writer = child.stdin.getWriter();
    this.#reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    this.#stderrDone = (async () => {
      try {
        for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) {
          this.#stderr += chunk;
          if (this.#stderr.length > 2 * STDERR_CAP) this.#stderr = this.#stderr.slice(-STDERR_CAP);
        }
      } catch {
        // The stream errors when the child is killed; what was read is kept.
      }
    })();
  }

  get stderr(): string {
    return this.#stderr.slice(-STDERR_CAP);
  }

  /** Process id. */
  get pid(): number {
    return this.#child.pid;
  }

  async #nextLine(): Promise<string | null> {
    while (true) {
      const nl = this.#buffer.indexOf("\n");
      if (nl >= 0) {
        const line = this.#buffer.slice(0, nl);
        this.#buffer = this.#buffer.slice(nl + 1);
        return line;
      }
      const { value, done } = await this.#reader.read();
      if (done) {
        const rest = this.#buffer;
        this.#buffer = "";
        return rest === "" ? null : rest;
      }
      this.#buffer += value;
    }
  }

  /** Reads one reply (a JSON object); throws ContestantError when the process dies or hangs. */
  async reply(timeoutMs: number, what: string): Promise<Record<string, unknown>> {
    const line = await withTimeout(this.#nextLine(), timeoutMs);
    if (line === TIMEOUT) {
      return await this.#fail("timeout", `did not answer ${what} in ${timeoutMs} ms`);
    }
    if (line === null) {
      return await this.#fail("exit", `${exitText(await this.#child.status)} ${what}`);
    }
    try {
      const obj = JSON.parse(line);
      if (typeof obj !== "object" || obj === null) throw new Error("not an object");
      return obj;
    } catch {
      return await this.#fail("protocol", `printed a non-JSON line '${line.slice(0, 200)}'`);
    }
  }

  async send(cmd: Record<string, unknown>): Promise<void> {
    try {
      await this.#writer.write(new TextEncoder().encode(JSON.stringify(cmd) + "\n"));
    } catch (err) {
      const status = await withTimeout(this.#child.status, 1000);
      const how = status === TIMEOUT ? "" : `: it ${exitText(status)}`;
      await this.#fail("exit", `closed its input${how}`, err);
    }
  }

  async #fail(stage: string, what: string, cause?: unknown): Promise<never> {
    this.kill();
    await this.#child.status;
    await withTimeout(this.#stderrDone, 2000);
    const summary = stderrSummary(this.#stderr);
    throw new ContestantError(`${this.runtime} ${what}${summary ? `: ${summary}` : ""}`, {
      runtime: this.runtime,
      stage,
      stderr: this.stderr,
      cause,
    });
  }

  kill(): void {
    if (this.#closed) return;
    this.#closed = true;
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }

  async close(): Promise<void> {
    if (!this.#closed) {
      try {
        await this.send({ cmd: "quit" });
        await this.reply(10_000, "to quit");
      } catch {
        // Killed below.
      }
      try {
        await this.#writer.close();
      } catch {
        // Already closed.
      }
      if ((await withTimeout(this.#child.status, 5000)) === TIMEOUT) this.kill();
    }
    this.#closed = true;
    await this.#child.status;
    this.#reader.cancel().catch(() => {});
    await withTimeout(this.#stderrDone, 2000);
  }
}

function num(o: Record<string, unknown>, key: string): number {
  const v = o[key];
  if (typeof v !== "number" || !Number.isFinite(v)) {
    throw new TypeError(`Runner reply field '${key}' is '${String(v)}', not a number`);
  }
  return v;
}

function parseOutput(o: unknown): OutputSummary | null {
  if (typeof o !== "object" || o === null) return null;
  const r = o as Record<string, unknown>;
  return {
    shape: r.shape as number[],
    mean: r.mean as number | null,
    meanAbs: r.mean_abs as number | null,
    nonFinite: r.non_finite as number,
    first: r.first as (number | null)[],
  };
}

class DenoContestant implements Contestant {
  readonly spec: ContestantSpec;
  readonly info: LoadInfo;
  #procs: RunnerProcess[];

  private constructor(spec: ContestantSpec, procs: RunnerProcess[], info: LoadInfo) {
    this.spec = spec;
    this.#procs = procs;
    this.info = info;
  }

  static async start(spec: ContestantSpec, options: StartOptions): Promise<DenoContestant> {
    const procs: RunnerProcess[] = [];
    let info: LoadInfo | null = null;
    try {
      for (let i = 0; i < spec.instances; i++) {
        const args = [
          "run",
          "-A",
          "--no-prompt",
          "--config",
          `${ROOT}/deno.json`,
          RUNNER,
          "--runtime",
          spec.runtime,
          "--model",
          spec.path,
          "--batch",
          String(spec.batch),
          "--seq",
          String(spec.seq),
          "--threads",
          String(spec.threads),
          "--seed",
          String(spec.seed ?? 1),
          "--sparse-threshold",
          String(options.sparseThreshold ?? 0.5),
        ];
        if (options.probePeak && i === 0) args.push("--probe-peak");
        let child: Deno.ChildProcess;
        try {
          child = new Deno.Command(Deno.execPath(), {
            args,
            cwd: ROOT,
            stdin: "piped",
            stdout: "piped",
            stderr: "piped",
            env: { NO_COLOR: "1" },
          }).spawn();
        } catch (err) {
          throw new ContestantError(
            `${spec.runtime} cannot start '${Deno.execPath()}': ${(err as Error).message}`,
            { runtime: spec.runtime, stage: "spawn", cause: err },
          );
        }
        const proc = new RunnerProcess(spec.runtime, child);
        procs.push(proc);
        const ready = await proc.reply(options.startTimeoutMs ?? 600_000, "while loading");
        if (ready.ok !== true) {
          proc.kill();
          await proc.close();
          const summary = stderrSummary(proc.stderr);
          throw new ContestantError(
            `${spec.runtime} failed at ${String(ready.stage)}: ${String(ready.error)}` +
              (summary && !String(ready.error).includes(summary) ? ` (${summary})` : ""),
            { runtime: spec.runtime, stage: String(ready.stage ?? "load"), stderr: proc.stderr },
          );
        }
        const loadMs = num(ready, "load_ms");
        if (info === null) {
          info = {
            versions: (ready.versions ?? {}) as Record<string, string>,
            config: (ready.config ?? {}) as Record<string, unknown>,
            loadMs,
            inputIdsSum: num(ready, "input_ids_sum"),
          };
        } else {
          info.loadMs = Math.max(info.loadMs, loadMs);
        }
      }
    } catch (err) {
      await Promise.all(procs.map((p) => p.close()));
      if (err instanceof ContestantError) throw err;
      throw new ContestantError(`${spec.runtime}: ${(err as Error).message}`, {
        runtime: spec.runtime,
        stage: "protocol",
        cause: err,
      });
    }
    return new DenoContestant(spec, procs, info!);
  }

  get pids(): readonly number[] {
    return this.#procs.map((p) => p.pid);
  }

  async run(options: RunOptions): Promise<RunSample> {
    const cmd: Record<string, unknown> = {
      cmd: "run",
      warmup: options.warmup,
      settle_ms: options.settleMs,
    };
    if (options.iterations !== undefined) cmd.iterations = options.iterations;
    else cmd.seconds = options.seconds;
    const timeout = options.timeoutMs ?? 600_000;
    // All instances get the command before any reply is awaited, so they run side by side.
    await Promise.all(this.#procs.map((p) => p.send(cmd)));
    const replies = await Promise.all(this.#procs.map((p) => p.reply(timeout, "to run")));
    const latencies: number[] = [];
    let wallS = 0;
    let items = 0;
    for (const [i, r] of replies.entries()) {
      if (r.ok !== true) {
        throw new ContestantError(
          `${this.spec.runtime} run failed at ${String(r.stage)}: ${String(r.error)}`,
          {
            runtime: this.spec.runtime,
            stage: String(r.stage ?? "run"),
            stderr: this.#procs[i].stderr,
          },
        );
      }
      const lat = r.latencies_ms;
      if (!Array.isArray(lat) || lat.some((x) => typeof x !== "number")) {
        throw new ContestantError(`${this.spec.runtime} replied without latencies`, {
          runtime: this.spec.runtime,
          stage: "protocol",
        });
      }
      latencies.push(...(lat as number[]));
      wallS = Math.max(wallS, num(r, "wall_s"));
      items += this.spec.batch * num(r, "iterations");
    }
    return { latenciesMs: latencies, wallS, items, output: parseOutput(replies[0].output) };
  }

  async close(): Promise<void> {
    await Promise.all(this.#procs.map((p) => p.close()));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/**
 * The Deno side of the comparison: runs one ONNX encoder in sparsebert or in onnxruntime-node,
 * in its own process, and speaks the JSON-lines protocol of bench/peers/peer_runner.py, so that
 * the harness drives every runtime the same way (and can start several instances of one).
 *
 * ```sh
 * deno run -A bench/compare/deno_runner.ts --runtime sparsebert --model M.onnx \
 *   --batch 1 --seq 128 --threads 2 [--seed 1] [--sparse-threshold 0.5] [--probe-peak]
 * ```
 *
 * It loads the model, prints `{"ok": true, "event": "ready", ...}` (versions, effective
 * settings, load time) and then answers one JSON line per command read from stdin:
 * `{"cmd": "run", "iterations": N | "seconds": S, "warmup": W, "settle_ms": MS}` (raw
 * per-iteration latencies, wall time and a summary of the output), `{"cmd": "quit"}`. A failed
 * load prints `{"ok": false, "stage": ..., "error": ...}` and exits 1; a failed command
 * answers `{"ok": false, ...}` and the process stays alive. Only protocol lines go to stdout.
 *
 * sparsebert builds each linear layer with the kernel chooser that `loadModel` gives a user
 * (`encoder/kernel_choice.ts`): fp32 weights run fp32 kernels, int8 weights (taken from the
 * file as they are) int8 ones; from the threshold's sparsity on (element sparsity for fp32,
 * 4x1-block sparsity for int8) the sparse kernel is a candidate, and the autotune keeps it only
 * where it is faster than the dense one on the layer's shape.
 *
 * Token ids are the 32-bit LCG of bench/peers/peer_runner.py (`bertInputIds` in
 * bench/peers/ort_node.ts), the attention mask all ones, the token types all zeros.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { lcg32 } from "../../ops/random.ts";

/** The runtimes this runner hosts. */
export type DenoRuntime = "sparsebert" | "ort-node";

const MAX_ITERATIONS = 1_000_000;
const encoder = new TextEncoder();

function emit(obj: Record<string, unknown>): void {
  Deno.stdout.writeSync(encoder.encode(JSON.stringify(obj) + "\n"));
}

/** A load or command failure with the stage it happened at. */
class StageError extends Error {
  readonly stage: string;
  constructor(stage: string, message: string, cause?: unknown) {
    super(message, { cause });
    this.stage = stage;
  }
}

/**
 * Token ids in [1000, 2000) for `[batch, seq]`, the LCG of peer_runner.py: state starts at
 * `seed`, `state = state * 1664525 + 1013904223 mod 2^32`, `id = 1000 + (state >>> 16) % 1000`.
 */
export function lcgInputIds(batch: number, seq: number, seed: number): Int32Array {
  const out = new Int32Array(batch * seq);
  const next = lcg32(seed);
  for (let i = 0; i < out.length; i++) out[i] = 1000 + ((next() >>> 16) % 1000);
  return out;
}

/** Summary of an output tensor, as peer_runner.py reports it. */
export function outputSummary(data: ArrayLike<number>, shape: number[]): Record<string, unknown> {
  let sum = 0;
  let sumAbs = 0;
  let nonFinite = 0;
  for (let i = 0; i < data.length; i++) {
    const v = Number(data[i]);
    if (!Number.isFinite(v)) {
      nonFinite++;
      continue;
    }
    sum += v;
    sumAbs += Math.abs(v);
  }
  const n = data.length;
  const finite = (x: number): number | null => Number.isFinite(x) ? x : null;
  return {
    shape,
    mean: n ? finite(sum / n) : 0,
    mean_abs: n ? finite(sumAbs / n) : 0,
    non_finite: nonFinite,
    first: Array.from({ length: Math.min(4, n) }, (_, i) => finite(Number(data[i]))),
  };
}

interface Loaded {
  versions: Record<string, string>;
  config: Record<string, unknown>;
  /** One inference; returns the first output and its shape. */
  run: () => Promise<{ data: ArrayLike<number>; shape: number[] }> | {
    data: ArrayLike<number>;
    shape: number[];
  };
  close: () => Promise<void> | void;
}

interface Args {
  runtime: DenoRuntime;
  model: string;
  batch: number;
  seq: number;
  threads: number;
  seed: number;
  sparseThreshold: number;
  probePeak: boolean;
}

async function packageVersion(): Promise<string> {
  try {
    const url = new URL("../../deno.json", import.meta.url);
    return String(JSON.parse(await Deno.readTextFile(url)).version ?? "unknown");
  } catch {
    return "unknown";
  }
}

async function loadSparsebert(a: Args): Promise<Loaded> {
  const { kernels, setThreads, threads } = await import("../../ffi/library.ts");
  const { loadModel } = await import("../../hub/load.ts");
  const { BertEncoder } = await import("../../encoder/bert.ts");
  const { KernelChooser } = await import("../../encoder/kernel_choice.ts");
  setThreads(a.threads);
  const { weights } = await loadModel(a.model);
  const t = a.sparseThreshold;
  // The chooser a user of loadModel gets: a sparse kernel is a candidate from sparsity t on,
  // and the autotune (cached in .cache/autotune.json) keeps it only where it beats the dense
  // kernel on the layer's shape. The int8 forms are encoder/linear_kinds.ts's int8Form.
  const chooser = new KernelChooser({ sparseFloor: t });
  const enc = new BertEncoder(weights, { linear: chooser.factory });
  await chooser.saveCache();
  const c = enc.config;
  if (a.seq > c.maxPositionEmbeddings) {
    enc[Symbol.dispose]();
    throw new StageError(
      "inputs",
      `Sequence length ${a.seq} exceeds the model's ${c.maxPositionEmbeddings} positions`,
    );
  }
  enc.plan(a.batch, a.seq);
  const rows = a.batch * a.seq;
  const inputIds = lcgInputIds(a.batch, a.seq, a.seed);
  const attentionMask = new Int32Array(rows).fill(1);
  const tokenTypeIds = c.typeVocabSize > 0 ? new Int32Array(rows) : null;
  const out = new Float32Array(rows * c.hiddenSize);
  const kinds: Record<string, number> = {};
  let packedBytes = 0;
  for (const l of enc.linears()) {
    kinds[l.kind] = (kinds[l.kind] ?? 0) + 1;
    packedBytes += l.packedBytes;
  }
  const config: Record<string, unknown> = {
    threads: threads(),
    kernels: kinds,
    sparse_threshold: t,
    // Layers whose kernel the autotune chose between a sparse and the dense candidate.
    autotuned_layers: chooser.decisions.filter((d) => d.timings !== undefined).length,
    packed_weight_bytes: packedBytes,
    workspace_bytes: enc.workspaceBytes,
  };
  if (a.probePeak) {
    const { probePeakF32 } = await import("../_timing.ts");
    config.peak_f32_gflops = probePeakF32();
  }
  const shape = [a.batch, a.seq, c.hiddenSize];
  const input = { inputIds, attentionMask, tokenTypeIds, batch: a.batch, seq: a.seq };
  return {
    versions: {
      sparsebert: await packageVersion(),
      isa: kernels().isa,
      deno: Deno.version.deno,
      v8: Deno.version.v8,
    },
    config,
    run: () => ({ data: enc.forward(input, { out }), shape }),
    close: () => enc[Symbol.dispose](),
  };
}

async function loadOrtNode(a: Args): Promise<Loaded> {
  const ort = await import("onnxruntime-node");
  const { bertFeeds, loadOrtSession } = await import("../peers/ort_node.ts");
  const session = await loadOrtSession(a.model, { threads: a.threads });
  let feeds;
  try {
    feeds = bertFeeds(session, { batch: a.batch, seq: a.seq, seed: a.seed });
  } catch (err) {
    await session.release();
    throw new StageError("inputs", (err as Error).message, err);
  }
  const first = session.outputNames[0];
  return {
    versions: {
      "onnxruntime-node": ort.env.versions?.common ?? "unknown",
      deno: Deno.version.deno,
    },
    config: {
      intra_op_num_threads: a.threads,
      inter_op_num_threads: 1,
      execution_mode: "sequential",
      graph_optimization_level: "all",
      outputs: session.outputNames,
    },
    run: async () => {
      const outputs = await session.run(feeds);
      const t = outputs[first];
      return { data: t.data as Float32Array, shape: t.dims.map(Number) };
    },
    close: () => session.release(),
  };
}

async function measure(
  loaded: Loaded,
  a: Args,
  cmd: Record<string, unknown>,
): Promise<Record<string, unknown>> {
  const iterations = cmd.iterations;
  const seconds = cmd.seconds;
  const warmup = cmd.warmup ?? 0;
  const settleMs = cmd.settle_ms ?? 0;
  if ((iterations === undefined) === (seconds === undefined)) {
    throw new StageError("command", "A run command needs exactly one of iterations or seconds");
  }
  if (
    iterations !== undefined &&
    (!Number.isInteger(iterations) || (iterations as number) < 1 ||
      (iterations as number) > MAX_ITERATIONS)
  ) {
    throw new StageError(
      "command",
      `Iterations must be in [1, ${MAX_ITERATIONS}], got '${iterations}'`,
    );
  }
  if (
    seconds !== undefined &&
    (typeof seconds !== "number" || !(seconds > 0 && seconds <= 3600))
  ) {
    throw new StageError("command", `Seconds must be in (0, 3600], got '${seconds}'`);
  }
  if (!Number.isInteger(warmup) || (warmup as number) < 0 || (warmup as number) > 10_000) {
    throw new StageError("command", `Warmup must be an integer in [0, 10000], got '${warmup}'`);
  }
  if (typeof settleMs !== "number" || !(settleMs >= 0 && settleMs <= 10_000)) {
    throw new StageError("command", `Settle time must be in [0, 10000] ms, got '${settleMs}'`);
  }
  if (settleMs > 0) await new Promise((r) => setTimeout(r, settleMs));
  let last: { data: ArrayLike<number>; shape: number[] } | null = null;
  try {
    for (let i = 0; i < (warmup as number); i++) last = await loaded.run();
    const latencies: number[] = [];
    const start = performance.now();
    const endAt = seconds !== undefined ? start + (seconds as number) * 1000 : Infinity;
    const limit = iterations !== undefined ? iterations as number : MAX_ITERATIONS;
    while (latencies.length < limit) {
      if (latencies.length > 0 && performance.now() >= endAt) break;
      const t0 = performance.now();
      last = await loaded.run();
      latencies.push(performance.now() - t0);
    }
    const wallS = (performance.now() - start) / 1000;
    return {
      ok: true,
      event: "result",
      runtime: a.runtime,
      batch: a.batch,
      seq: a.seq,
      threads: a.threads,
      streams: 1,
      iterations: latencies.length,
      latencies_ms: latencies.map((x) => Math.round(x * 1e4) / 1e4),
      wall_s: wallS,
      items_per_s: wallS > 0 ? (a.batch * latencies.length) / wallS : 0,
      warmup,
      output: last ? outputSummary(last.data, last.shape) : null,
    };
  } catch (err) {
    throw new StageError("run", `${(err as Error).name}: ${(err as Error).message}`, err);
  }
}

async function* stdinLines(): AsyncGenerator<string> {
  let buffer = "";
  for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
    buffer += chunk;
    let nl: number;
    while ((nl = buffer.indexOf("\n")) >= 0) {
      yield buffer.slice(0, nl);
      buffer = buffer.slice(nl + 1);
    }
  }
  if (buffer.trim() !== "") yield buffer;
}

function parseRunnerArgs(argv: string[]): Args {
  const { values } = parseArgs({
    args: argv,
    options: {
      runtime: { type: "string" },
      model: { type: "string" },
      batch: { type: "string", default: "1" },
      seq: { type: "string", default: "128" },
      threads: { type: "string", default: "1" },
      seed: { type: "string", default: "1" },
      "sparse-threshold": { type: "string", default: "0.5" },
      "probe-peak": { type: "boolean", default: false },
    },
  });
  const runtime = values.runtime;
  if (runtime !== "sparsebert" && runtime !== "ort-node") {
    throw new StageError("command", `--runtime must be sparsebert or ort-node, got '${runtime}'`);
  }
  if (!values.model) throw new StageError("command", "--model is required");
  const int = (name: string, text: string, min: number, max: number): number => {
    const v = Number(text);
    if (!Number.isInteger(v) || v < min || v > max) {
      throw new StageError(
        "command",
        `--${name} must be an integer in [${min}, ${max}], got '${text}'`,
      );
    }
    return v;
  };
  const threshold = Number(values["sparse-threshold"]);
  if (!(threshold >= 0 && threshold <= 1)) {
    throw new StageError(
      "command",
      `--sparse-threshold must be in [0, 1], got '${values["sparse-threshold"]}'`,
    );
  }
  return {
    runtime,
    model: values.model,
    batch: int("batch", values.batch!, 1, 65536),
    seq: int("seq", values.seq!, 1, 65536),
    threads: int("threads", values.threads!, 1, 64),
    seed: int("seed", values.seed!, 0, 2 ** 32 - 1),
    sparseThreshold: threshold,
    probePeak: values["probe-peak"]!,
  };
}

async function main(argv: string[]): Promise<number> {
  // Anything the libraries log goes to stderr: stdout carries protocol lines only.
  console.log = console.error;
  console.info = console.error;
  console.warn = console.error;
  let a: Args;
  try {
    a = parseRunnerArgs(argv);
  } catch (err) {
    emit({ ok: false, event: "error", stage: "command", error: (err as Error).message });
    return 2;
  }
  let loaded: Loaded;
  const t0 = performance.now();
  try {
    await Deno.stat(a.model);
    loaded = a.runtime === "sparsebert" ? await loadSparsebert(a) : await loadOrtNode(a);
  } catch (err) {
    const stage = err instanceof StageError ? err.stage : "load";
    console.error(err);
    emit({ ok: false, event: "error", stage, error: (err as Error).message });
    return 1;
  }
  const loadMs = performance.now() - t0;
  const info = {
    runtime: a.runtime,
    batch: a.batch,
    seq: a.seq,
    threads: a.threads,
    streams: 1,
    seed: a.seed,
    versions: loaded.versions,
    config: loaded.config,
    model: { path: a.model, bytes: (await Deno.stat(a.model)).size },
    input_ids_sum: lcgInputIds(a.batch, a.seq, a.seed).reduce((s, v) => s + v, 0),
    load_ms: loadMs,
  };
  emit({ ok: true, event: "ready", ...info });
  for await (const line of stdinLines()) {
    if (line.trim() === "") continue;
    try {
      const cmd = JSON.parse(line);
      if (typeof cmd !== "object" || cmd === null || Array.isArray(cmd)) {
        throw new StageError("command", "A command must be a JSON object");
      }
      if (cmd.cmd === "quit") {
        await loaded.close();
        emit({ ok: true, event: "bye" });
        return 0;
      }
      if (cmd.cmd === "info") {
        emit({ ok: true, event: "ready", ...info });
        continue;
      }
      if (cmd.cmd !== "run") {
        throw new StageError("command", `Unknown command '${cmd.cmd}', expected run, info or quit`);
      }
      emit(await measure(loaded, a, cmd));
    } catch (err) {
      const stage = err instanceof StageError ? err.stage : "command";
      emit({ ok: false, event: "error", stage, error: (err as Error).message });
    }
  }
  await loaded.close();
  return 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));

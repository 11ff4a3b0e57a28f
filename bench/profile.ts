/**
 * Per-phase profile of one encoder forward pass (issue 19: "where every millisecond goes"):
 * loads a model file with the kernel chooser a user gets, runs profiled passes
 * (`ForwardProfile`, the clock read between phases only) and unprofiled ones, and prints the
 * mean milliseconds per phase, the kernels chosen, and the share of the int8 layers' time
 * that their on-the-fly activation quantization takes (timed alone on the same shapes).
 *
 *   deno task bench:profile --model FILE.onnx [--batch 1] [--seq 128] [--threads 2]
 *                           [--passes 30] [--kernels auto|KIND] [--json] [--out FILE]
 *
 * @module
 */
import {
  flagOptions,
  integerOption,
  runCommand,
  stringOptions,
  UsageError,
} from "../tools/_command.ts";
import { cpuModel, kernels, setThreads } from "../ffi/library.ts";
import type { AttentionPrecision } from "../ops/attention.ts";
import { BertEncoder } from "../encoder/bert.ts";
import { FORWARD_PHASES, ForwardProfile } from "../encoder/forward_profile.ts";
import { summarizeDecisions } from "../encoder/kernel_choice.ts";
import { KERNEL_KINDS, type KernelKind } from "../ops/linear.ts";
import { quantizeActivations } from "../ops/quantize.ts";
import { lcg32 } from "../ops/random.ts";
import { loadModel } from "../hub/load.ts";
import { fmt, type Stats, stats } from "./_timing.ts";

const HELP = `Usage: deno task bench:profile --model FILE [options]

Profiles a forward pass of an encoder model file (ONNX, safetensors folder or compiled
.sbert), built with the same per-layer kernel chooser as loadModel: milliseconds per phase
(embeddings, Q/K/V, attention, projections, LayerNorms), the kernels chosen, and the int8
activation quantization's share (timed alone on the layers' shapes).

Options:
  --model FILE    the model (required)
  --batch N       sequences (default 1)
  --seq N         tokens per sequence (default 128)
  --threads N     kernel threads (default 2)
  --passes N      profiled passes, and as many unprofiled ones (default 30)
  --kernels K     auto (default) or one kind for every layer: ${KERNEL_KINDS.join(", ")}
  --attention P   the attention's products: the encoder's default, fp32 or int8
  --json          print the JSON result instead of the table
  --out FILE      also write the JSON result to FILE
  -h, --help      show this help`;

/** What `bench:profile` measures. */
export interface ProfileResult {
  benchmark: "profile";
  command: string;
  model: string;
  cpu: string;
  isa: string;
  threads: number;
  batch: number;
  seq: number;
  kernels: Record<string, number>;
  /** The attention's products. */
  attention: AttentionPrecision;
  /** Unprofiled forward passes (ms). */
  forwardMs: Stats;
  /** Mean ms per pass of each phase, and their sum. */
  phasesMs: Record<string, number>;
  profiledTotalMs: number;
  /** Activation quantization of every int8 layer of one pass, timed alone (ms). */
  int8QuantizeMs: number;
}

/** Median ms of `run` over `passes` calls after one warm-up call. */
function medianMs(run: () => void, passes: number): number {
  run();
  const samples: number[] = [];
  for (let i = 0; i < passes; i++) {
    const t0 = performance.now();
    run();
    samples.push(performance.now() - t0);
  }
  return stats(samples).median;
}

/** The int8 layers' activation quantization per pass: each (in, layout) timed alone. */
function int8QuantizeMs(encoder: BertEncoder, rows: number, passes: number): number {
  const counts = new Map<string, number>();
  for (const l of encoder.linears()) {
    if (l.kind !== "dense-i8" && l.kind !== "sparse-i8") continue;
    const key = `${l.inFeatures}|${l.kind === "sparse-i8" ? "packed" : "rows"}`;
    counts.set(key, (counts.get(key) ?? 0) + 1);
  }
  let total = 0;
  for (const [key, count] of counts) {
    const [k, layout] = key.split("|");
    const inFeatures = Number(k);
    const x = new Float32Array(rows * inFeatures);
    const next = lcg32(7);
    for (let i = 0; i < x.length; i++) x[i] = next() / 2147483648 - 1;
    let into = quantizeActivations(x, rows, inFeatures, { layout: layout as "rows" | "packed" });
    total += count * medianMs(() => {
      into = quantizeActivations(x, rows, inFeatures, {
        layout: layout as "rows" | "packed",
        into,
      });
    }, Math.min(passes, 20));
  }
  return total;
}

async function profileModel(o: {
  model: string;
  batch: number;
  seq: number;
  threads: number;
  passes: number;
  kernels: "auto" | KernelKind;
  attention?: AttentionPrecision;
}): Promise<Omit<ProfileResult, "command">> {
  setThreads(o.threads);
  const loaded = await loadModel(o.model, { kernels: { kernels: o.kernels } });
  using encoder = new BertEncoder(loaded.weights, {
    linear: loaded.linear,
    fuseQkv: loaded.fuseQkv,
    attentionPrecision: o.attention,
  });
  await loaded.saveKernelCache?.();
  const c = encoder.config;
  if (o.seq > c.maxPositionEmbeddings) {
    throw new UsageError(`--seq ${o.seq} exceeds the model's ${c.maxPositionEmbeddings} positions`);
  }
  const rows = o.batch * o.seq;
  const next = lcg32(1);
  // Ids in [1000, 2000) as bench:compare uses, folded into small test vocabularies.
  const inputIds = Int32Array.from(
    { length: rows },
    () => (1000 + ((next() >>> 16) % 1000)) % c.vocabSize,
  );
  const input = { inputIds, batch: o.batch, seq: o.seq };
  const out = new Float32Array(rows * c.hiddenSize);
  for (let i = 0; i < 3; i++) encoder.forward(input, { out });
  const samples: number[] = [];
  const profile = new ForwardProfile();
  // Alternate plain and profiled passes so that drift hits both alike.
  for (let i = 0; i < o.passes; i++) {
    const t0 = performance.now();
    encoder.forward(input, { out });
    samples.push(performance.now() - t0);
    encoder.forward(input, { out, profile });
  }
  const kinds: Record<string, number> = {};
  for (const l of encoder.linears()) kinds[l.kind] = (kinds[l.kind] ?? 0) + 1;
  return {
    benchmark: "profile",
    model: o.model,
    cpu: cpuModel() ?? "unknown",
    isa: kernels().isa,
    threads: o.threads,
    batch: o.batch,
    seq: o.seq,
    kernels: loaded.kernelDecisions ? summarizeDecisions(loaded.kernelDecisions) : kinds,
    attention: encoder.attentionPrecision,
    forwardMs: stats(samples),
    phasesMs: profile.meanMs(),
    profiledTotalMs: profile.totalMs(),
    int8QuantizeMs: int8QuantizeMs(encoder, rows, o.passes),
  };
}

function printTable(r: ProfileResult): void {
  console.log(
    `${r.model}: ${r.cpu}, ${r.isa}, ${r.threads} threads, batch ${r.batch} seq ${r.seq}`,
  );
  console.log(`kernels: ${JSON.stringify(r.kernels)}, attention ${r.attention}`);
  console.log(
    `forward (unprofiled): median ${r.forwardMs.median.toFixed(2)} ms, p90 ${
      r.forwardMs.p90.toFixed(2)
    } ms`,
  );
  console.log("phase                 ms/pass   share");
  for (const phase of FORWARD_PHASES) {
    const ms = r.phasesMs[phase];
    if (ms === undefined) continue;
    console.log(
      `${phase.padEnd(20)} ${fmt(ms, 2, 8)} ${fmt((100 * ms) / r.profiledTotalMs, 1, 6)}%`,
    );
  }
  console.log(`${"total (profiled)".padEnd(20)} ${fmt(r.profiledTotalMs, 2, 8)}`);
  if (r.int8QuantizeMs > 0) {
    console.log(
      `of the int8 layers: activation quantization ${
        r.int8QuantizeMs.toFixed(2)
      } ms/pass (timed alone)`,
    );
  }
}

function main(): Promise<number> {
  return runCommand(Deno.args, {
    help: HELP,
    parse: {
      options: {
        ...stringOptions(
          "model",
          "out",
          "batch",
          "seq",
          "threads",
          "passes",
          "kernels",
          "attention",
        ),
        ...flagOptions("json"),
      },
    },
  }, async ({ values }) => {
    if (values.model === undefined) throw new UsageError("--model FILE is required");
    const kernelsOption = values.kernels ?? "auto";
    if (kernelsOption !== "auto" && !KERNEL_KINDS.includes(kernelsOption as KernelKind)) {
      throw new UsageError(
        `Unknown --kernels "${kernelsOption}": expected auto, ${KERNEL_KINDS.join(", ")}`,
      );
    }
    const attention = values.attention;
    if (attention !== undefined && attention !== "fp32" && attention !== "int8") {
      throw new UsageError(`Unknown --attention "${attention}": expected fp32 or int8`);
    }
    const result: ProfileResult = {
      command: `deno task bench:profile ${Deno.args.join(" ")}`.trim(),
      ...await profileModel({
        model: values.model,
        batch: integerOption("batch", values.batch ?? "1", 1, 256),
        seq: integerOption("seq", values.seq ?? "128", 1, 8192),
        threads: integerOption("threads", values.threads ?? "2"),
        passes: integerOption("passes", values.passes ?? "30", 1, 10_000),
        kernels: kernelsOption as "auto" | KernelKind,
        attention,
      }),
    };
    if (values.json) console.log(JSON.stringify(result, null, 2));
    else printTable(result);
    if (values.out) await Deno.writeTextFile(values.out, JSON.stringify(result, null, 2) + "\n");
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main());

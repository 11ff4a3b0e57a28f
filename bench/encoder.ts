/**
 * Encoder latency benchmark (issue 3): ours (`BertEncoder`, fp32) vs ONNX Runtime fp32
 * (onnxruntime-node: `threads` intra-op, 1 inter-op, sequential, all graph optimisations) on
 * the same ONNX file, interleaved rounds, medians. MiniLM (all-MiniLM-L6-v2) and a generated
 * BERT-Base at sequence 128, batch 1 and 8. Also splits our time into the linear layers and
 * the rest (embeddings, attention, LayerNorm) and reports the fraction of the fp32 peak
 * probed in the same run.
 *
 *   deno task bench:encoder [--threads 2] [--models minilm,bert-base] [--batch 1,8] [--quick]
 *                           [--json] [--out FILE]
 *
 * Acceptance: BERT-Base, seq 128, batch 1: ours <= 1.1 x ORT.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions, UsageError } from "../tools/_command.ts";
import * as ort from "onnxruntime-node";
import { setThreads } from "../ffi/library.ts";
import { denseF32Linear } from "../encoder/bert.ts";
import type { LinearOp } from "../ops/linear.ts";
import { environment, fmt, interleave, probePeakF32, type Stats } from "./_timing.ts";
import {
  benchModelPath,
  ENCODER_BENCH_MODELS,
  type EncoderBenchModel,
  encoderPair,
} from "./_encoder_setup.ts";

const HELP = `Usage: deno task bench:encoder [options]

Times one forward pass of a BERT-family encoder with ours and ONNX Runtime fp32 on the same
ONNX file (interleaved rounds, medians), at sequence length 128.

Options:
  --threads N     threads for both runtimes (default 2)
  --models LIST   comma-separated: ${ENCODER_BENCH_MODELS.join(", ")} (default both)
  --batch LIST    comma-separated batch sizes (default 1,8)
  --seq N         sequence length (default 128)
  --rounds N      interleaved rounds (default 7; 3 with --quick)
  --quick         fewer rounds
  --json          print the JSON result instead of the table
  --out FILE      also write the JSON result to FILE
  -h, --help      show this help`;

/** One measured (model, batch). */
export interface EncoderRow {
  /** Model measured. */
  model: EncoderBenchModel;
  /** Sequences per call. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Our latency per call (ms). */
  oursMs: Stats;
  /** ONNX Runtime's latency per call (ms). */
  ortMs: Stats;
  /** ORT time / ours: > 1 means ours is faster. */
  speedupOverOrt: number;
  /** Ours / ORT latency (the acceptance compares this with 1.1). */
  latencyRatio: number;
  /** Our throughput over the linear and attention FLOPs. */
  oursGflops: number;
  /** `oursGflops` over the fp32 peak probed in the same run. */
  fractionOfPeak: number;
  /** Our time in the linear layers and elsewhere (one profiled pass, ms). */
  profile: { linearMs: number; otherMs: number };
}

/** Times the linear ops of one forward pass by wrapping each op built by the factory. */
function profiledFactory(sink: { ms: number }) {
  return (
    weight: Parameters<typeof denseF32Linear>[0],
    spec: Parameters<typeof denseF32Linear>[1],
  ): LinearOp => {
    const op = denseF32Linear(weight, spec);
    const forward = op.forward.bind(op);
    op.forward = (x, m, options) => {
      const t0 = performance.now();
      const y = forward(x, m, options);
      sink.ms += performance.now() - t0;
      return y;
    };
    return op;
  };
}

async function benchOne(
  model: EncoderBenchModel,
  batch: number,
  seq: number,
  threads: number,
  rounds: number,
  peak: number,
): Promise<EncoderRow> {
  const path = await benchModelPath(model);
  await using pair = await encoderPair(path, { batch, seq, threads });
  const results = await interleave([
    { name: "ours", run: () => pair.ours() },
    { name: "ort", run: () => pair.ort() },
  ], { rounds, warmup: 2, roundMs: 400 });
  const oursMs = results.get("ours")!;
  const ortMs = results.get("ort")!;
  // Profile pass: a separate encoder whose linear ops are timed (3 passes, median total).
  const sink = { ms: 0 };
  await using profiled = await encoderPair(path, { batch, seq, threads }, {
    linear: profiledFactory(sink),
  });
  const totals: { total: number; linear: number }[] = [];
  for (let i = 0; i < 3; i++) {
    sink.ms = 0;
    const t0 = performance.now();
    profiled.ours();
    totals.push({ total: performance.now() - t0, linear: sink.ms });
  }
  totals.sort((a, b) => a.total - b.total);
  const mid = totals[1];
  const oursGflops = pair.flops / (oursMs.median * 1e6);
  return {
    model,
    batch,
    seq,
    oursMs,
    ortMs,
    speedupOverOrt: ortMs.median / oursMs.median,
    latencyRatio: oursMs.median / ortMs.median,
    oursGflops,
    fractionOfPeak: oursGflops / peak,
    profile: { linearMs: mid.linear, otherMs: mid.total - mid.linear },
  };
}

function list(
  name: string,
  value: string,
  parse: (s: string) => number | string,
): (number | string)[] {
  const items = value.split(",").map((s) => s.trim()).filter((s) => s !== "");
  if (items.length === 0) throw new Error(`--${name} must list at least one value`);
  return items.map(parse);
}

function main(): Promise<number> {
  return runCommand(Deno.args, {
    help: HELP,
    parse: {
      options: {
        ...stringOptions("rounds", "out"),
        ...flagOptions("quick", "json"),
        threads: { type: "string", default: "2" },
        models: { type: "string", default: ENCODER_BENCH_MODELS.join(",") },
        batch: { type: "string", default: "1,8" },
        seq: { type: "string", default: "128" },
      },
    },
  }, async ({ values }) => {
    const positive = (name: string) => (s: string): number => {
      const n = Number(s);
      if (!Number.isInteger(n) || n < 1) {
        throw new UsageError(`--${name} needs positive integers, got "${s}"`);
      }
      return n;
    };
    const threads = positive("threads")(values.threads);
    const seq = positive("seq")(values.seq);
    const batches = list("batch", values.batch, positive("batch")) as number[];
    const models = list("models", values.models, (s) => {
      if (!(ENCODER_BENCH_MODELS as readonly string[]).includes(s)) {
        throw new Error(
          `Unknown model "${s}" in --models: expected ${ENCODER_BENCH_MODELS.join(", ")}`,
        );
      }
      return s;
    }) as EncoderBenchModel[];
    const rounds = values.rounds !== undefined
      ? positive("rounds")(values.rounds)
      : values.quick
      ? 3
      : 7;
    setThreads(threads);
    const peakBefore = probePeakF32();
    if (!values.json) {
      console.log(`fp32 peak (probe, ${threads} threads): ${peakBefore.toFixed(1)} GFLOP/s`);
      console.log(
        "model        batch  seq   ours ms    ORT ms  ours/ORT  GFLOP/s  %peak  linear ms  other ms",
      );
    }
    const rows: EncoderRow[] = [];
    for (const model of models) {
      for (const batch of batches) {
        const row = await benchOne(model, batch, seq, threads, rounds, peakBefore);
        rows.push(row);
        if (!values.json) {
          console.log(
            `${model.padEnd(11)} ${fmt(batch, 0, 6)} ${fmt(seq, 0, 4)} ${
              fmt(row.oursMs.median, 1, 9)
            } ${fmt(row.ortMs.median, 1, 9)} ${fmt(row.latencyRatio, 3, 9)} ${
              fmt(row.oursGflops, 1, 8)
            } ${fmt(100 * row.fractionOfPeak, 1, 6)} ${fmt(row.profile.linearMs, 1, 10)} ${
              fmt(row.profile.otherMs, 1, 9)
            }`,
          );
        }
      }
    }
    const peakAfter = probePeakF32();
    const acceptance = rows.find((r) => r.model === "bert-base" && r.batch === 1 && r.seq === 128);
    const result = {
      benchmark: "encoder_f32",
      command: `deno task bench:encoder ${Deno.args.join(" ")}`.trim(),
      threads,
      ort: {
        version: ort.env.versions?.common ?? "unknown",
        options: "intraOpNumThreads=threads, interOpNumThreads=1, sequential, graph opt all",
      },
      environment: environment(),
      peakGflops: { before: peakBefore, after: peakAfter },
      rows,
      acceptance: acceptance
        ? {
          criterion: "BERT-Base seq 128 batch 1: ours <= 1.1 x ORT latency",
          latencyRatio: acceptance.latencyRatio,
          pass: acceptance.latencyRatio <= 1.1,
        }
        : null,
    };
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
    } else {
      console.log(`fp32 peak after: ${peakAfter.toFixed(1)} GFLOP/s`);
      if (result.acceptance) {
        console.log(
          `acceptance (BERT-Base b1 s128, ours/ORT <= 1.1): ${
            result.acceptance.latencyRatio.toFixed(3)
          } ${result.acceptance.pass ? "PASS" : "FAIL"}`,
        );
      }
    }
    if (values.out) await Deno.writeTextFile(values.out, JSON.stringify(result, null, 2));
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main());

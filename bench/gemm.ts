/**
 * Dense fp32 GEMM benchmark (issue 2): ours (`LinearF32`, and `LinearBf16`: the same weights
 * rounded to bf16, `vdpbf16ps` where the CPU has AVX512_BF16) vs ONNX Runtime's MatMul
 * (onnxruntime-node, a one-op model with the weight as initializer) on BERT shapes, interleaved
 * in one run, with the fp32 peak probed in the same run.
 *
 *   deno task bench:gemm [--threads 2] [--quick] [--json] [--out FILE]
 *
 * @module
 */
import { flagOptions, integerOption, runCommand, stringOptions } from "../tools/_command.ts";
import * as ort from "onnxruntime-node";
import { setThreads } from "../ffi/library.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import { bf16Hardware, LinearBf16 } from "../ops/linear_bf16.ts";
import { lcg32 } from "../ops/random.ts";
import { environment, fmt, interleave, probePeakF32, type Stats } from "./_timing.ts";
import { loadOrtSession, matMulModel } from "./peers/ort_node.ts";
import { transpose2d } from "../encoder/weights.ts";

const HELP = `Usage: deno task bench:gemm [options]

Times Y = X W^T + b for X [M, K], W [N, K] with ours and ONNX Runtime (same threads, same
shapes, interleaved rounds), and reports GFLOP/s, the fraction of the fp32 peak measured in the
same run, and the ratio ours/ORT (throughput; > 1 means ours is faster). Our bf16-weight
kernel runs beside them (bf16 ms, and its speed over our fp32: bf16/f32).

Options:
  --threads N   threads for both runtimes (default 2)
  --quick       M=128 only, two shapes, fewer rounds
  --json        print the JSON result instead of the table
  --out FILE    also write the JSON result to FILE
  -h, --help    show this help`;

/** One measured shape. */
export interface GemmRow {
  m: number;
  k: number;
  n: number;
  oursMs: Stats;
  bf16Ms: Stats;
  ortMs: Stats;
  oursGflops: number;
  ortGflops: number;
  fractionOfPeak: number;
  ratioOursOverOrt: number;
  ratioBf16OverOurs: number;
}

const FULL_SHAPES: [number, number][] = [[768, 768], [768, 3072], [3072, 768], [1024, 4096], [
  4096,
  1024,
]];

function seeded(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  const next = lcg32(seed);
  for (let i = 0; i < n; i++) out[i] = (next() / 4294967296 - 0.5) * 0.2;
  return out;
}

async function benchShape(
  m: number,
  k: number,
  n: number,
  threads: number,
  rounds: number,
  peak: number,
): Promise<GemmRow> {
  const weight = seeded(n * k, 1);
  const x = seeded(m * k, 2);
  using ours = new LinearF32({ out: n, in: k, weight });
  using bf16 = new LinearBf16({ out: n, in: k, weight });
  const y = new Float32Array(m * n);
  // ORT gets the weight as a MatMul initializer [K, N], the layout Hugging Face exports use.
  const model = matMulModel({ m: null, k, n, weights: transpose2d(weight, n, k) });
  const session = await loadOrtSession(model, { threads });
  const feeds = { X: new ort.Tensor("float32", x, [m, k]) };
  const results = await interleave([
    { name: "ours", run: () => ours.forward(x, m, { out: y }) },
    { name: "bf16", run: () => bf16.forward(x, m, { out: y }) },
    { name: "ort", run: () => session.run(feeds) },
  ], { rounds });
  await session.release();
  const flop = 2 * m * n * k;
  const oursMs = results.get("ours")!;
  const ortMs = results.get("ort")!;
  const bf16Ms = results.get("bf16")!;
  const oursGflops = flop / (oursMs.median * 1e6);
  const ortGflops = flop / (ortMs.median * 1e6);
  return {
    m,
    k,
    n,
    oursMs,
    bf16Ms,
    ortMs,
    oursGflops,
    ortGflops,
    fractionOfPeak: oursGflops / peak,
    ratioOursOverOrt: ortMs.median / oursMs.median,
    ratioBf16OverOurs: oursMs.median / bf16Ms.median,
  };
}

function main(): Promise<number> {
  return runCommand(Deno.args, {
    help: HELP,
    parse: {
      options: {
        ...stringOptions("out"),
        ...flagOptions("quick", "json"),
        threads: { type: "string", default: "2" },
      },
    },
  }, async ({ values }) => {
    const threads = integerOption("threads", values.threads);
    setThreads(threads);
    const ms = values.quick ? [128] : [128, 384];
    const shapes = values.quick ? FULL_SHAPES.slice(0, 2) : FULL_SHAPES;
    const rounds = values.quick ? 3 : 7;
    const peakBefore = probePeakF32();
    const rows: GemmRow[] = [];
    if (!values.json) {
      console.log(`fp32 peak (probe, ${threads} threads): ${peakBefore.toFixed(1)} GFLOP/s`);
      console.log(`bf16 kernel: ${bf16Hardware() ? "vdpbf16ps" : "emulated in fp32"}`);
      console.log(
        "    M     K     N   ours ms    ORT ms  ours GF/s  ORT GF/s  %peak  ours/ORT   bf16 ms  bf16/f32",
      );
    }
    for (const m of ms) {
      for (const [k, n] of shapes) {
        const row = await benchShape(m, k, n, threads, rounds, peakBefore);
        rows.push(row);
        if (!values.json) {
          console.log(
            `${fmt(m, 0, 5)} ${fmt(k, 0, 5)} ${fmt(n, 0, 5)} ${fmt(row.oursMs.median, 3, 9)} ${
              fmt(row.ortMs.median, 3, 9)
            } ${fmt(row.oursGflops, 1, 10)} ${fmt(row.ortGflops, 1, 9)} ${
              fmt(100 * row.fractionOfPeak, 1, 6)
            } ${fmt(row.ratioOursOverOrt, 2, 9)} ${fmt(row.bf16Ms.median, 3, 9)} ${
              fmt(row.ratioBf16OverOurs, 2, 9)
            }`,
          );
        }
      }
    }
    const peakAfter = probePeakF32();
    const result = {
      benchmark: "gemm_f32",
      command: `deno task bench:gemm ${Deno.args.join(" ")}`.trim(),
      threads,
      ortVersion: ort.env.versions?.common ?? "unknown",
      environment: environment(),
      peakGflops: { before: peakBefore, after: peakAfter },
      bf16Kernel: bf16Hardware() ? "vdpbf16ps" : "emulated",
      rows,
    };
    if (!values.json) console.log(`fp32 peak after: ${peakAfter.toFixed(1)} GFLOP/s`);
    else console.log(JSON.stringify(result, null, 2));
    if (values.out) await Deno.writeTextFile(values.out, JSON.stringify(result, null, 2));
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main());

/**
 * Sparse and int8 kernel benchmark (issue 4): our 4x1-block sparse int8 linear at several
 * block sparsities against our dense int8, our dense fp32, ONNX Runtime's MatMulInteger and
 * ONNX Runtime's fp32 MatMul, on BERT shapes and the same threads, interleaved in one run with
 * the int8 peak probed in the same run.
 *
 *   deno task bench:kernels [--threads 2] [--quick] [--json] [--out FILE]
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
import * as ort from "onnxruntime-node";
import { setThreads } from "../ffi/library.ts";
import { environment, fmt, interleave, type Stats } from "./_timing.ts";
import { probePeakI8, setupShape, SHAPES, SPARSITIES } from "./_kernels_setup.ts";
import { quantizeActivations, quantizeWeights } from "../ops/quantize.ts";
import { mulberry32 } from "../ops/random.ts";

const HELP = `Usage: deno task bench:kernels [options]

Times the sparse int8 linear (random 4x1-block patterns) against dense int8, dense fp32,
ONNX Runtime MatMulInteger and ONNX Runtime MatMul on BERT shapes, in interleaved rounds.
Reports effective GOP/s (kept multiply-accumulates only), the fraction of the int8 peak probed
in the same run, and speedups:
  vs gemm_i8 and vs ORT MatMulInteger   kernel times (u8 activations in, already quantized)
  vs linear_f32 and vs ORT MatMul       op times (fp32 in, fp32 out, quantization included)

Options:
  --threads N     threads for every runtime (default 2)
  --quick         M=128, K x N = 768 x 3072 and 3072 x 768, sparsity 0/0.7/0.9, fewer rounds
  --m LIST        token counts, comma separated (default 128,384)
  --no-ort        skip the ONNX Runtime contenders
  --accuracy      instead of timing, print the error of 7-bit vs 8-bit activations (the cost
                  of the no-saturation rule) on a 128 x 768 x 768 product
  --json          print the JSON result instead of the table
  --out FILE      also write the JSON result to FILE
  -h, --help      show this help`;

/** One measured (shape, sparsity). */
export interface KernelRow {
  m: number;
  k: number;
  n: number;
  sparsity: number;
  ms: Record<string, Stats>;
  /** Effective GOP/s of the sparse int8 kernel: 2 x kept MACs / median time. */
  effectiveGops: number;
  /** effectiveGops / int8 peak of this run. */
  fractionOfPeak: number;
  /** Effective GOP/s of the sparse fp32 op (non-zero MACs). */
  sparseF32Gops: number | null;
  speedup: {
    vsGemmI8: number;
    vsLinearF32: number;
    vsOrtMatMulInteger: number | null;
    vsOrtMatMulF32: number | null;
  };
}

/** Dense int8 against ONNX Runtime for one shape. */
export interface DenseRow {
  m: number;
  k: number;
  n: number;
  gemmI8Gops: number;
  fractionOfPeak: number;
  ortMatMulIntegerGops: number | null;
  ratioGemmI8OverOrt: number | null;
}

/** The table of {@linkcode KernelRow}s, each shape followed by its dense int8 line. */
function printTable(rows: KernelRow[], dense: DenseRow[], log: (line: string) => void): void {
  log(
    "    M     K     N  spars  spmm ms  GOP/s  %peak  vs i8  vs f32  vs ORT-i8  vs ORT-f32  spmm_f32 GF/s",
  );
  for (const d of dense) {
    for (const row of rows.filter((r) => r.m === d.m && r.k === d.k && r.n === d.n)) {
      log(
        `${fmt(row.m, 0, 5)} ${fmt(row.k, 0, 5)} ${fmt(row.n, 0, 5)} ${fmt(row.sparsity, 2, 6)} ${
          fmt(row.ms.spmm_i8_kernel.median, 3, 8)
        } ${fmt(row.effectiveGops, 0, 6)} ${fmt(100 * row.fractionOfPeak, 1, 6)} ${
          fmt(row.speedup.vsGemmI8, 2, 6)
        } ${fmt(row.speedup.vsLinearF32, 2, 7)} ${
          fmt(row.speedup.vsOrtMatMulInteger ?? NaN, 2, 10)
        } ${fmt(row.speedup.vsOrtMatMulF32 ?? NaN, 2, 11)} ${fmt(row.sparseF32Gops ?? NaN, 1, 14)}`,
      );
    }
    log(
      `      dense int8 ${d.k}x${d.n}: ${d.gemmI8Gops.toFixed(0)} GOP/s (${
        (100 * d.fractionOfPeak).toFixed(1)
      }% of peak), ORT MatMulInteger ${d.ortMatMulIntegerGops?.toFixed(0) ?? "-"} GOP/s, ours/ORT ${
        d.ratioGemmI8OverOrt?.toFixed(2) ?? "-"
      }`,
    );
  }
}

function parseList(text: string, what: string): number[] {
  const values = text.split(",").map((s) => Number(s.trim()));
  if (values.some((v) => !Number.isInteger(v) || v < 1)) {
    throw new UsageError(`--${what} needs positive integers, got "${text}"`);
  }
  return values;
}

function main(): Promise<number> {
  return runCommand(Deno.args, {
    help: HELP,
    parse: {
      options: {
        ...stringOptions("m", "out"),
        ...flagOptions("quick", "no-ort", "accuracy", "json"),
        threads: { type: "string", default: "2" },
      },
    },
  }, async ({ values }) => {
    const threads = integerOption("threads", values.threads);
    const ms = values.m ? parseList(values.m, "m") : values.quick ? [128] : [128, 384];
    setThreads(threads);
    if (values.accuracy) {
      const rows = activationBitsError();
      if (values.json) {
        console.log(JSON.stringify({ benchmark: "int8_activation_bits", rows }, null, 2));
      } else {
        for (const r of rows) {
          console.log(
            `${r.input.padEnd(10)} ${r.mode.padEnd(10)} 7-bit ${r.error7.toFixed(3)}%  8-bit ${
              r.error8.toFixed(3)
            }%  (relative RMS error vs fp32)`,
          );
        }
      }
      return 0;
    }
    const noOrt = values["no-ort"];
    const shapes = values.quick ? [SHAPES[1], SHAPES[2]] : SHAPES;
    const sparsities = values.quick ? [0, 0.7, 0.9] : SPARSITIES;
    const rounds = values.quick ? 5 : 7;
    const roundMs = values.quick ? 80 : 120;
    const log = (line: string) => values.json || console.log(line);

    // The peak is probed before and after the run and the better probe counts: a probe can
    // only read low (a busy moment of the machine), never high. The table waits for both.
    const peakBefore = probePeakI8();
    const progress = (line: string) => values.json || console.error(line);
    progress(`int8 peak (probe before, ${threads} threads): ${peakBefore.toFixed(1)} GOP/s`);
    const rows: KernelRow[] = [];
    const denseRows: DenseRow[] = [];
    for (const m of ms) {
      for (const [k, n] of shapes) {
        progress(`timing M=${m} K=${k} N=${n} ...`);
        const setup = await setupShape({ m, k, n, threads, sparsities, noOrt });
        const results = await interleave(setup.contenders, { rounds, roundMs });
        await setup.release();
        const med = (name: string) => results.get(name)?.median ?? NaN;
        const gops = (name: string) => 2 * setup.macs.get(name)! / (med(name) * 1e6);
        const ortI8 = noOrt ? null : med("ort_matmul_integer");
        const ortF32 = noOrt ? null : med("ort_matmul_f32");
        denseRows.push({
          m,
          k,
          n,
          gemmI8Gops: gops("gemm_i8_kernel"),
          fractionOfPeak: NaN, // once the peak is known
          ortMatMulIntegerGops: noOrt ? null : gops("ort_matmul_integer"),
          ratioGemmI8OverOrt: ortI8 === null ? null : ortI8 / med("gemm_i8_kernel"),
        });
        for (const sparsity of sparsities) {
          const kernel = `spmm_i8_kernel@${sparsity}`;
          const op = `spmm_i8_op@${sparsity}`;
          const f32 = `spmm_f32@${sparsity}`;
          const ms: Record<string, Stats> = {};
          for (
            const name of [
              kernel,
              op,
              f32,
              "gemm_i8_kernel",
              "gemm_i8_op",
              "linear_f32",
              "ort_matmul_integer",
              "ort_matmul_f32",
            ]
          ) {
            const s = results.get(name);
            if (s) ms[name.replace(`@${sparsity}`, "")] = s;
          }
          const row: KernelRow = {
            m,
            k,
            n,
            sparsity,
            ms,
            effectiveGops: gops(kernel),
            fractionOfPeak: NaN, // once the peak is known
            sparseF32Gops: results.has(f32) ? gops(f32) : null,
            speedup: {
              vsGemmI8: med("gemm_i8_kernel") / med(kernel),
              vsLinearF32: med("linear_f32") / med(op),
              vsOrtMatMulInteger: ortI8 === null ? null : ortI8 / med(kernel),
              vsOrtMatMulF32: ortF32 === null ? null : ortF32 / med(op),
            },
          };
          rows.push(row);
        }
      }
    }
    const peakAfter = probePeakI8();
    const peak = Math.max(peakBefore, peakAfter);
    for (const r of rows) r.fractionOfPeak = r.effectiveGops / peak;
    for (const d of denseRows) d.fractionOfPeak = d.gemmI8Gops / peak;
    log(
      `int8 peak (probe, ${threads} threads): ${peak.toFixed(1)} GOP/s (before ${
        peakBefore.toFixed(1)
      }, after ${peakAfter.toFixed(1)}: the better one counts)`,
    );
    printTable(rows, denseRows, log);
    const result = {
      benchmark: "kernels_sparse_int8",
      command: `deno task bench:kernels ${Deno.args.join(" ")}`.trim(),
      threads,
      ortVersion: noOrt ? null : (ort.env.versions?.common ?? "unknown"),
      environment: environment(),
      int8PeakGops: { before: peakBefore, after: peakAfter, used: peak },
      rows,
      dense: denseRows,
    };
    if (values.json) console.log(JSON.stringify(result, null, 2));
    if (values.out) await Deno.writeTextFile(values.out, JSON.stringify(result, null, 2));
    return 0;
  });
}

/** One row of the activation-bits accuracy check. */
export interface BitsRow {
  input: string;
  mode: "per-token" | "per-tensor";
  /** Relative RMS error (%) of the int8 product with 7-bit activations. */
  error7: number;
  /** The same with 8-bit activations. */
  error8: number;
}

/**
 * Relative RMS error against the fp32 product of int8 weights (per channel) with 7-bit and
 * 8-bit activations, on Gaussian, GELU-like and outlier-heavy inputs: the accuracy cost of
 * the 7-bit rule that keeps `vpmaddubsw` from saturating.
 */
export function activationBitsError(): BitsRow[] {
  const [m, k, n] = [128, 768, 768];
  const next = mulberry32(1);
  const gauss = () => next() + next() + next() + next() + next() + next() - 3;
  const w = new Float32Array(n * k).map(() => gauss() * 0.05);
  const qw = quantizeWeights({ out: n, in: k, weight: w });
  const inputs: [string, Float32Array][] = [
    ["gaussian", new Float32Array(m * k).map(() => gauss())],
    [
      "gelu-like",
      new Float32Array(m * k).map(() => {
        const v = gauss() * 1.5;
        return 0.5 * v * (1 + Math.tanh(0.8 * v));
      }),
    ],
    [
      "outliers",
      new Float32Array(m * k).map((_, i) => i % k === Math.floor(i / k) % k ? 20 : gauss()),
    ],
  ];
  const rows: BitsRow[] = [];
  for (const [input, x] of inputs) {
    const ref = new Float64Array(m * n);
    let power = 0;
    for (let t = 0; t < m; t++) {
      for (let c = 0; c < n; c++) {
        let s = 0;
        for (let i = 0; i < k; i++) s += x[t * k + i] * w[c * k + i];
        ref[t * n + c] = s;
        power += s * s;
      }
    }
    for (const mode of ["per-token", "per-tensor"] as const) {
      const errors = [127, 255].map((qmax) => {
        const q = quantizeActivations(x, m, k, { mode, qmax });
        let err = 0;
        for (let t = 0; t < m; t++) {
          for (let c = 0; c < n; c++) {
            let s = 0;
            for (let i = 0; i < k; i++) {
              s += (q.data[t * q.stride + i] - q.zeroPoint[t]) * qw.weight[c * k + i];
            }
            err += (s * q.scale[t] * qw.scale[c] - ref[t * n + c]) ** 2;
          }
        }
        return 100 * Math.sqrt(err / power);
      });
      rows.push({ input, mode, error7: errors[0], error8: errors[1] });
    }
  }
  return rows;
}

if (import.meta.main) Deno.exit(await main());

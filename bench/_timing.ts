/**
 * Timing helpers shared by the benchmark runners: repeated measurement with warm-up,
 * interleaved (A B A B) rounds so machine drift hits every contender alike, robust statistics,
 * and the peak probes that every benchmark reports its fraction of.
 *
 * @module
 */
import { cpuModel, kernels } from "../ffi/library.ts";

/** Summary statistics of a set of samples (milliseconds). */
export interface Stats {
  n: number;
  median: number;
  mean: number;
  min: number;
  p10: number;
  p90: number;
  p99: number;
}

/** Percentile by linear interpolation over sorted samples. */
export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const index = (sorted.length - 1) * p;
  const lo = Math.floor(index);
  const hi = Math.ceil(index);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (index - lo);
}

/** The median of unsorted `values` (the mean of the middle two for an even count). */
export function median(values: readonly number[]): number {
  return percentile([...values].sort((a, b) => a - b), 0.5);
}

/** Statistics of `samples`. */
export function stats(samples: readonly number[]): Stats {
  const sorted = [...samples].sort((a, b) => a - b);
  return {
    n: sorted.length,
    median: percentile(sorted, 0.5),
    mean: sorted.reduce((s, v) => s + v, 0) / Math.max(1, sorted.length),
    min: sorted[0] ?? NaN,
    p10: percentile(sorted, 0.1),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
  };
}

/** A contender in an interleaved benchmark: a (sync or async) function doing one iteration. */
export interface Contender {
  name: string;
  run: () => unknown | Promise<unknown>;
}

/** Options for {@linkcode interleave}. */
export interface InterleaveOptions {
  /** Rounds of A B A B; default 7. */
  rounds?: number;
  /** Target time per contender per round in ms; default 150. */
  roundMs?: number;
  /** Warm-up iterations per contender before the first round; default 3. */
  warmup?: number;
  /**
   * Pause before each contender's round, in ms; default 100. Runtimes whose idle threads spin
   * after a call (ONNX Runtime's do) would otherwise steal cores from the next contender.
   */
  settleMs?: number;
}

/**
 * Runs contenders in interleaved rounds; each sample is the mean time of one iteration within
 * one round, so the result holds `rounds` samples per contender.
 */
export async function interleave(
  contenders: readonly Contender[],
  options: InterleaveOptions = {},
): Promise<Map<string, Stats>> {
  const { rounds = 7, roundMs = 150, warmup = 3, settleMs = 100 } = options;
  const iterations = new Map<string, number>();
  for (const c of contenders) {
    for (let i = 0; i < warmup; i++) await c.run();
    const t0 = performance.now();
    await c.run();
    const one = Math.max(performance.now() - t0, 0.001);
    iterations.set(c.name, Math.max(1, Math.min(10_000, Math.round(roundMs / one))));
  }
  const samples = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    for (const c of contenders) {
      const n = iterations.get(c.name)!;
      await new Promise((resolve) => setTimeout(resolve, settleMs));
      await c.run(); // one untimed call wakes this contender's threads
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await c.run();
      samples.get(c.name)!.push((performance.now() - t0) / n);
    }
  }
  return new Map([...samples].map(([name, s]) => [name, stats(s)]));
}

/**
 * The peak rate (work units per ns, i.e. G per second) of a probe that returns the work it did:
 * one warm-up call (wakes the workers, settles clocks), then the best of 7 timed ones. A peak is
 * the best rate reached: on a shared machine noise only lowers a run, and a median there once
 * read half the peak, inflating every "% of peak" against it.
 */
export function probeBest(warmUp: () => unknown, run: () => number): number {
  warmUp();
  let best = 0;
  for (let i = 0; i < 7; i++) {
    const t0 = performance.now();
    const work = run();
    best = Math.max(best, work / ((performance.now() - t0) * 1e6));
  }
  return best;
}

/** Measures the machine's fp32 FMA peak (GFLOP/s) with the current thread count (`probeBest`). */
export function probePeakF32(): number {
  const lib = kernels().symbols;
  return probeBest(
    () => lib.sb_probe_peak_f32(2_000_000n),
    () => Number(lib.sb_probe_peak_f32(10_000_000n)),
  );
}

/** Formats a number with fixed decimals, padded to `width`. */
export function fmt(value: number, decimals: number, width: number): string {
  return (Number.isFinite(value) ? value.toFixed(decimals) : "-").padStart(width);
}

/** Versions and machine facts recorded with every benchmark result. */
export function environment(): Record<string, unknown> {
  const lib = kernels();
  return {
    date: new Date().toISOString(),
    cpu: cpuModel() ?? "unknown",
    logicalCpus: navigator.hardwareConcurrency,
    isa: lib.isa,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
  };
}

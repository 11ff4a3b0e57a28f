/**
 * Measuring a group of contestants interleaved (A B C A B C ...): every contestant is loaded,
 * warmed up and its iterations per turn calibrated to the round time, and then the rounds
 * run with the order rotated each round and a settle pause before every turn (so that the
 * previous runtime's spinning threads have gone idle). Latency runs pool the per-iteration
 * latencies of all rounds; throughput runs give each configuration time-boxed turns.
 *
 * Failed contestants are kept with their stage and error, never dropped. A failure that would
 * repeat identically (a runtime that does not import, a converter that has no int8 support, a
 * runtime that aborts on an int8 layout) is remembered by {@linkcode FailureMemo} and not
 * retried; the report says so.
 *
 * Where the contestants of a group do not fit in memory together (BERT-Large: 11 processes each
 * holding the model), a {@linkcode MemoryPlanner} splits the group into waves, each loaded,
 * interleaved and closed before the next; results say which wave measured them.
 *
 * @module
 */

import { median, percentile } from "../_timing.ts";
import {
  type Contestant,
  ContestantError,
  type ContestantSpec,
  type LoadInfo,
  type OutputSummary,
  type RunSample,
  startContestant,
  type StartOptions,
} from "./contestants.ts";
import { gib, type MemoryPlanner, modelBytes, peakRssBytes } from "./memory.ts";
import { encoderMacs, type ModelDef, type Scenario } from "./matrix.ts";

/** Latency statistics of one contestant (numpy-style linear percentiles). */
export interface LatencySummary {
  /** Timed iterations (all rounds, all instances). */
  n: number;
  /** Median latency (ms). */
  p50: number;
  /** 90th percentile (ms). */
  p90: number;
  /** 99th percentile (ms). */
  p99: number;
  /** Mean (ms). */
  mean: number;
  /** Fastest (ms). */
  min: number;
  /** Slowest (ms). */
  max: number;
  /** Items per second: items / wall time of the timed turns. */
  itemsPerS: number;
  /** Median of each round (ms). */
  roundMediansMs: number[];
  /** (max - min) of the round medians over the median, in percent: the run-to-run spread. */
  spreadPct: number;
}

/** What happened to one contestant. */
export interface ContestantResult {
  /** `runtime:form` plus the instance config when not 1. */
  id: string;
  /** What was loaded. */
  spec: ContestantSpec;
  /** `ok`, `failed` (with stage and error) or `skipped` (with the reason in `error`). */
  status: "ok" | "failed" | "skipped";
  /** Where it failed. */
  stage?: string;
  /** The error, or why it was skipped. */
  error?: string;
  /** Tail of the runtime's stderr (failures). */
  stderrTail?: string;
  /** Versions and settings. */
  info?: LoadInfo;
  /** Statistics (ok only). */
  stats?: LatencySummary;
  /** Output summary of the last turn. */
  output?: OutputSummary | null;
  /** Wave of its group it was measured in (1 unless memory split the group). */
  wave?: number;
  /** Peak resident bytes of its processes after warm-up (Linux). */
  peakRssBytes?: number;
}

/** Id of a contestant in reports. */
export function contestantId(spec: ContestantSpec): string {
  const inst = spec.instances === 1 ? "" : ` ${spec.instances}x${spec.threads}`;
  return `${spec.runtime}:${spec.form}${inst}`;
}

/** Summarizes latencies and the wall time they took. */
export function summarize(
  rounds: { latenciesMs: number[]; wallS: number; items: number }[],
): LatencySummary {
  const all = rounds.flatMap((r) => r.latenciesMs);
  if (all.length === 0) throw new RangeError("No latencies to summarize");
  const sorted = [...all].sort((a, b) => a - b);
  const roundMedians = rounds.filter((r) => r.latenciesMs.length > 0).map((r) =>
    median(r.latenciesMs)
  );
  const p50 = percentile(sorted, 0.5);
  const wall = rounds.reduce((s, r) => s + r.wallS, 0);
  const items = rounds.reduce((s, r) => s + r.items, 0);
  const spread = roundMedians.length > 1
    ? (Math.max(...roundMedians) - Math.min(...roundMedians)) / p50 * 100
    : 0;
  return {
    n: all.length,
    p50,
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    mean: all.reduce((s, v) => s + v, 0) / all.length,
    min: sorted[0],
    max: sorted[sorted.length - 1],
    itemsPerS: wall > 0 ? items / wall : 0,
    roundMediansMs: roundMedians,
    spreadPct: spread,
  };
}

/**
 * Failures that would repeat identically, remembered for the rest of a run: a runtime that
 * cannot start or import (every later contestant of it), and a runtime that cannot convert or
 * aborts on an int8 layout (later contestants of that runtime and layout).
 */
export class FailureMemo {
  #byKey = new Map<string, { id: string; stage: string; error: string }>();

  #keys(spec: ContestantSpec): string[] {
    return [`${spec.runtime}|*`, `${spec.runtime}|${spec.form}`];
  }

  /** The remembered failure that applies to `spec`, or null. */
  lookup(spec: ContestantSpec): { id: string; stage: string; error: string } | null {
    for (const k of this.#keys(spec)) {
      const hit = this.#byKey.get(k);
      if (hit) return hit;
    }
    return null;
  }

  /** Remembers `err` when it is of a kind that repeats. */
  record(spec: ContestantSpec, err: ContestantError): void {
    const entry = { id: contestantId(spec), stage: err.stage, error: err.message };
    if (err.stage === "spawn" || err.stage === "import") {
      this.#byKey.set(`${spec.runtime}|*`, entry);
    } else if (spec.form !== "fp32" && (err.stage === "convert" || err.stage === "exit")) {
      this.#byKey.set(`${spec.runtime}|${spec.form}`, entry);
    }
  }
}

/** Settings of {@linkcode measureGroup}. */
export interface GroupOptions {
  /** `latency`: calibrated iterations per turn; `throughput`: time-boxed turns. */
  mode: "latency" | "throughput";
  /** Rounds. */
  rounds: number;
  /** Latency mode: target time of one turn (ms). */
  roundMs: number;
  /** Throughput mode: seconds of one turn. */
  turnSeconds: number;
  /** Untimed iterations after loading. */
  warmup: number;
  /** Pause before each turn (ms). */
  settleMs: number;
  /** Timed seconds after which a contestant takes no more turns (2 rounds at least). */
  maxContestantS: number;
  /** Contestant start settings. */
  start: StartOptions;
  /** Failures not to retry. */
  memo: FailureMemo;
  /** Splits the group into waves that fit in memory (default: everything loads at once). */
  memory?: MemoryPlanner;
  /** Progress lines. */
  log: (line: string) => void;
}

function failed(spec: ContestantSpec, err: unknown): ContestantResult {
  const e = err instanceof ContestantError ? err : null;
  return {
    id: contestantId(spec),
    spec,
    status: "failed",
    stage: e?.stage ?? "harness",
    error: (err as Error).message,
    stderrTail: e?.stderr ? e.stderr.slice(-2000) : undefined,
  };
}

/** A loaded contestant of a wave, with its calibration and samples. */
interface LiveEntry {
  /** Index in the group's specs. */
  index: number;
  /** The contestant. */
  c: Contestant;
  /** Timed iterations per latency turn. */
  n: number;
  /** Untimed iterations before each turn. */
  warm: number;
  /** Samples of the turns so far. */
  samples: RunSample[];
  /** Peak resident bytes of its processes after warm-up. */
  peakBytes: number;
}

/**
 * Warm-up and calibration: iterations per turn so that a turn takes about roundMs. A slow
 * contestant (over 0.5 s an iteration) is calibrated on its first timed iteration.
 */
async function calibrate(entry: LiveEntry, options: GroupOptions): Promise<void> {
  let s = await entry.c.run({
    iterations: 1,
    warmup: Math.min(1, options.warmup),
    settleMs: options.settleMs,
  });
  if (median(s.latenciesMs) < 500 && options.mode === "latency") {
    s = await entry.c.run({
      iterations: 2,
      warmup: Math.max(0, options.warmup - 1),
      settleMs: 0,
    });
  }
  const one = Math.max(median(s.latenciesMs), 0.01);
  entry.n = Math.max(1, Math.min(10_000, Math.round(options.roundMs / one)));
  // Re-warm after another runtime ran, unless one iteration is long enough to not care.
  entry.warm = one < 200 ? 1 : 0;
}

/** The memo's failure for `spec` as a result, or null. */
function memoResult(spec: ContestantSpec, memo: FailureMemo): ContestantResult | null {
  const hit = memo.lookup(spec);
  if (!hit) return null;
  return {
    id: contestantId(spec),
    spec,
    status: "failed",
    stage: hit.stage,
    error: `${hit.error} (not retried: ${hit.id} failed the same way earlier in this run)`,
  };
}

/**
 * Loads, warms up and calibrates the contestants of `pending` one after another while the
 * memory planner says the next one fits (the first always starts), measures those interleaved,
 * closes them, and returns the indices that must wait for the next wave.
 */
async function measureWave(
  specs: ContestantSpec[],
  pending: number[],
  wave: number,
  options: GroupOptions,
  results: ContestantResult[],
): Promise<number[]> {
  const { log, memo, memory } = options;
  const deferred: number[] = [];
  const live: LiveEntry[] = [];
  const drop = async (entry: LiveEntry, err: unknown): Promise<void> => {
    results[entry.index] = { ...failed(entry.c.spec, err), info: entry.c.info, wave };
    log(`  FAILED ${contestantId(entry.c.spec)}: ${(err as Error).message.split("\n")[0]}`);
    live.splice(live.indexOf(entry), 1);
    await entry.c.close().catch(() => {});
  };
  try {
    for (const index of pending) {
      const spec = specs[index];
      const hit = memoResult(spec, memo);
      if (hit) {
        results[index] = { ...hit, wave };
        continue;
      }
      const bytes = memory ? modelBytes(spec.path) : 0;
      if (memory && live.length > 0 && !memory.fits(spec, bytes)) {
        deferred.push(index);
        continue;
      }
      let entry: LiveEntry;
      try {
        const c = await startContestant(spec, options.start);
        entry = { index, c, n: 1, warm: 0, samples: [], peakBytes: 0 };
        live.push(entry);
      } catch (err) {
        if (err instanceof ContestantError) memo.record(spec, err);
        results[index] = { ...failed(spec, err), wave };
        log(`  FAILED ${contestantId(spec)}: ${(err as Error).message.split("\n")[0]}`);
        continue;
      }
      try {
        await calibrate(entry, options);
      } catch (err) {
        await drop(entry, err);
        continue;
      }
      entry.peakBytes = peakRssBytes(entry.c.pids);
      memory?.learn(spec, bytes, entry.peakBytes, entry.c.pids.length);
      log(
        `  loaded ${contestantId(spec)} in ${(entry.c.info.loadMs / 1000).toFixed(1)} s` +
          (entry.peakBytes > 0 ? `, peak ${gib(entry.peakBytes)}` : ""),
      );
    }
    if (deferred.length > 0) {
      const available = memory?.available();
      log(
        `  wave ${wave}: ${live.length} loaded, ${deferred.length} wait for the next wave ` +
          `(memory: ${available == null ? "?" : gib(available)} available)`,
      );
    }
    for (let r = 0; r < options.rounds; r++) {
      const order = live.map((_, i) => live[(i + r) % live.length]);
      for (const entry of order) {
        if (!live.includes(entry)) continue;
        // A slow contestant stops taking turns once it has spent its time cap (2 rounds at
        // least), so that one slow runtime cannot stretch a group to hours.
        const spent = entry.samples.reduce(
          (t, x) => t + x.latenciesMs.reduce((a, b) => a + b, 0),
          0,
        );
        if (entry.samples.length >= 2 && spent / 1000 >= options.maxContestantS) continue;
        try {
          const s = options.mode === "latency"
            ? await entry.c.run({
              iterations: entry.n,
              warmup: entry.warm,
              settleMs: options.settleMs,
            })
            : await entry.c.run({
              seconds: options.turnSeconds,
              warmup: 1,
              settleMs: options.settleMs,
            });
          entry.samples.push(s);
        } catch (err) {
          await drop(entry, err);
        }
      }
    }
    for (const entry of live) {
      results[entry.index] = {
        id: contestantId(entry.c.spec),
        spec: entry.c.spec,
        status: "ok",
        info: entry.c.info,
        stats: summarize(entry.samples),
        output: entry.samples.at(-1)?.output ?? null,
        wave,
        peakRssBytes: entry.peakBytes > 0 ? entry.peakBytes : undefined,
      };
    }
  } finally {
    await Promise.all(live.map((e) => e.c.close().catch(() => {})));
  }
  return deferred;
}

/**
 * Loads `specs`, measures them interleaved, closes them, and returns one result per spec (in
 * the order given). Contestants listed in `preFailed` are reported without being started.
 * With `options.memory`, contestants that would not fit in memory beside those loaded wait
 * for a later wave (each wave is interleaved on its own; results carry their wave).
 */
export async function measureGroup(
  specs: ContestantSpec[],
  options: GroupOptions,
  preFailed: Map<number, ContestantResult> = new Map(),
): Promise<ContestantResult[]> {
  const results: ContestantResult[] = new Array(specs.length);
  let pending: number[] = [];
  for (const index of specs.keys()) {
    const pre = preFailed.get(index);
    if (pre) results[index] = pre;
    else pending.push(index);
  }
  // Each wave starts at least its first pending contestant, so this ends.
  for (let wave = 1; pending.length > 0; wave++) {
    pending = await measureWave(specs, pending, wave, options, results);
  }
  return results;
}

/**
 * Throughput assumed by the time estimate: FLOP/s per thread of a dense fp32 encoder (BERT-Base
 * ran at about 78 per thread on the 2-core Zen 3 machine; this leaves margin).
 */
const EST_FLOPS_PER_THREAD = 60e9;

/**
 * Rough seconds a group will take: loading (about 1.2 s per process plus 300 MB/s of model;
 * DeepSparse also compiles), warm-up and calibration, and the rounds (a turn lasts at least one
 * iteration). Used to skip steps that would end past the budget.
 */
export function estimateGroupSeconds(
  model: ModelDef,
  scenario: Scenario,
  density: number,
  specs: ContestantSpec[],
  options: Pick<
    GroupOptions,
    "mode" | "rounds" | "roundMs" | "turnSeconds" | "warmup" | "settleMs" | "maxContestantS"
  >,
): number {
  let total = 0;
  for (const spec of specs) {
    // DeepSparse's int8 is emulated on AVX2 and gains nothing from sparsity (measured 3x to 10x
    // its dense fp32 time at any sparsity).
    const emulated = spec.runtime === "deepsparse" && spec.form !== "fp32";
    const work = 2 * encoderMacs(model, { ...scenario, batch: spec.batch }, emulated ? 1 : density);
    const iterS = (emulated ? 6 : 1) * work /
      (EST_FLOPS_PER_THREAD * spec.threads);
    const params = model.layers *
        (4 * model.hidden ** 2 + 2 * model.hidden * model.intermediate) +
      30522 * model.hidden;
    const mb = (params * (spec.form === "fp32" ? 4 : 1)) / 1e6;
    // DeepSparse compiles about 10M fp32 or 4M int8 parameters a second (BERT-Base: 12 s, 28 s).
    const compile = spec.runtime === "deepsparse" ? 2 + params / (emulated ? 4e6 : 10e6) : 0;
    const load = spec.instances * (1.2 + mb / 300) + compile;
    const warm = (iterS > 0.5 ? 2 : options.warmup + 2) * iterS + options.settleMs / 1000;
    const turn = options.mode === "latency"
      ? Math.max(options.roundMs / 1000, iterS) + options.settleMs / 1000 +
        (iterS < 0.2 ? iterS : 0)
      : Math.max(options.turnSeconds, iterS) + iterS + options.settleMs / 1000;
    const turnWork = options.mode === "latency"
      ? Math.max(options.roundMs / 1000, iterS)
      : Math.max(options.turnSeconds, iterS);
    const rounds = Math.min(
      options.rounds,
      Math.max(2, Math.ceil(options.maxContestantS / turnWork)),
    );
    total += load + warm + rounds * turn + 0.3;
  }
  return total;
}

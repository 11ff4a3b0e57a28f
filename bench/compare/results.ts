/**
 * What a comparison run returns ({@linkcode ComparisonResult}: the files, every latency group
 * and bound search with each contestant's figures) and the head-to-head summary of sparsebert's
 * best sparse int8 variant against each peer on the same weights ({@linkcode headToHead}).
 *
 * @module
 */
import type { ContestantResult } from "./scenario.ts";
import {
  type ModelForm,
  type Plan,
  type RuntimeName,
  type Scenario,
  scenarioKey,
  type Variant,
} from "./matrix.ts";

/** A model file as the report lists it. */
export interface FileRecord {
  /** Layout. */
  form: ModelForm;
  /** Path. */
  path: string;
  /** Bytes. */
  bytes: number;
  /** Taken from the cache. */
  cached: boolean;
  /** Preparation time in this run. */
  prepMs: number;
  /** How it was made. */
  made: Record<string, unknown>;
}

/** One latency group: one model variant in one scenario, every runtime and form. */
export interface LatencyGroupResult {
  /** Model key. */
  model: string;
  /** Variant. */
  variant: Variant;
  /** Variant key. */
  variantKey: string;
  /** Scenario. */
  scenario: Scenario;
  /** Scenario key. */
  scenarioKey: string;
  /** Interleaved rounds. */
  rounds: number;
  /** Target time of one turn (ms). */
  roundMs: number;
  /** Files used, by form. */
  files: FileRecord[];
  /** One entry per (runtime, form). */
  contestants: ContestantResult[];
  /** Why the whole group did not run (time budget), if it did not. */
  skipped?: string;
  /** Seconds the group took. */
  elapsedS: number;
}

/** One latency-bound throughput search: one model variant, every runtime x config x batch. */
export interface BoundGroupResult {
  /** Model key. */
  model: string;
  /** Variant. */
  variant: Variant;
  /** Variant key. */
  variantKey: string;
  /** The weights, e.g. `90% 4x1 weights` (each runtime runs its fastest precision on them). */
  weights: string;
  /** Sequence length. */
  seq: number;
  /** p90 bound per call (ms). */
  boundMs: number;
  /** Every (runtime, instances x threads, batch) tried. */
  contestants: ContestantResult[];
  /** Per runtime: the most items/s with p90 within the bound, or null. */
  best: Partial<Record<RuntimeName, BoundBest | null>>;
  /** Why it did not run, if it did not. */
  skipped?: string;
  /** Seconds it took. */
  elapsedS: number;
}

/** The best configuration of a runtime under the latency bound. */
export interface BoundBest {
  /** Contestant id. */
  id: string;
  /** Form. */
  form: ModelForm;
  /** Instances. */
  instances: number;
  /** Threads per instance. */
  threads: number;
  /** Batch. */
  batch: number;
  /** Items per second. */
  itemsPerS: number;
  /** p90 (ms). */
  p90: number;
}

/** sparsebert against every peer on the acceptance scenario. */
export interface HeadToHead {
  /** Model. */
  model: string;
  /** Scenario. */
  scenario: Scenario;
  /** sparsebert's fastest sparse int8 variant, or null when none ran. */
  sparsebert: { variantKey: string; p50: number; spreadPct: number } | null;
  /** Per peer: its fastest configuration on the same pruned weights (fp32 or any int8 form). */
  peers: Partial<
    Record<
      RuntimeName,
      { variantKey: string; form: ModelForm; p50: number; speedup: number } | null
    >
  >;
  /** What could not be compared, and why. */
  notes: string[];
}

/** Everything one run measured. */
export interface ComparisonResult {
  /** Format tag. */
  schema: "sparsebert-bench-compare/1";
  /** Command line. */
  command: string;
  /** Plan name. */
  plan: Plan["name"];
  /** The plan itself. */
  planDetail: Plan;
  /** Start (ISO 8601). */
  startedAt: string;
  /** End (ISO 8601), or null in a partial result written while the run goes on. */
  finishedAt: string | null;
  /** Wall seconds. */
  elapsedS: number;
  /** Machine facts. */
  machine: Record<string, unknown>;
  /** Versions per runtime (from the processes that loaded). */
  versions: Partial<Record<RuntimeName, Record<string, string>>>;
  /** Runtimes run, and those not run with the reason. */
  runtimes: { name: RuntimeName; run: boolean; reason?: string; note: string }[];
  /** The int8 layouts and which runtime gets which. */
  forms: {
    description: Record<ModelForm, string>;
    perRuntime: Record<RuntimeName, readonly ModelForm[]>;
  };
  /** Sparsity from which sparsebert's chooser tries the sparse kernel. */
  sparseThreshold: number;
  /** Latency groups. */
  latency: LatencyGroupResult[];
  /** Bound searches. */
  bound: BoundGroupResult[];
  /** sparsebert vs peers on the chart scenario. */
  headToHead: HeadToHead;
  /** sparsebert configurations that did not run, with why. */
  sparsebertMissing: string[];
  /** Model preparation failures. */
  preparationErrors: string[];
  /**
   * Peak resident bytes per byte of model file learned per runtime and precision, and the
   * bytes kept free, by the planner that split groups into waves (absent in results written
   * before the planner existed).
   */
  memory?: { reserveBytes: number; peakPerModelByte: Record<string, number> };
}

/**
 * sparsebert's fastest sparse int8 variant on `model`/`scenario` against each peer's fastest
 * configuration on the same pruned weights (the fp32 file or any int8 form of that sparsity
 * and pattern).
 */
export function headToHead(
  latency: LatencyGroupResult[],
  model: string,
  scenario: Scenario,
  runtimes: RuntimeName[],
): HeadToHead {
  const key = scenarioKey(scenario);
  const groups = latency.filter((g) => g.model === model && g.scenarioKey === key && !g.skipped);
  const notes: string[] = [];
  let sb: HeadToHead["sparsebert"] = null;
  let sbVariant: Variant | null = null;
  for (const g of groups) {
    if (g.variant.precision !== "int8" || g.variant.sparsity === 0) continue;
    const c = g.contestants.find((c) => c.spec.runtime === "sparsebert" && c.status === "ok");
    if (c && (sb === null || c.stats!.p50 < sb.p50)) {
      sb = { variantKey: g.variantKey, p50: c.stats!.p50, spreadPct: c.stats!.spreadPct };
      sbVariant = g.variant;
    }
  }
  const peers: HeadToHead["peers"] = {};
  if (sb === null || sbVariant === null) {
    notes.push(`no sparse int8 result of sparsebert on ${model} ${key}`);
    return { model, scenario, sparsebert: null, peers, notes };
  }
  for (const runtime of runtimes) {
    if (runtime === "sparsebert") continue;
    let best: { variantKey: string; form: ModelForm; p50: number; speedup: number } | null = null;
    for (const g of groups) {
      if (g.variant.sparsity !== sbVariant.sparsity || g.variant.pattern !== sbVariant.pattern) {
        continue;
      }
      for (const c of g.contestants) {
        if (c.spec.runtime !== runtime || c.status !== "ok") continue;
        if (best === null || c.stats!.p50 < best.p50) {
          best = {
            variantKey: g.variantKey,
            form: c.spec.form,
            p50: c.stats!.p50,
            speedup: c.stats!.p50 / sb.p50,
          };
        }
      }
    }
    if (best === null) notes.push(`${runtime}: no result on the same weights`);
    peers[runtime] = best;
  }
  return { model, scenario, sparsebert: sb, peers, notes };
}

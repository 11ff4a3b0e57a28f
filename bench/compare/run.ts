/**
 * The comparison run: prepares the model files, measures every latency group and bound search
 * of a {@linkcode Plan} within its time budget, and returns one JSON-ready
 * {@linkcode ComparisonResult} (the report writers in `report.ts` turn it into markdown and
 * SVG).
 *
 * ```ts
 * import { planFor } from "./matrix.ts";
 * import { runComparison } from "./run.ts";
 * const result = await runComparison({ plan: planFor("quick"), command: "example" });
 * ```
 *
 * @module
 */

import { physicalCores } from "../../ffi/library.ts";
import { readPeerSetupStatus } from "../peers/mod.ts";
import type { ContestantSpec } from "./contestants.ts";
import {
  type BoundBlock,
  checkPlan,
  type InstanceConfig,
  INT8_FORMS,
  type LatencyBlock,
  MODEL_FORMS,
  type ModelDef,
  modelDef,
  type ModelForm,
  type Plan,
  RUNTIME_NOTES,
  type RuntimeName,
  RUNTIMES,
  type Scenario,
  scenarioKey,
  type Variant,
  variantKey,
  variantLabel,
} from "./matrix.ts";
import { meminfoBytes, MemoryPlanner } from "./memory.ts";
import { ModelStore, type PreparedFile } from "./models.ts";
import {
  contestantId,
  type ContestantResult,
  estimateGroupSeconds,
  FailureMemo,
  type GroupOptions,
  measureGroup,
} from "./scenario.ts";
import {
  type BoundGroupResult,
  type ComparisonResult,
  type FileRecord,
  headToHead,
  type LatencyGroupResult,
} from "./results.ts";

/** Options of {@linkcode runComparison}. */
export interface CompareOptions {
  /** What to measure. */
  plan: Plan;
  /** The command line, for the report. */
  command: string;
  /** Runtimes to run (default every runtime but torch). */
  runtimes?: RuntimeName[];
  /** Cache folder of the model files. */
  modelsDir?: string;
  /** Folder of the Python venvs. */
  venvRoot?: string;
  /** Sparsity from which sparsebert's chooser tries the sparse kernel (default 0.5). */
  sparseThreshold?: number;
  /** p90 bound (ms) of the throughput search, instead of each model's default. */
  boundMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
  /**
   * Called after every step with the result so far (`finishedAt` null), so that a run that
   * is killed part-way leaves what it measured.
   */
  onStep?: (partial: ComparisonResult) => Promise<void>;
  /** Memory planner of the groups (default: one reading /proc/meminfo). */
  memory?: MemoryPlanner;
}

function readFileOr(path: string, fallback: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return fallback;
  }
}

async function gitCommit(): Promise<string> {
  try {
    const out = await new Deno.Command("git", {
      args: ["--no-optional-locks", "rev-parse", "--short", "HEAD"],
      cwd: decodeURIComponent(new URL("../../", import.meta.url).pathname),
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : "unknown";
  } catch {
    return "unknown";
  }
}

/** Machine facts recorded with every run. */
export async function machineInfo(): Promise<Record<string, unknown>> {
  const cpuinfo = readFileOr("/proc/cpuinfo", "");
  const cpu = cpuinfo.split("\n").find((l) => l.startsWith("model name"))?.split(":")[1]?.trim() ??
    "unknown";
  const flags = cpuinfo.split("\n").find((l) => l.startsWith("flags"))?.split(":")[1] ?? "";
  const memBytes = meminfoBytes("MemTotal") ?? 0;
  const isa = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"].filter((f) =>
    flags.split(/\s+/).includes(f)
  );
  return {
    cpu,
    physicalCores: physicalCores(),
    logicalCpus: navigator.hardwareConcurrency,
    isa,
    memoryGiB: Math.round(memBytes / 2 ** 30 * 10) / 10,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    commit: await gitCommit(),
    loadAverageAtStart: Deno.loadavg(),
  };
}

function formsFor(runtime: RuntimeName, v: Variant): readonly ModelForm[] {
  return v.precision === "fp32" ? ["fp32"] : INT8_FORMS[runtime];
}

function fileRecord(f: PreparedFile): FileRecord {
  return {
    form: f.form,
    path: f.path,
    bytes: f.bytes,
    cached: f.cached,
    prepMs: f.prepMs,
    made: f.made,
  };
}

function skippedResults(specs: ContestantSpec[], why: string): ContestantResult[] {
  return specs.map((spec) => ({ id: contestantId(spec), spec, status: "skipped", error: why }));
}

/** A contestant to be, with the variant whose file it loads. */
interface Entry {
  /** The spec (path filled in once the file is prepared). */
  spec: ContestantSpec;
  /** The variant of the file. */
  variant: Variant;
}

/** One step of a run, in run order. */
type Step =
  | { kind: "latency"; block: LatencyBlock; scenario: Scenario; variant: Variant }
  | { kind: "bound"; block: BoundBlock };

/** Latency steps in plan order; each bound block right after its model's last latency step. */
function planSteps(plan: Plan): Step[] {
  const steps: Step[] = [];
  for (const block of plan.latency) {
    for (const scenario of block.scenarios) {
      for (const variant of block.variants) {
        steps.push({ kind: "latency", block, scenario, variant });
      }
    }
  }
  for (const block of plan.bound) {
    let at = -1;
    steps.forEach((s, i) => {
      if (s.kind === "latency" && s.block.model === block.model) at = i;
    });
    if (at < 0) steps.push({ kind: "bound", block });
    else {
      while (at + 1 < steps.length && steps[at + 1].kind === "bound") at++;
      steps.splice(at + 1, 0, { kind: "bound", block });
    }
  }
  return steps;
}

/** The fastest ok contestant of `runtime` among `groups`, or null. */
function fastest(groups: LatencyGroupResult[], runtime: RuntimeName): ContestantResult | null {
  let best: ContestantResult | null = null;
  for (const g of groups) {
    for (const c of g.contestants) {
      if (c.spec.runtime !== runtime || c.status !== "ok") continue;
      if (best === null || c.stats!.p50 < best.stats!.p50) best = c;
    }
  }
  return best;
}

/**
 * The int8 layouts a runtime gets in a latency group: every one it accepts, or with `best`
 * its fastest on an earlier int8 group of the model (same variant and scenario, else same
 * variant, else same scenario, else any).
 */
function int8FormsFor(
  latency: LatencyGroupResult[],
  block: LatencyBlock,
  runtime: RuntimeName,
  v: Variant,
  scenario: Scenario,
): readonly ModelForm[] {
  const all = INT8_FORMS[runtime];
  if (block.forms !== "best" || all.length === 1) return all;
  const int8 = latency.filter((g) =>
    g.model === block.model && g.variant.precision === "int8" && !g.skipped
  );
  const key = variantKey(v);
  const sk = scenarioKey(scenario);
  const tiers = [
    int8.filter((g) => g.variantKey === key && g.scenarioKey === sk),
    int8.filter((g) => g.variantKey === key),
    int8.filter((g) => g.scenarioKey === sk),
    int8,
  ];
  for (const groups of tiers) {
    const c = fastest(groups, runtime);
    if (c) return [c.spec.form];
  }
  return all;
}

/** Entries of a latency group: every runtime x every layout it gets for `v`. */
function latencyEntries(
  latency: LatencyGroupResult[],
  block: LatencyBlock,
  runtimes: RuntimeName[],
  v: Variant,
  scenario: Scenario,
): Entry[] {
  return runtimes.flatMap((runtime) => {
    const forms = v.precision === "fp32"
      ? ["fp32" as const]
      : int8FormsFor(latency, block, runtime, v, scenario);
    return forms.map((form) => ({
      variant: v,
      spec: {
        runtime,
        form,
        path: "",
        batch: scenario.batch,
        seq: scenario.seq,
        threads: scenario.threads,
        instances: 1,
      },
    }));
  });
}

/**
 * The precision and layout a runtime runs in the bound search on the weights of `w`: its
 * fastest in the latency groups of the same model, weights, sequence length and batch (at the
 * highest thread count measured), else `w`'s precision with its first layout.
 */
function boundChoice(
  latency: LatencyGroupResult[],
  model: string,
  w: Variant,
  seq: number,
  batch: number,
  runtime: RuntimeName,
): { variant: Variant; form: ModelForm } {
  const same = latency.filter((g) =>
    g.model === model && g.variant.sparsity === w.sparsity && g.variant.pattern === w.pattern &&
    g.scenario.seq === seq && g.scenario.batch === batch && !g.skipped
  );
  const threads = Math.max(0, ...same.map((g) => g.scenario.threads));
  const c = fastest(same.filter((g) => g.scenario.threads === threads), runtime);
  if (c) {
    const precision = c.spec.form === "fp32" ? "fp32" : "int8";
    return { variant: { ...w, precision }, form: c.spec.form };
  }
  return { variant: w, form: formsFor(runtime, w)[0] };
}

/** Entries of one bound configuration. */
function boundEntries(
  latency: LatencyGroupResult[],
  block: BoundBlock,
  runtimes: RuntimeName[],
  w: Variant,
  batch: number,
  config: InstanceConfig,
): Entry[] {
  return runtimes.map((runtime) => {
    const choice = boundChoice(latency, block.model, w, block.seq, batch, runtime);
    return {
      variant: choice.variant,
      spec: {
        runtime,
        form: choice.form,
        path: "",
        batch,
        seq: block.seq,
        threads: config.threads,
        instances: config.instances,
      },
    };
  });
}

/** One step of a plan with its time estimate (see {@linkcode estimatePlan}). */
export interface PlanStep {
  /** What it measures. */
  label: string;
  /** Contestants (processes or process groups) it loads. */
  contestants: number;
  /** Estimated seconds, model preparation excluded. */
  estimateS: number;
}

function latencyOptions(plan: Plan, block: LatencyBlock): Pick<
  GroupOptions,
  "mode" | "rounds" | "roundMs" | "turnSeconds" | "warmup" | "settleMs" | "maxContestantS"
> {
  return {
    mode: "latency",
    rounds: block.rounds ?? plan.rounds,
    roundMs: block.roundMs ?? plan.roundMs,
    turnSeconds: 0,
    warmup: plan.warmup,
    settleMs: plan.settleMs,
    maxContestantS: plan.maxContestantS,
  };
}

function boundOptions(plan: Plan): Pick<
  GroupOptions,
  "mode" | "rounds" | "roundMs" | "turnSeconds" | "warmup" | "settleMs" | "maxContestantS"
> {
  const rounds = Math.max(1, Math.min(2, plan.rounds));
  return {
    mode: "throughput",
    rounds,
    roundMs: plan.roundMs,
    turnSeconds: plan.boundSeconds / rounds,
    warmup: plan.warmup,
    settleMs: plan.settleMs,
    maxContestantS: plan.maxContestantS,
  };
}

function density(v: Variant): number {
  return 1 - v.sparsity;
}

/**
 * The steps of a plan in run order with their estimated seconds (model preparation excluded:
 * it happens once and is cached). Groups with `forms: "best"` are estimated with every layout.
 */
export function estimatePlan(plan: Plan, runtimes: RuntimeName[]): PlanStep[] {
  checkPlan(plan);
  const out: PlanStep[] = [];
  for (const step of planSteps(plan)) {
    const model = modelDef(step.block.model);
    if (step.kind === "latency") {
      const { block, scenario, variant: v } = step;
      const specs = latencyEntries([], { ...block, forms: "all" }, runtimes, v, scenario).map((e) =>
        e.spec
      );
      const best = block.forms === "best" && v.precision === "int8"
        ? runtimes.map((r) => specs.find((s) => s.runtime === r)!).filter(Boolean)
        : specs;
      out.push({
        label: `${model.key} ${variantLabel(v)} ${scenarioKey(scenario)}`,
        contestants: best.length,
        estimateS: estimateGroupSeconds(
          model,
          scenario,
          density(v),
          best,
          latencyOptions(plan, block),
        ),
      });
      continue;
    }
    const { block } = step;
    for (const w of block.variants) {
      for (const batch of block.batches) {
        for (const config of block.configs) {
          const specs = boundEntries([], block, runtimes, w, batch, config).map((e) => e.spec);
          out.push({
            label: `bound ${model.key} ${weightsLabel(w)} s${block.seq} b${batch} ` +
              `${config.instances}x${config.threads}`,
            contestants: specs.length,
            estimateS: estimateGroupSeconds(
              model,
              { seq: block.seq, batch, threads: config.threads },
              density(w),
              specs,
              boundOptions(plan),
            ),
          });
        }
      }
    }
  }
  return out;
}

/** `dense weights` or `90% 4x1 weights`. */
export function weightsLabel(w: Variant): string {
  return w.sparsity === 0
    ? "dense weights"
    : `${Math.round(w.sparsity * 100)}% ${w.pattern} weights`;
}

/** Prepares the file of every entry; failures pre-fail the contestants that need the file. */
async function prepareEntries(
  store: ModelStore,
  model: ModelDef,
  entries: Entry[],
  errors: string[],
): Promise<{ specs: ContestantSpec[]; files: FileRecord[]; pre: Map<number, ContestantResult> }> {
  const files = new Map<string, PreparedFile>();
  const failures = new Map<string, string>();
  const pre = new Map<number, ContestantResult>();
  const specs: ContestantSpec[] = [];
  for (const [i, e] of entries.entries()) {
    const key = `${variantKey(e.variant)}|${e.spec.form}`;
    if (!files.has(key) && !failures.has(key)) {
      try {
        files.set(key, await store.file(model, e.variant, e.spec.form));
      } catch (err) {
        const msg = (err as Error).message;
        failures.set(key, msg);
        if (!errors.includes(msg)) errors.push(msg);
      }
    }
    const spec = { ...e.spec, path: files.get(key)?.path ?? "" };
    specs.push(spec);
    const failure = failures.get(key);
    if (failure !== undefined) {
      pre.set(i, {
        id: contestantId(spec),
        spec,
        status: "failed",
        stage: "prepare",
        error: failure,
      });
    }
  }
  return { specs, files: [...files.values()].map(fileRecord), pre };
}

/**
 * Prepares every model file a plan can need (every layout of every variant), without
 * measuring anything, so that a first run's preparation does not eat its time budget.
 * Returns the files, and the failures as messages.
 */
export async function prepareModels(
  plan: Plan,
  runtimes: RuntimeName[],
  options: { modelsDir?: string; log?: (line: string) => void } = {},
): Promise<{ files: FileRecord[]; errors: string[] }> {
  checkPlan(plan);
  const store = new ModelStore({ dir: options.modelsDir, log: options.log });
  const files: FileRecord[] = [];
  const errors: string[] = [];
  const seen = new Set<string>();
  const wants: [string, Variant][] = [
    ...plan.latency.flatMap((b) => b.variants.map((v) => [b.model, v] as [string, Variant])),
    ...plan.bound.flatMap((b) =>
      b.variants.flatMap((w) => [
        [b.model, { ...w, precision: "fp32" }] as [string, Variant],
        [b.model, { ...w, precision: "int8" }] as [string, Variant],
      ])
    ),
  ];
  for (const [key, v] of wants) {
    const model = modelDef(key);
    for (const form of new Set(runtimes.flatMap((r) => formsFor(r, v)))) {
      const id = `${key}|${variantKey(v)}|${form}`;
      if (seen.has(id)) continue;
      seen.add(id);
      try {
        files.push(fileRecord(await store.file(model, v, form)));
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
  }
  return { files, errors };
}

/** Runs a plan. Never throws for a runtime's failure: failures are in the result. */
export async function runComparison(options: CompareOptions): Promise<ComparisonResult> {
  const { plan } = options;
  checkPlan(plan);
  const log = options.log ?? (() => {});
  const requested = options.runtimes ?? RUNTIMES.filter((r) => r !== "torch");
  for (const r of requested) {
    if (!RUNTIMES.includes(r)) {
      throw new RangeError(`Unknown runtime '${r}', expected one of ${RUNTIMES.join(", ")}`);
    }
  }
  const runtimes = RUNTIMES.filter((r) => requested.includes(r));
  const sparseThreshold = options.sparseThreshold ?? 0.5;
  const started = performance.now();
  const startedAt = new Date().toISOString();
  const elapsed = (): number => (performance.now() - started) / 1000;
  const store = new ModelStore({ dir: options.modelsDir, log: (l) => log(`  ${l}`) });
  const memo = new FailureMemo();
  const memory = options.memory ?? new MemoryPlanner();
  const preparationErrors: string[] = [];
  const machine = await machineInfo();
  const setup = await readPeerSetupStatus(options.venvRoot).catch(() => null);
  const latency: LatencyGroupResult[] = [];
  const bound: BoundGroupResult[] = [];
  const peakProbed = new Set<number>();
  const overBudget = (estimate: number): string | null =>
    elapsed() + estimate > plan.budgetS
      ? `time budget: ${Math.round(elapsed())} s spent, this step needs about ` +
        `${Math.round(estimate)} s of the ${Math.round(plan.budgetS)} s budget`
      : null;

  /** The result so far (`done`: the run is over). */
  const snapshot = (done: boolean): ComparisonResult => {
    const versions: Partial<Record<RuntimeName, Record<string, string>>> = {};
    for (const g of [...latency, ...bound]) {
      for (const c of g.contestants) {
        if (c.info && versions[c.spec.runtime] === undefined) {
          versions[c.spec.runtime] = c.info.versions;
        }
      }
    }
    for (const r of runtimes) {
      const py = r === "ort-py" ? "ort" : r;
      const status = setup?.runtimes[py as keyof typeof setup.runtimes];
      if (versions[r] === undefined && status?.versions) versions[r] = status.versions;
    }
    if (done) machine.loadAverageAtEnd = Deno.loadavg();
    const sparsebertMissing: string[] = [];
    for (const g of latency) {
      for (const c of g.contestants) {
        if (c.spec.runtime !== "sparsebert" || c.status === "ok") continue;
        sparsebertMissing.push(
          `${g.model} ${variantLabel(g.variant)} ${g.scenarioKey}: ${c.status}` +
            (c.stage ? ` at ${c.stage}` : "") + `: ${c.error}`,
        );
      }
    }
    return {
      schema: "sparsebert-bench-compare/1",
      command: options.command,
      plan: plan.name,
      planDetail: plan,
      startedAt,
      finishedAt: done ? new Date().toISOString() : null,
      elapsedS: elapsed(),
      machine,
      versions,
      runtimes: RUNTIMES.map((name) => ({
        name,
        run: runtimes.includes(name),
        reason: runtimes.includes(name)
          ? undefined
          : name === "torch"
          ? "not requested: pass --torch (the PyPI wheel pulls several GB of CUDA packages)"
          : "excluded by --runtimes",
        note: RUNTIME_NOTES[name],
      })),
      forms: { description: { ...MODEL_FORMS }, perRuntime: { ...INT8_FORMS } },
      sparseThreshold,
      latency,
      bound,
      headToHead: headToHead(latency, plan.chart.model, plan.chart.scenario, runtimes),
      sparsebertMissing,
      preparationErrors,
      memory: { reserveBytes: memory.reserveBytes, peakPerModelByte: memory.learned() },
    };
  };
  const checkpoint = async (): Promise<void> => {
    if (options.onStep) await options.onStep(snapshot(false));
  };

  for (const step of planSteps(plan)) {
    const model = modelDef(step.block.model);
    if (step.kind === "latency") {
      const { block, scenario, variant: v } = step;
      const t0 = performance.now();
      const head = `${model.key} ${variantLabel(v)} ${scenarioKey(scenario)}`;
      const probe = v.precision === "fp32" && v.sparsity === 0 &&
        !peakProbed.has(scenario.threads);
      const entries = latencyEntries(latency, block, runtimes, v, scenario);
      const opts: GroupOptions = {
        ...latencyOptions(plan, block),
        memo,
        memory,
        log,
        start: { venvRoot: options.venvRoot, sparseThreshold, probePeak: probe },
      };
      const specs0 = entries.map((e) => e.spec);
      const estimate = estimateGroupSeconds(model, scenario, density(v), specs0, opts);
      const result: LatencyGroupResult = {
        model: model.key,
        variant: v,
        variantKey: variantKey(v),
        scenario,
        scenarioKey: scenarioKey(scenario),
        rounds: opts.rounds,
        roundMs: opts.roundMs,
        files: [],
        contestants: [],
        elapsedS: 0,
      };
      const skip = overBudget(estimate);
      if (skip !== null) {
        result.skipped = skip;
        result.contestants = skippedResults(specs0, skip);
        log(`skip ${head}: ${skip}`);
        latency.push(result);
        await checkpoint();
        continue;
      }
      log(`${head} (about ${Math.round(estimate)} s)`);
      const prep = await prepareEntries(store, model, entries, preparationErrors);
      result.files = prep.files;
      result.contestants = await measureGroup(prep.specs, opts, prep.pre);
      if (probe) {
        const sb = result.contestants.find((c) => c.spec.runtime === "sparsebert");
        if (sb?.info?.config.peak_f32_gflops !== undefined) peakProbed.add(scenario.threads);
      }
      result.elapsedS = (performance.now() - t0) / 1000;
      latency.push(result);
      await checkpoint();
      continue;
    }
    const { block } = step;
    const boundMs = options.boundMs ?? block.boundMs ?? model.boundMs;
    for (const w of block.variants) {
      const t0 = performance.now();
      const result: BoundGroupResult = {
        model: model.key,
        variant: w,
        variantKey: variantKey(w),
        weights: weightsLabel(w),
        seq: block.seq,
        boundMs,
        contestants: [],
        best: {},
        elapsedS: 0,
      };
      for (const batch of block.batches) {
        for (const config of block.configs) {
          const entries = boundEntries(latency, block, runtimes, w, batch, config);
          const opts: GroupOptions = {
            ...boundOptions(plan),
            memo,
            memory,
            log,
            start: { venvRoot: options.venvRoot, sparseThreshold },
          };
          const specs0 = entries.map((e) => e.spec);
          const scenario = { seq: block.seq, batch, threads: config.threads };
          const estimate = estimateGroupSeconds(model, scenario, density(w), specs0, opts);
          const head = `bound ${model.key} ${weightsLabel(w)} s${block.seq} b${batch} ` +
            `${config.instances}x${config.threads}`;
          const skip = overBudget(estimate);
          if (skip !== null) {
            result.contestants.push(...skippedResults(specs0, skip));
            result.skipped ??= skip;
            log(`skip ${head}: ${skip}`);
            continue;
          }
          log(`${head} (about ${Math.round(estimate)} s)`);
          const prep = await prepareEntries(store, model, entries, preparationErrors);
          result.contestants.push(...await measureGroup(prep.specs, opts, prep.pre));
        }
      }
      for (const runtime of runtimes) {
        const ok = result.contestants.filter((c) =>
          c.spec.runtime === runtime && c.status === "ok" && c.stats!.p90 <= boundMs
        );
        ok.sort((a, b) => b.stats!.itemsPerS - a.stats!.itemsPerS);
        const top = ok[0];
        result.best[runtime] = top
          ? {
            id: top.id,
            form: top.spec.form,
            instances: top.spec.instances,
            threads: top.spec.threads,
            batch: top.spec.batch,
            itemsPerS: top.stats!.itemsPerS,
            p90: top.stats!.p90,
          }
          : null;
      }
      result.elapsedS = (performance.now() - t0) / 1000;
      bound.push(result);
      await checkpoint();
    }
  }

  return snapshot(true);
}

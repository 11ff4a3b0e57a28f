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
  checkPlan,
  INT8_FORMS,
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
import { ModelStore, type PreparedFile } from "./models.ts";
import {
  contestantId,
  type ContestantResult,
  estimateGroupSeconds,
  FailureMemo,
  type GroupOptions,
  measureGroup,
} from "./scenario.ts";

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
  /** sparsebert's sparse-kernel threshold (default 0.5). */
  sparseThreshold?: number;
  /** p90 bound (ms) of the throughput search, instead of each model's default. */
  boundMs?: number;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

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
  /** End (ISO 8601). */
  finishedAt: string;
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
  /** sparsebert's sparse-kernel threshold. */
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
  const memKb = Number(readFileOr("/proc/meminfo", "").match(/MemTotal:\s+(\d+)/)?.[1] ?? 0);
  const isa = ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni"].filter((f) =>
    flags.split(/\s+/).includes(f)
  );
  return {
    cpu,
    physicalCores: physicalCores(),
    logicalCpus: navigator.hardwareConcurrency,
    isa,
    memoryGiB: Math.round(memKb / 1024 / 1024 * 10) / 10,
    os: `${Deno.build.os} ${Deno.osRelease()}`,
    deno: Deno.version.deno,
    commit: await gitCommit(),
    loadAverageAtStart: Deno.loadavg(),
  };
}

function formsFor(runtime: RuntimeName, v: Variant): readonly ModelForm[] {
  return v.precision === "fp32" ? ["fp32"] : INT8_FORMS[runtime];
}

function density(v: Variant): number {
  return 1 - v.sparsity;
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

/** The contestants of a latency group: every runtime x every form it gets for `v`. */
function latencySpecs(
  runtimes: RuntimeName[],
  v: Variant,
  scenario: Scenario,
  files: Map<ModelForm, PreparedFile>,
): ContestantSpec[] {
  return runtimes.flatMap((runtime) =>
    formsFor(runtime, v).map((form) => ({
      runtime,
      form,
      path: files.get(form)?.path ?? "",
      batch: scenario.batch,
      seq: scenario.seq,
      threads: scenario.threads,
      instances: 1,
    }))
  );
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

/**
 * The steps of a plan in run order with their estimated seconds (model preparation excluded:
 * it happens once and is cached). The estimate assumes 40 GFLOP/s per thread; use it to size
 * a plan, the budget check at run time uses the same numbers.
 */
export function estimatePlan(plan: Plan, runtimes: RuntimeName[]): PlanStep[] {
  checkPlan(plan);
  const steps: PlanStep[] = [];
  const base = {
    rounds: plan.rounds,
    roundMs: plan.roundMs,
    warmup: plan.warmup,
    settleMs: plan.settleMs,
  };
  for (const block of plan.latency) {
    const model = modelDef(block.model);
    for (const scenario of block.scenarios) {
      for (const v of block.variants) {
        const specs = latencySpecs(runtimes, v, scenario, new Map());
        steps.push({
          label: `${model.key} ${variantLabel(v)} ${scenarioKey(scenario)}`,
          contestants: specs.length,
          estimateS: estimateGroupSeconds(model, scenario, density(v), specs, {
            ...base,
            mode: "latency",
            turnSeconds: 0,
          }),
        });
      }
    }
  }
  for (const block of plan.bound) {
    const model = modelDef(block.model);
    const rounds = Math.max(1, Math.min(2, plan.rounds));
    for (const v of block.variants) {
      for (const batch of block.batches) {
        for (const config of block.configs) {
          const scenario = { seq: block.seq, batch, threads: config.threads };
          const specs = runtimes.map((runtime) => ({
            runtime,
            form: formsFor(runtime, v)[0],
            path: "",
            batch,
            seq: block.seq,
            threads: config.threads,
            instances: config.instances,
          }));
          steps.push({
            label: `bound ${model.key} ${variantLabel(v)} s${block.seq} b${batch} ` +
              `${config.instances}x${config.threads}`,
            contestants: specs.length,
            estimateS: estimateGroupSeconds(model, scenario, density(v), specs, {
              ...base,
              rounds,
              mode: "throughput",
              turnSeconds: plan.boundSeconds / rounds,
            }),
          });
        }
      }
    }
  }
  return steps;
}

/** Prepares the files of one variant for `runtimes`; failures pre-fail the contestants. */
async function prepareGroup(
  store: ModelStore,
  model: ModelDef,
  v: Variant,
  specsOf: (files: Map<ModelForm, PreparedFile>) => ContestantSpec[],
  runtimes: RuntimeName[],
  errors: string[],
): Promise<{ specs: ContestantSpec[]; files: FileRecord[]; pre: Map<number, ContestantResult> }> {
  const forms = [...new Set(runtimes.flatMap((r) => formsFor(r, v)))];
  const files = new Map<ModelForm, PreparedFile>();
  const formErrors = new Map<ModelForm, string>();
  for (const form of forms) {
    try {
      files.set(form, await store.file(model, v, form));
    } catch (err) {
      const msg = (err as Error).message;
      formErrors.set(form, msg);
      if (!errors.includes(msg)) errors.push(msg);
    }
  }
  const specs = specsOf(files);
  const pre = new Map<number, ContestantResult>();
  specs.forEach((spec, i) => {
    const e = formErrors.get(spec.form);
    if (e !== undefined) {
      pre.set(i, { id: contestantId(spec), spec, status: "failed", stage: "prepare", error: e });
    }
  });
  return { specs, files: [...files.values()].map(fileRecord), pre };
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
  const preparationErrors: string[] = [];
  const machine = await machineInfo();
  const setup = await readPeerSetupStatus(options.venvRoot).catch(() => null);
  const groupBase = {
    warmup: plan.warmup,
    settleMs: plan.settleMs,
    memo,
    log,
  };
  const latency: LatencyGroupResult[] = [];
  const bound: BoundGroupResult[] = [];
  const peakProbed = new Set<number>();

  for (const block of plan.latency) {
    const model = modelDef(block.model);
    for (const scenario of block.scenarios) {
      for (const v of block.variants) {
        const t0 = performance.now();
        const head = `${model.key} ${variantLabel(v)} ${scenarioKey(scenario)}`;
        const probe = v.precision === "fp32" && v.sparsity === 0 &&
          !peakProbed.has(scenario.threads);
        const specsOf = (files: Map<ModelForm, PreparedFile>): ContestantSpec[] =>
          latencySpecs(runtimes, v, scenario, files);
        const opts: GroupOptions = {
          ...groupBase,
          mode: "latency",
          rounds: plan.rounds,
          roundMs: plan.roundMs,
          turnSeconds: 0,
          start: { venvRoot: options.venvRoot, sparseThreshold, probePeak: probe },
        };
        const estimate = estimateGroupSeconds(
          model,
          scenario,
          density(v),
          specsOf(new Map()),
          opts,
        );
        const result: LatencyGroupResult = {
          model: model.key,
          variant: v,
          variantKey: variantKey(v),
          scenario,
          scenarioKey: scenarioKey(scenario),
          files: [],
          contestants: [],
          elapsedS: 0,
        };
        if (elapsed() + estimate > plan.budgetS) {
          result.skipped = `time budget: ${Math.round(elapsed())} s spent, this group needs ` +
            `about ${Math.round(estimate)} s of the ${Math.round(plan.budgetS)} s budget`;
          result.contestants = skippedResults(specsOf(new Map()), result.skipped);
          log(`skip ${head}: ${result.skipped}`);
          latency.push(result);
          continue;
        }
        log(`${head} (about ${Math.round(estimate)} s)`);
        const prep = await prepareGroup(store, model, v, specsOf, runtimes, preparationErrors);
        result.files = prep.files;
        result.contestants = await measureGroup(prep.specs, opts, prep.pre);
        if (probe) {
          const sb = result.contestants.find((c) => c.spec.runtime === "sparsebert");
          if (sb?.info?.config.peak_f32_gflops !== undefined) peakProbed.add(scenario.threads);
        }
        result.elapsedS = (performance.now() - t0) / 1000;
        latency.push(result);
      }
    }
  }

  for (const block of plan.bound) {
    const model = modelDef(block.model);
    const boundMs = options.boundMs ?? block.boundMs ?? model.boundMs;
    for (const v of block.variants) {
      const t0 = performance.now();
      const result: BoundGroupResult = {
        model: model.key,
        variant: v,
        variantKey: variantKey(v),
        seq: block.seq,
        boundMs,
        contestants: [],
        best: {},
        elapsedS: 0,
      };
      const rounds = Math.max(1, Math.min(2, plan.rounds));
      for (const batch of block.batches) {
        for (const config of block.configs) {
          const scenario = { seq: block.seq, batch, threads: config.threads };
          const specsOf = (files: Map<ModelForm, PreparedFile>): ContestantSpec[] =>
            runtimes.map((runtime) => {
              const form = bestForm(latency, model.key, v, scenario, runtime);
              return {
                runtime,
                form,
                path: files.get(form)?.path ?? "",
                batch,
                seq: block.seq,
                threads: config.threads,
                instances: config.instances,
              };
            });
          const opts: GroupOptions = {
            ...groupBase,
            mode: "throughput",
            rounds,
            roundMs: plan.roundMs,
            turnSeconds: plan.boundSeconds / rounds,
            start: { venvRoot: options.venvRoot, sparseThreshold },
          };
          const estimate = estimateGroupSeconds(
            model,
            scenario,
            density(v),
            specsOf(new Map()),
            opts,
          );
          const head = `bound ${model.key} ${variantLabel(v)} s${block.seq} b${batch} ` +
            `${config.instances}x${config.threads}`;
          if (elapsed() + estimate > plan.budgetS) {
            const why = `time budget: ${Math.round(elapsed())} s spent, this step needs about ` +
              `${Math.round(estimate)} s of the ${Math.round(plan.budgetS)} s budget`;
            result.contestants.push(...skippedResults(specsOf(new Map()), why));
            result.skipped ??= why;
            log(`skip ${head}: ${why}`);
            continue;
          }
          log(`${head} (about ${Math.round(estimate)} s)`);
          const prep = await prepareGroup(
            store,
            model,
            v,
            specsOf,
            runtimes,
            preparationErrors,
          );
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
    }
  }

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
  machine.loadAverageAtEnd = Deno.loadavg();
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
    finishedAt: new Date().toISOString(),
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
  };
}

/** The form of a runtime with the lowest p50 in a latency group of the same model/variant. */
function bestForm(
  latency: LatencyGroupResult[],
  model: string,
  v: Variant,
  scenario: Scenario,
  runtime: RuntimeName,
): ModelForm {
  const forms = formsFor(runtime, v);
  if (forms.length === 1) return forms[0];
  const candidates = latency
    .filter((g) =>
      g.model === model && g.variantKey === variantKey(v) && g.scenario.seq === scenario.seq &&
      g.scenario.batch === scenario.batch
    )
    .flatMap((g) => g.contestants)
    .filter((c) => c.spec.runtime === runtime && c.status === "ok")
    .sort((a, b) => a.stats!.p50 - b.stats!.p50);
  return candidates[0]?.spec.form ?? forms[0];
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

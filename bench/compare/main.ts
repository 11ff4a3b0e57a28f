/**
 * Side-by-side benchmark against every peer (issue 6): sparsebert, ONNX Runtime (node and
 * Python), OpenVINO, DeepSparse and optionally PyTorch on the same ONNX files, interleaved.
 *
 *   deno task bench:compare [--quick | --full] [--torch] [options]
 *
 * Writes a JSON file per run into bench/results/, the markdown tables into docs/BENCHMARKS.md
 * (only between the markers of the "Comparison with every peer (issue 6)" section) and the
 * chart docs/compare_latency.svg. `--quick` is a smoke test that leaves docs/ alone unless
 * `--doc`/`--svg` are given.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  allScenarios,
  filePlan,
  type Plan,
  planFor,
  registerModelFile,
  RUNTIME_LABELS,
  type RuntimeName,
  RUNTIMES,
  scenarioKey,
  variantKey,
} from "./matrix.ts";
import {
  formatMarkdown,
  renderMarkdown,
  renderSvg,
  updateDoc,
  writeAtomic,
  writeJson,
} from "./report.ts";
import { describeModelFile } from "./models.ts";
import type { ComparisonResult } from "./results.ts";
import { estimatePlan, prepareModels, runComparison } from "./run.ts";

const ROOT = decodeURIComponent(new URL("../../", import.meta.url).pathname).replace(/\/$/, "");

/** Help text. */
export const HELP = `Usage: deno task bench:compare [options]

Runs sparsebert, ONNX Runtime (onnxruntime-node and the Python package), OpenVINO, DeepSparse
and (with --torch) PyTorch on the same ONNX files, interleaved, and reports p50/p90/p99 latency,
throughput, and the throughput under a p90 latency bound (instances x threads).

Plans:
  (default)        BERT-Base seq 128 batch 1 2 threads over dense/70/80/90% 4x1, fp32 and
                   int8, and its latency-bound throughput search; all-MiniLM-L6-v2 (real
                   weights) dense + 90% 4x1, fp32 and int8, in 4 scenarios (seq 128/384,
                   batch 1/8, threads 1/2); DistilBERT dense + 90% 4x1. Unstructured,
                   BERT-Mini, BERT-Large: --full.
                   Budget 22 min once the model files are prepared: run --prepare once
                   first (generating, pruning and quantizing, cached in .cache/bench-models).
  --quick          smoke test: a 2-layer generated model, dense and 90% 4x1, seq 64, 1 thread,
                   a few iterations (under 3 minutes; no timing assertion)
  --full           every model (BERT-Mini, DistilBERT, BERT-Base, BERT-Large, all-MiniLM-L6-v2)
                   x dense/70/80/90% x 4x1/unstructured x fp32/int8 x seq 128/384 x batch 1/8
                   x threads 1/2 (hours)
  --model-file F   your own fp32 ONNX encoder (for example cli sparsify's <stem>.fp32.onnx),
                   as it is: fp32 and each runtime's int8 forms of it (quantized from it, as
                   for every model), seq 128 batch 1 2 threads (or --scenarios from
                   s128/s384 x b1/b8 x t1/t2); its sparsity is measured; the docs are left
                   alone unless --doc is given

Options:
  --torch              also run PyTorch (needs: deno task setup:peers --torch)
  --runtimes LIST      only these runtimes (comma-separated: ${RUNTIMES.join(",")})
  --models LIST        only these models of the plan (comma-separated keys)
  --bound-ms MS        p90 bound of the throughput search (default per model)
  --budget-min MIN     wall-clock budget; steps estimated to end past it are skipped and
                       reported (default: 22 for the default plan, 2.8 quick, none full)
  --sparse-threshold F sparsebert's chooser tries a linear's sparse kernel from this
                       measured sparsity on, and keeps it where its autotune beats the
                       dense kernel (default 0.5)
  --results-dir DIR    JSON (and quick-mode markdown/SVG) folder (default bench/results);
                       the JSON is rewritten after every step, so a killed run keeps its
                       measurements (finishedAt stays null)
  --doc PATH           markdown file whose issue-6 section is replaced
                       (default docs/BENCHMARKS.md; quick: none)
  --svg PATH           chart file (default docs/compare_latency.svg; quick: in results dir)
  --no-doc             do not touch the markdown file
  --models-dir DIR     cache of the model files (default .cache/bench-models)
  --venv-root DIR      Python venvs of the peers (default .cache/venv)
  --variants LIST      only these variants (comma-separated keys: fp32-dense, int8-dense,
                       fp32-s90-4x1, int8-s80-unstructured, ...)
  --scenarios LIST     only these latency scenarios (comma-separated keys: s128-b1-t2,
                       s384-b8-t1, ...)
  --no-bound           leave out the latency-bound throughput searches
  --render JSON        only write the markdown and chart of a saved result (a finished run's
                       or the partial JSON of a stopped one) next to it; the docs only with
                       --doc/--svg
  --dry-run            print the plan's steps and time estimates, run nothing
  --prepare            only prepare (generate, prune, quantize) the plan's model files; run
                       this once before the first timed run so that preparing does not eat
                       the time budget
  --json               print the JSON result on stdout (progress stays on stderr)
  -h, --help           show this help

Contestants of a step that would not fit in memory together (each process holds its own copy
of the model) are measured in waves: each wave is loaded, interleaved and closed before the
next; the report says which groups were split.

A peer that fails to install, load or run is reported with its stage and error. Set up the
Python peers first with: deno task setup:peers`;

/** Parsed command line. */
export interface CompareCli {
  /** The plan, with the options applied. */
  plan: Plan;
  /** Runtimes to run. */
  runtimes: RuntimeName[];
  /** p90 bound override. */
  boundMs?: number;
  /** Sparse-kernel threshold. */
  sparseThreshold: number;
  /** JSON folder. */
  resultsDir: string;
  /** Markdown file, or null. */
  doc: string | null;
  /** SVG file, or null for the results folder. */
  svg: string | null;
  /** Model cache. */
  modelsDir?: string;
  /** Venv folder. */
  venvRoot?: string;
  /** Print JSON. */
  json: boolean;
  /** Only print the plan's steps and their time estimates. */
  dryRun: boolean;
  /** Only prepare the model files. */
  prepareOnly: boolean;
  /** Only render the markdown and chart of this saved JSON result. */
  render: string | null;
  /** Show help. */
  help: boolean;
  /** `--model-file`: the user's fp32 ONNX file (absolute), or null. */
  modelFile: string | null;
  /** `--scenarios` keys for the file plan (empty: its default). */
  fileScenarios: string[];
}

function positive(flag: string, text: string): number {
  const v = Number(text);
  if (!(v > 0) || !Number.isFinite(v)) {
    throw new Error(`${flag} must be a positive number, got '${text}'`);
  }
  return v;
}

function abs(path: string): string {
  return path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
}

/**
 * The keys of a comma-separated `--models`/`--variants`/`--scenarios` list.
 *
 * @throws Error naming a key the plan does not have, and the keys it has.
 */
function pickKeys(text: string, known: string[], noun: string, planName: string): string[] {
  const keep = text.split(",").map((x) => x.trim()).filter((x) => x !== "");
  const have = [...new Set(known)];
  for (const k of keep) {
    if (!have.includes(k)) {
      throw new Error(`${noun} '${k}' is not in the ${planName} plan (it has ${have.join(", ")})`);
    }
  }
  return keep;
}

/**
 * Parses the command line.
 *
 * @throws Error with the offending flag and value quoted.
 */
export function parseCompareArgs(args: string[]): CompareCli {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      full: { type: "boolean", default: false },
      torch: { type: "boolean", default: false },
      runtimes: { type: "string" },
      models: { type: "string" },
      variants: { type: "string" },
      scenarios: { type: "string" },
      "no-bound": { type: "boolean", default: false },
      render: { type: "string" },
      "dry-run": { type: "boolean", default: false },
      prepare: { type: "boolean", default: false },
      "bound-ms": { type: "string" },
      "budget-min": { type: "string" },
      "sparse-threshold": { type: "string" },
      "results-dir": { type: "string" },
      doc: { type: "string" },
      svg: { type: "string" },
      "no-doc": { type: "boolean", default: false },
      "models-dir": { type: "string" },
      "venv-root": { type: "string" },
      "model-file": { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.quick && values.full) throw new Error("Give --quick or --full, not both");
  const modelFile = values["model-file"] !== undefined ? abs(values["model-file"]) : null;
  if (modelFile !== null) {
    const clash = ["quick", "full", "models", "variants", "render"].find((k) =>
      values[k as keyof typeof values] !== undefined && values[k as keyof typeof values] !== false
    );
    if (clash !== undefined) throw new Error(`--model-file cannot be combined with --${clash}`);
  }
  const fileScenarios = modelFile !== null && values.scenarios !== undefined
    ? pickKeys(values.scenarios, allScenarios().map(scenarioKey), "Scenario", "file")
    : [];
  const plan = planFor(values.quick ? "quick" : values.full ? "full" : "default");
  let runtimes: RuntimeName[] = RUNTIMES.filter((r) => r !== "torch" || values.torch);
  if (values.runtimes !== undefined) {
    const list = values.runtimes.split(",").map((s) => s.trim()).filter((s) => s !== "");
    for (const r of list) {
      if (!(RUNTIMES as readonly string[]).includes(r)) {
        throw new Error(
          `Unknown runtime '${r}' in --runtimes, expected some of ${RUNTIMES.join(", ")}`,
        );
      }
    }
    if (list.includes("torch") && !values.torch) {
      throw new Error("--runtimes names torch: pass --torch as well");
    }
    runtimes = list as RuntimeName[];
    if (runtimes.length === 0) throw new Error("--runtimes is empty");
  }
  if (values.models !== undefined) {
    const keep = pickKeys(
      values.models,
      [...plan.latency.map((b) => b.model), ...plan.bound.map((b) => b.model)],
      "Model",
      plan.name,
    );
    plan.latency = plan.latency.filter((b) => keep.includes(b.model));
    plan.bound = plan.bound.filter((b) => keep.includes(b.model));
    if (!keep.includes(plan.chart.model) && plan.latency.length > 0) {
      plan.chart = { model: plan.latency[0].model, scenario: plan.latency[0].scenarios[0] };
    }
  }
  if (values.variants !== undefined) {
    const keep = pickKeys(
      values.variants,
      [...plan.latency, ...plan.bound].flatMap((b) => b.variants.map(variantKey)),
      "Variant",
      plan.name,
    );
    for (const b of [...plan.latency, ...plan.bound]) {
      b.variants = b.variants.filter((x) => keep.includes(variantKey(x)));
    }
    plan.latency = plan.latency.filter((b) => b.variants.length > 0);
    plan.bound = plan.bound.filter((b) => b.variants.length > 0);
  }
  if (values.scenarios !== undefined && modelFile === null) {
    const keep = pickKeys(
      values.scenarios,
      plan.latency.flatMap((b) => b.scenarios.map(scenarioKey)),
      "Scenario",
      plan.name,
    );
    for (const b of plan.latency) {
      b.scenarios = b.scenarios.filter((x) => keep.includes(scenarioKey(x)));
    }
    plan.latency = plan.latency.filter((b) => b.scenarios.length > 0);
    if (!keep.includes(scenarioKey(plan.chart.scenario)) && plan.latency.length > 0) {
      plan.chart = { model: plan.latency[0].model, scenario: plan.latency[0].scenarios[0] };
    }
  }
  if (values["no-bound"]) plan.bound = [];
  if (values["budget-min"] !== undefined) {
    plan.budgetS = positive("--budget-min", values["budget-min"]) * 60;
  }
  const boundMs = values["bound-ms"] !== undefined
    ? positive("--bound-ms", values["bound-ms"])
    : undefined;
  const threshold = values["sparse-threshold"] !== undefined
    ? Number(values["sparse-threshold"])
    : 0.5;
  if (!(threshold >= 0 && threshold <= 1)) {
    throw new Error(`--sparse-threshold must be in [0, 1], got '${values["sparse-threshold"]}'`);
  }
  const quick = plan.name === "quick";
  const render = values.render !== undefined ? abs(values.render) : null;
  // Re-rendering a saved result touches the docs only when asked to.
  const doc = values["no-doc"]
    ? null
    : values.doc !== undefined
    ? abs(values.doc)
    : quick || render !== null || modelFile !== null
    ? null
    : `${ROOT}/docs/BENCHMARKS.md`;
  const svg = values.svg !== undefined
    ? abs(values.svg)
    : quick || doc === null
    ? null
    : `${ROOT}/docs/compare_latency.svg`;
  return {
    plan,
    runtimes,
    boundMs,
    sparseThreshold: threshold,
    resultsDir: render !== null
      ? dirOf(render)
      : values["results-dir"] !== undefined
      ? abs(values["results-dir"])
      : `${ROOT}/bench/results`,
    render,
    doc,
    svg,
    modelsDir: values["models-dir"] !== undefined ? abs(values["models-dir"]) : undefined,
    venvRoot: values["venv-root"] !== undefined ? abs(values["venv-root"]) : undefined,
    json: values.json,
    dryRun: values["dry-run"],
    prepareOnly: values.prepare,
    help: values.help,
    modelFile,
    fileScenarios,
  };
}

/** Replaces `cli.plan` with the plan of `cli.modelFile` (registering the file's model). */
async function planModelFile(cli: CompareCli): Promise<void> {
  const info = await describeModelFile(cli.modelFile!);
  registerModelFile(info.def);
  const scenarios = allScenarios(info.def.maxSeq).filter((s) =>
    cli.fileScenarios.includes(scenarioKey(s))
  );
  const plan = filePlan(
    info.def.key,
    info.sparsity,
    info.pattern,
    scenarios.length > 0 ? scenarios : undefined,
  );
  cli.plan = plan;
  console.error(`--model-file: ${info.def.label}`);
}

/** `to` relative to the folder `fromDir` (both absolute). */
function relative(fromDir: string, to: string): string {
  const a = fromDir.split("/").filter(Boolean);
  const b = to.split("/").filter(Boolean);
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return [...a.slice(i).map(() => ".."), ...b.slice(i)].join("/") || ".";
}

function dirOf(path: string): string {
  return path.slice(0, path.lastIndexOf("/")) || "/";
}

/** Paths of the files a run wrote. */
export interface WrittenFiles {
  /** JSON result. */
  json: string;
  /** Markdown (the doc, or a file next to the JSON). */
  markdown: string;
  /** SVG chart. */
  svg: string;
}

/** Writes the JSON, the chart and the markdown of a run; returns their paths. */
export async function writeOutputs(
  result: ComparisonResult,
  cli: CompareCli,
): Promise<WrittenFiles> {
  const json = cli.render ?? await writeJson(result, cli.resultsDir);
  const base = json.replace(/\.json$/, "");
  const svg = cli.svg ?? `${base}.svg`;
  await writeAtomic(svg, renderSvg(result));
  // Links are relative to where the markdown lands; the copy next to the JSON sits with the
  // quick-mode SVG, and with a docs run its chart link points at docs/.
  const mdTarget = cli.doc ?? `${base}.md`;
  const links = {
    json: json.startsWith(`${ROOT}/`) ? json.slice(ROOT.length + 1) : json,
    svg: relative(dirOf(mdTarget), svg),
  };
  const body = renderMarkdown(result, links);
  if (cli.doc !== null) await updateDoc(cli.doc, body);
  await writeAtomic(`${base}.md`, await formatMarkdown(body));
  return { json, markdown: mdTarget, svg };
}

function summaryLines(r: ComparisonResult): string[] {
  const lines: string[] = [];
  for (const rt of r.runtimes) {
    if (!rt.run) {
      lines.push(`${RUNTIME_LABELS[rt.name]}: not run (${rt.reason})`);
      continue;
    }
    const all = [...r.latency, ...r.bound].flatMap((g) => g.contestants).filter((c) =>
      c.spec.runtime === rt.name
    );
    const ok = all.filter((c) => c.status === "ok").length;
    const failed = all.filter((c) => c.status === "failed");
    const skipped = all.filter((c) => c.status === "skipped").length;
    let line = `${RUNTIME_LABELS[rt.name]}: ${ok} ok, ${failed.length} failed, ${skipped} skipped`;
    if (failed.length > 0) {
      line += ` (first failure: ${failed[0].stage}: ${failed[0].error?.split("\n")[0]})`;
    }
    lines.push(line);
  }
  const h = r.headToHead;
  if (h.sparsebert) {
    const peers = Object.entries(h.peers).map(([k, v]) =>
      `${k} ${v ? `${v.speedup.toFixed(2)}x` : "n/a"}`
    );
    lines.push(
      `head to head (${h.model} s${h.scenario.seq} b${h.scenario.batch} t${h.scenario.threads}): ` +
        `sparsebert ${h.sparsebert.variantKey} ${h.sparsebert.p50.toFixed(2)} ms; speedups ${
          peers.join(", ")
        }`,
    );
  }
  return lines;
}

async function main(): Promise<number> {
  let cli: CompareCli;
  try {
    cli = parseCompareArgs(Deno.args);
  } catch (err) {
    console.error(`error: ${(err as Error).message}`);
    return 2;
  }
  if (cli.help) {
    console.log(HELP);
    return 0;
  }
  if (cli.modelFile !== null) {
    try {
      await planModelFile(cli);
    } catch (err) {
      console.error(`error: --model-file ${cli.modelFile}: ${(err as Error).message}`);
      return 1;
    }
  }
  if (cli.dryRun) {
    const steps = estimatePlan(cli.plan, cli.runtimes);
    let total = 0;
    for (const s of steps) {
      total += s.estimateS;
      console.log(
        `${String(Math.round(s.estimateS)).padStart(6)} s  ${String(s.contestants).padStart(2)} ` +
          `contestants  ${s.label}`,
      );
    }
    console.log(
      `${String(Math.round(total)).padStart(6)} s  total estimate (${
        (total / 60).toFixed(1)
      } min; ` +
        `budget ${
          Number.isFinite(cli.plan.budgetS) ? `${(cli.plan.budgetS / 60).toFixed(1)} min` : "none"
        }; ` +
        "model preparation excluded)",
    );
    return 0;
  }
  if (cli.render !== null) {
    let result: ComparisonResult;
    try {
      result = JSON.parse(await Deno.readTextFile(cli.render));
    } catch (err) {
      console.error(`error: cannot read '${cli.render}': ${(err as Error).message}`);
      return 1;
    }
    if (result?.schema !== "sparsebert-bench-compare/1") {
      console.error(`error: '${cli.render}' is not a bench:compare result (no schema tag)`);
      return 1;
    }
    const files = await writeOutputs(result, cli);
    for (const l of summaryLines(result)) console.error(l);
    console.error(`wrote ${files.markdown}\nwrote ${files.svg}`);
    return 0;
  }
  if (cli.prepareOnly) {
    const t0 = performance.now();
    const { files, errors } = await prepareModels(cli.plan, cli.runtimes, {
      modelsDir: cli.modelsDir,
      log: (line) => console.error(line),
    });
    const made = files.filter((f) => !f.cached).length;
    console.error(
      `${files.length} model files ready (${made} prepared now) in ` +
        `${((performance.now() - t0) / 1000).toFixed(0)} s`,
    );
    for (const e of errors) console.error(`error: ${e}`);
    return errors.length > 0 ? 1 : 0;
  }
  const command = `deno task bench:compare ${Deno.args.join(" ")}`.trim();
  const log = (line: string): void => console.error(line);
  log(
    `bench:compare ${cli.plan.name}: runtimes ${cli.runtimes.join(", ")}; budget ${
      Number.isFinite(cli.plan.budgetS) ? `${Math.round(cli.plan.budgetS)} s` : "none"
    }`,
  );
  const result = await runComparison({
    plan: cli.plan,
    command,
    runtimes: cli.runtimes,
    modelsDir: cli.modelsDir,
    venvRoot: cli.venvRoot,
    sparseThreshold: cli.sparseThreshold,
    boundMs: cli.boundMs,
    log,
    // The JSON is rewritten after every step (finishedAt null until the end), so a run that is
    // killed part-way keeps what it measured.
    onStep: async (partial) => {
      try {
        await writeJson(partial, cli.resultsDir);
      } catch (err) {
        log(`warning: could not write the partial result: ${(err as Error).message}`);
      }
    },
  });
  const files = await writeOutputs(result, cli);
  for (const l of summaryLines(result)) log(l);
  log(`wrote ${files.json}\nwrote ${files.markdown}\nwrote ${files.svg}`);
  log(`elapsed ${(result.elapsedS / 60).toFixed(1)} min`);
  if (cli.json) console.log(JSON.stringify(result, null, 1));
  return 0;
}

if (import.meta.main) Deno.exit(await main());

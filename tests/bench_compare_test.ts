/**
 * The side-by-side benchmark harness (bench/compare, bench/compare/main.ts): its pure parts
 * (token ids, doc section replacement, command line, plans), and the `--quick` run end to end
 * on the tiny generated model: the JSON, markdown and SVG are written, every runtime is present
 * with results or with its failure stated, and the runtimes agree on the outputs. No timing is
 * asserted.
 */

import assert from "node:assert/strict";
import { bertInputIds } from "../bench/peers/ort_node.ts";
import { lcgInputIds, outputSummary } from "../bench/compare/deno_runner.ts";
import { privateCopy } from "../bench/compare/contestants.ts";
import {
  checkPlan,
  filePlan,
  planFor,
  registerModelFile,
  type RuntimeName,
  RUNTIMES,
  scenarioKey,
  variant,
  variantKey,
} from "../bench/compare/matrix.ts";
import {
  BEGIN_MARKER,
  DOC_HEADING,
  END_MARKER,
  formatMarkdown,
  renderSvg,
  replaceDocSection,
} from "../bench/compare/report.ts";
import { estimatePlan, prepareModels, runComparison } from "../bench/compare/run.ts";
import {
  type ContestantResult,
  FailureMemo,
  measureGroup,
  summarize,
} from "../bench/compare/scenario.ts";
import {
  memAvailableBytes,
  MemoryPlanner,
  modelBytes,
  peakRssBytes,
} from "../bench/compare/memory.ts";
import { parseCompareArgs, writeOutputs } from "../bench/compare/main.ts";
import { describeModelFile } from "../bench/compare/models.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import { pruneModel } from "../compress/prune.ts";
import { quantizeModel } from "../compress/quantize_model.ts";
import { readOnnxModel } from "../formats/onnx_proto.ts";

Deno.test("the Deno runner's token ids are the peers' token ids", () => {
  for (const [batch, seq, seed] of [[1, 7, 1], [3, 64, 5], [8, 128, 0]]) {
    const ours = lcgInputIds(batch, seq, seed);
    const peers = bertInputIds(batch, seq, seed);
    assert.equal(ours.length, peers.length);
    for (let i = 0; i < ours.length; i++) assert.equal(BigInt(ours[i]), peers[i], `id ${i}`);
    assert.ok(ours.every((v) => v >= 1000 && v < 2000));
  }
});

Deno.test("output summaries count non-finite values and keep JSON-safe numbers", () => {
  const s = outputSummary(new Float32Array([1, -3, NaN, Infinity, 2]), [1, 5]);
  assert.equal(s.non_finite, 2);
  assert.equal(s.mean, 0 / 5);
  assert.equal(s.mean_abs, 6 / 5);
  assert.deepEqual(s.first, [1, -3, null, null]);
});

Deno.test("latency summary: numpy-linear percentiles, items/s from wall time, spread", () => {
  const s = summarize([
    { latenciesMs: [10, 20, 30], wallS: 0.06, items: 3 },
    { latenciesMs: [40], wallS: 0.04, items: 1 },
  ]);
  assert.equal(s.n, 4);
  assert.equal(s.p50, 25);
  assert.ok(Math.abs(s.p90 - 37) < 1e-9);
  assert.equal(s.min, 10);
  assert.equal(s.max, 40);
  assert.ok(Math.abs(s.itemsPerS - 40) < 1e-9);
  assert.deepEqual(s.roundMediansMs, [20, 40]);
  assert.equal(s.spreadPct, 80);
  assert.throws(() => summarize([{ latenciesMs: [], wallS: 0, items: 0 }]), /No latencies/);
});

const DOC = `# Benchmarks

## Encoders end to end (issue 3)

Some text.

${DOC_HEADING}

## Server (issue 7)

Server text.
`;

Deno.test("the docs section is replaced between markers, the rest untouched", () => {
  const once = replaceDocSection(DOC, "first body");
  assert.ok(once.includes(`${DOC_HEADING}\n\n${BEGIN_MARKER}\n\nfirst body\n\n${END_MARKER}\n`));
  assert.ok(once.startsWith("# Benchmarks\n\n## Encoders end to end (issue 3)\n\nSome text.\n"));
  assert.ok(once.endsWith("## Server (issue 7)\n\nServer text.\n"));
  const twice = replaceDocSection(once, "second body\nline 2");
  assert.equal(twice, once.replace("first body", "second body\nline 2"));
  assert.equal(replaceDocSection(twice, "first body"), once);
  // Text a person wrote after the generated block stays.
  const withNote = once.replace(`${END_MARKER}\n`, `${END_MARKER}\n\nA note.\n`);
  assert.ok(replaceDocSection(withNote, "x").includes(`${END_MARKER}\n\nA note.\n`));
  assert.throws(() => replaceDocSection("# Benchmarks\n", "x"), /has no '## Comparison/);
  const broken = DOC.replace(DOC_HEADING, `${DOC_HEADING}\n${END_MARKER}\n${BEGIN_MARKER}`);
  assert.throws(() => replaceDocSection(broken, "x"), /begin marker without an end marker/);
});

Deno.test("the command line: plans, defaults and clear errors", () => {
  const quick = parseCompareArgs(["--quick"]);
  assert.equal(quick.plan.name, "quick");
  assert.equal(quick.doc, null, "quick mode leaves docs/ alone");
  assert.equal(quick.svg, null);
  assert.ok(!quick.runtimes.includes("torch"));
  const def = parseCompareArgs([]);
  assert.equal(def.plan.name, "default");
  assert.ok(def.doc?.endsWith("/docs/BENCHMARKS.md"));
  assert.ok(def.svg?.endsWith("/docs/compare_latency.svg"));
  assert.ok(parseCompareArgs(["--torch"]).runtimes.includes("torch"));
  assert.deepEqual(parseCompareArgs(["--runtimes", "sparsebert,ort-node"]).runtimes, [
    "sparsebert",
    "ort-node",
  ]);
  const some = parseCompareArgs(["--models", "bert-base", "--variants", "int8-s90-4x1"]);
  assert.deepEqual(some.plan.latency.map((b) => b.model), ["bert-base"]);
  assert.deepEqual(some.plan.latency.flatMap((b) => b.variants.map(variantKey)), [
    "int8-s90-4x1",
  ]);
  assert.equal(parseCompareArgs(["--budget-min", "2"]).plan.budgetS, 120);
  const one = parseCompareArgs(["--full", "--scenarios", "s128-b1-t2", "--no-bound"]);
  assert.ok(one.plan.latency.length >= 5, "every model of the full plan");
  for (const b of one.plan.latency) assert.deepEqual(b.scenarios.map(scenarioKey), ["s128-b1-t2"]);
  assert.deepEqual(one.plan.bound, []);
  assert.throws(() => parseCompareArgs(["--scenarios", "s999-b1-t1"]), /'s999-b1-t1'/);
  const render = parseCompareArgs(["--render", "/tmp/r/compare-full-x.json"]);
  assert.equal(render.render, "/tmp/r/compare-full-x.json");
  assert.equal(render.resultsDir, "/tmp/r", "the markdown and chart land next to the JSON");
  assert.equal(render.doc, null, "re-rendering leaves docs/ alone unless --doc is given");
  assert.throws(() => parseCompareArgs(["--quick", "--full"]), /not both/);
  assert.throws(() => parseCompareArgs(["--runtimes", "tensorflow"]), /'tensorflow'/);
  assert.throws(() => parseCompareArgs(["--runtimes", "torch"]), /--torch/);
  assert.throws(() => parseCompareArgs(["--budget-min", "0"]), /'0'/);
  assert.throws(() => parseCompareArgs(["--budget-min=-1"]), /'-1'/);
  assert.throws(() => parseCompareArgs(["--models", "gpt2"]), /'gpt2'/);
  assert.throws(() => parseCompareArgs(["--sparse-threshold", "2"]), /'2'/);
});

Deno.test("--model-file: a user's file is measured as it is, its sparsity read from it", async () => {
  const cli = parseCompareArgs(["--model-file", "m.fp32.onnx", "--scenarios", "s384-b1-t2"]);
  assert.equal(cli.modelFile, `${Deno.cwd()}/m.fp32.onnx`);
  assert.deepEqual(cli.fileScenarios, ["s384-b1-t2"]);
  assert.equal(cli.doc, null, "a file's run leaves docs/ alone unless --doc is given");
  assert.throws(() => parseCompareArgs(["--model-file", "m.onnx", "--quick"]), /--quick/);
  assert.throws(() => parseCompareArgs(["--model-file", "m.onnx", "--models", "x"]), /--models/);
  const dir = await Deno.makeTempDir({ prefix: "bench_model_file_" });
  try {
    const { path } = await ensureTestModel({
      preset: "bert-mini",
      config: { numLayers: 2, vocabSize: 2048, maxPositionEmbeddings: 128 },
      seed: 5,
    });
    const sparse = `${dir}/sparse.onnx`;
    await pruneModel(path, sparse, {
      sparsity: 0.8,
      pattern: "4x1",
      method: "magnitude",
      scope: "per-layer",
    });
    const info = await describeModelFile(sparse);
    assert.equal(info.def.source.kind, "file");
    assert.equal(info.pattern, "4x1");
    assert.ok(Math.abs(info.sparsity - 0.8) <= 0.01, `measured ${info.sparsity}`);
    assert.match(info.def.label, /4x1 block sparsity 0\.8/);
    assert.equal((await describeModelFile(path)).sparsity, 0, "a dense file stays dense");
    registerModelFile(info.def);
    const plan = filePlan(info.def.key, info.sparsity, info.pattern);
    checkPlan(plan);
    assert.deepEqual(plan.latency[0].variants.map(variantKey), ["fp32-s80-4x1", "int8-s80-4x1"]);
    assert.throws(() => registerModelFile({ ...info.def, key: "bert-base" }), /built-in/);
    const int8 = `${dir}/int8.onnx`;
    await quantizeModel(sparse, int8, {});
    await assert.rejects(() => describeModelFile(int8), /int8 weights: give the fp32 file/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("plans: every plan is valid, quick fits its budget, default names its scenarios", () => {
  for (const name of ["quick", "default", "full"] as const) checkPlan(planFor(name));
  const quick = planFor("quick");
  const total = estimatePlan(quick, RUNTIMES.filter((r) => r !== "torch"))
    .reduce((s, x) => s + x.estimateS, 0);
  assert.ok(total < quick.budgetS, `quick estimate ${total} s over its ${quick.budgetS} s budget`);
  const def = planFor("default");
  const base = def.latency.filter((b) => b.model === "bert-base");
  const keys = base.flatMap((b) => b.variants.map(variantKey));
  for (const k of ["fp32-dense", "int8-dense", "int8-s90-4x1", "int8-s70-4x1"]) {
    assert.ok(keys.includes(k), k);
  }
  assert.equal(def.chart.model, "bert-base");
  assert.throws(() => variant("int8", 1), /\[0, 1\)/);
  assert.throws(
    () => checkPlan({ ...quick, latency: [{ ...quick.latency[0], model: "nope" }] }),
    /Unknown model 'nope'/,
  );
  assert.throws(
    () =>
      checkPlan({
        ...quick,
        latency: [{ ...quick.latency[0], scenarios: [{ seq: 4096, batch: 1, threads: 1 }] }],
      }),
    /'4096'/,
  );
});

Deno.test("DeepSparse gets a private copy of the model file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/m.onnx`, "graph");
    await Deno.writeTextFile(`${dir}/m.onnx.data`, "weights");
    const copy = await privateCopy(`${dir}/m.onnx`);
    assert.notEqual(copy.path, `${dir}/m.onnx`);
    assert.equal(await Deno.readTextFile(copy.path), "graph");
    assert.equal(await Deno.readTextFile(`${copy.path}.data`), "weights");
    await Deno.writeTextFile(copy.path, "rewritten");
    assert.equal(await Deno.readTextFile(`${dir}/m.onnx`), "graph");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "bench:compare --quick: JSON, markdown and SVG, every peer present or its failure stated",
  // The peers are child processes that exit before the run returns; their pipes are closed.
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "bench_compare_test_" });
    try {
      const doc = `${dir}/BENCHMARKS.md`;
      await Deno.writeTextFile(doc, DOC);
      const cli = parseCompareArgs([
        "--quick",
        "--results-dir",
        `${dir}/results`,
        "--doc",
        doc,
        "--svg",
        `${dir}/chart.svg`,
      ]);
      const partials: (string | null)[] = [];
      const result = await runComparison({
        plan: cli.plan,
        command: "deno test tests/bench_compare_test.ts",
        runtimes: cli.runtimes,
        // No memory limit: the wave assertions below must not depend on this machine's load.
        memory: new MemoryPlanner({ available: () => null }),
        onStep: (partial) => {
          partials.push(partial.finishedAt);
          return Promise.resolve();
        },
      });
      const files = await writeOutputs(result, cli);

      // The saved JSON re-renders (--render) to the same markdown, chart link aside.
      const base = files.json.replace(/\.json$/, "");
      const noChart = (t: string): string =>
        t.split("\n").filter((l) => !l.startsWith("![")).join("\n");
      const first = await Deno.readTextFile(`${base}.md`);
      const again = await writeOutputs(
        JSON.parse(await Deno.readTextFile(files.json)),
        parseCompareArgs(["--render", files.json]),
      );
      assert.equal(again.markdown, `${base}.md`);
      assert.equal(noChart(await Deno.readTextFile(again.markdown)), noChart(first));
      assert.ok((await Deno.readTextFile(`${base}.svg`)).startsWith("<svg"));

      // A partial result after every step, marked unfinished.
      assert.equal(partials.length, result.latency.length + result.bound.length);
      assert.ok(partials.every((f) => f === null));
      assert.ok(result.finishedAt !== null);

      // The JSON round-trips and holds what the markdown shows.
      const json = JSON.parse(await Deno.readTextFile(files.json));
      assert.equal(json.schema, "sparsebert-bench-compare/1");
      assert.equal(json.latency.length, result.latency.length);
      assert.ok(json.machine.cpu);

      // Every runtime run is in every latency group, with results or a stated failure.
      const ran: RuntimeName[] = result.runtimes.filter((r) => r.run).map((r) => r.name);
      assert.deepEqual(ran, RUNTIMES.filter((r) => r !== "torch"));
      assert.ok(result.runtimes.find((r) => r.name === "torch")?.reason?.includes("--torch"));
      assert.ok(result.latency.length >= 4);
      for (const g of result.latency) {
        assert.equal(g.skipped, undefined, `${g.variantKey} skipped: ${g.skipped}`);
        for (const rt of ran as RuntimeName[]) {
          const mine: ContestantResult[] = g.contestants.filter((c) => c.spec.runtime === rt);
          assert.ok(mine.length > 0, `${rt} missing from ${g.variantKey}`);
          for (const c of mine) {
            if (c.status === "ok") {
              // No memory limit: one wave, and a peak was read.
              assert.equal(c.wave, 1, c.id);
              assert.ok(c.peakRssBytes! > 50e6, `${c.id} peak ${c.peakRssBytes}`);
              const s = c.stats!;
              assert.ok(s.n > 0 && s.p50 > 0 && s.p50 <= s.p90 && s.p90 <= s.p99, c.id);
              assert.ok(s.itemsPerS > 0, c.id);
              assert.equal(c.info!.inputIdsSum, result.latency[0].contestants[0].info!.inputIdsSum);
            } else {
              assert.ok(c.error && c.error.length > 0, `${c.id} failed without an error`);
              assert.ok(c.stage, `${c.id} failed without a stage`);
            }
          }
        }
        // sparsebert is ours: it must run every configuration of the plan.
        const sb = g.contestants.find((c) => c.spec.runtime === "sparsebert")!;
        assert.equal(sb.status, "ok", `sparsebert ${g.variantKey}: ${sb.error}`);
        // Its kernels are the user's chooser's: a sparse variant's layers are autotuned between
        // the sparse and the dense kernel of the variant's precision, a dense one's are dense.
        const config = sb.info!.config;
        const kinds = Object.keys(config.kernels as Record<string, number>);
        const suffix = g.variant.precision === "fp32" ? "f32" : "i8";
        const layers = Object.values(config.kernels as Record<string, number>)
          .reduce((a, b) => a + b, 0);
        if (g.variant.sparsity >= 0.5) {
          assert.equal(config.autotuned_layers, layers, `${g.variantKey} autotuned`);
          for (const kind of kinds) {
            assert.ok([`sparse-${suffix}`, `dense-${suffix}`].includes(kind), kind);
          }
        } else {
          assert.equal(config.autotuned_layers, 0, `${g.variantKey} autotuned`);
          assert.deepEqual(kinds, [`dense-${suffix}`], `${g.variantKey} kernels`);
        }
      }
      assert.deepEqual(result.sparsebertMissing, []);

      // The runtimes computed the same thing: sparsebert against onnxruntime-node on the same
      // file (fp32, and the int8 per-token layout whose integer math is exact in both).
      for (const g of result.latency) {
        const form = g.variant.precision === "fp32" ? "fp32" : "int8-pt";
        const sb = g.contestants.find((c) => c.spec.runtime === "sparsebert")!;
        const ort = g.contestants.find((c) =>
          c.spec.runtime === "ort-node" && c.spec.form === form && c.status === "ok"
        );
        if (!ort) continue;
        const a = sb.output!.first;
        const b = ort.output!.first;
        assert.equal(a.length, 4);
        const tol = g.variant.precision === "fp32" ? 1e-3 : 2e-2;
        a.forEach((v, i) => assert.ok(Math.abs(v! - b[i]!) <= tol, `${g.variantKey} [${i}]`));
        assert.equal(sb.output!.nonFinite, 0);
      }

      // DeepSparse got a private copy: the shared model files keep their dynamic shapes.
      for (const g of result.latency) {
        for (const f of g.files) {
          const model = await readOnnxModel(f.path, { loadExternalData: false });
          const inputs = model.graph.inputs.filter((i) =>
            ["input_ids", "attention_mask", "token_type_ids"].includes(i.name)
          );
          assert.ok(inputs.length >= 2, `${f.path} inputs`);
          for (const input of inputs) {
            assert.ok(
              input.shape?.some((d) => typeof d === "string"),
              `${f.path} input ${input.name} lost its dynamic shape`,
            );
          }
        }
      }

      // Throughput under the bound: every runtime has a verdict (a best config or none).
      assert.ok(result.bound.length >= 1);
      for (const b of result.bound) {
        for (const rt of ran) assert.ok(rt in b.best, `${rt} missing from the bound search`);
      }

      const md = await Deno.readTextFile(doc);
      assert.equal(await formatMarkdown(md), md, "the doc stays deno-fmt clean");
      assert.ok(md.includes(BEGIN_MARKER) && md.includes(END_MARKER));
      assert.ok(md.includes("## Server (issue 7)\n\nServer text.\n"), "other sections kept");
      for (const label of ["sparsebert", "ORT (node)", "ORT (Python)", "OpenVINO", "DeepSparse"]) {
        assert.ok(md.includes(`| ${label} `), `markdown lacks ${label}`);
      }
      assert.ok(md.includes("PyTorch not run"));
      assert.ok(md.includes("### Throughput under a latency bound"));
      assert.ok(md.includes("](chart.svg)"));
      const svg = await Deno.readTextFile(files.svg);
      assert.ok(svg.startsWith("<svg") && svg.trimEnd().endsWith("</svg>"));
      assert.ok(svg.includes("<polyline"), "the chart has lines");
      assert.equal(renderSvg(result), svg);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("memory planner: reads /proc/meminfo, learns peaks per model byte, keeps a reserve", () => {
  const info = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   20000000 kB\n";
  assert.equal(memAvailableBytes(info), 20000000 * 1024);
  assert.equal(memAvailableBytes("MemTotal: 5 kB\n"), null);
  if (Deno.build.os === "linux") {
    assert.ok((memAvailableBytes() ?? 0) > 0, "Linux has /proc/meminfo");
    assert.ok(peakRssBytes([Deno.pid]) > 10e6, "this process's own VmHWM");
  }
  assert.equal(peakRssBytes([2 ** 30]), 0, "a process that does not exist counts 0");

  let available: number | null = 10 * 2 ** 30;
  const planner = new MemoryPlanner({ reserveBytes: 2 ** 30, available: () => available });
  const spec = {
    runtime: "openvino" as const,
    form: "int8-qdq" as const,
    path: "",
    batch: 1,
    seq: 128,
    threads: 2,
    instances: 1,
  };
  const file = 400e6;
  // Not learned yet: the default guess (10 bytes per model byte for OpenVINO int8, plus
  // start-up).
  const first = planner.need(spec, file);
  assert.ok(first > 10 * file && first < 10 * file + 1e9, `${first}`);
  assert.ok(planner.fits(spec, file));
  // Learned from a peak of 3 GB: the largest ratio seen, with a margin, replaces the guess.
  planner.learn(spec, file, 3e9, 1);
  const learned = planner.need(spec, file);
  assert.ok(learned < first && learned > 3e9, `${learned}`);
  planner.learn(spec, file, 0.8e9, 1);
  assert.equal(planner.need(spec, file), learned, "a smaller peak does not lower the ratio");
  // fp32 is learned apart from int8: still the default guess (3.2 per model byte + 400 MiB).
  const fp32 = planner.need({ ...spec, form: "fp32" }, file);
  assert.ok(Math.abs(fp32 - (400 * 2 ** 20 + 3.2 * file)) < 1, `${fp32}`);
  // A small model teaches nothing (its peak is start-up); a low learned ratio keeps half the
  // default guess, so a small run cannot talk the planner into loading a large model blind.
  const other = new MemoryPlanner({ reserveBytes: 0, available: () => 1e12 });
  other.learn(spec, 10e6, 5e9, 1);
  assert.deepEqual(other.learned(), {});
  other.learn(spec, file, 0.5e9, 1);
  assert.ok(Math.abs(other.need(spec, file) - (400 * 2 ** 20 + 5 * file)) < 1);
  const deno = { ...spec, runtime: "sparsebert" as const, instances: 2 };
  assert.ok(planner.need(deno, file) > 2 * planner.need({ ...deno, instances: 1 }, file) - 1);
  // The reserve is kept: what fits in 10 GiB does not fit once less than need + 1 GiB is left.
  available = learned + 2 ** 30 - 1;
  assert.equal(planner.fits(spec, file), false);
  available = learned + 2 ** 30;
  assert.ok(planner.fits(spec, file));
  available = null;
  assert.ok(planner.fits(spec, file), "no limit known: everything fits");
  assert.deepEqual(Object.keys(planner.learned()), ["openvino|int8"]);
});

Deno.test({
  name: "a group that does not fit in memory is measured in waves, every contestant once",
  sanitizeResources: false,
  fn: async () => {
    const plan = planFor("quick");
    const runtimes: RuntimeName[] = ["sparsebert", "ort-node"];
    const { files, errors } = await prepareModels(plan, runtimes);
    assert.deepEqual(errors, []);
    const fp32 = files.find((f) => f.form === "fp32")!;
    assert.ok(modelBytes(fp32.path) === fp32.bytes);
    // No memory to spare: every contestant after the first of a wave waits for the next wave.
    const memory = new MemoryPlanner({ reserveBytes: 0, available: () => 0 });
    const lines: string[] = [];
    const specs = runtimes.map((runtime) => ({
      runtime,
      form: "fp32" as const,
      path: fp32.path,
      batch: 1,
      seq: 16,
      threads: 1,
      instances: 1,
    }));
    const results = await measureGroup(specs, {
      mode: "latency",
      rounds: 2,
      roundMs: 20,
      turnSeconds: 0,
      warmup: 1,
      settleMs: 0,
      maxContestantS: 5,
      start: {},
      memo: new FailureMemo(),
      memory,
      log: (l) => lines.push(l),
    });
    assert.deepEqual(results.map((r) => [r.spec.runtime, r.status, r.wave]), [
      ["sparsebert", "ok", 1],
      ["ort-node", "ok", 2],
    ]);
    for (const r of results) assert.ok(r.stats!.n > 0 && r.peakRssBytes! > 50e6, r.id);
    assert.ok(lines.some((l) => l.includes("wave 1: 1 loaded, 1 wait for the next wave")));
    // The quick model is under the size the planner learns from.
    assert.ok(fp32.bytes < 64 * 2 ** 20);
    assert.deepEqual(memory.learned(), {});
  },
});

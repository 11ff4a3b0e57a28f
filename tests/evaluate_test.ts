/**
 * Evaluation: the retrieval metrics on hand-made embeddings, the repository's retrieval set,
 * per-layer errors of generated models, a real model against itself on both runtimes, and the
 * CLI.
 */
import assert from "node:assert/strict";
import {
  DEFAULT_RETRIEVAL_SET,
  evaluate,
  readEvaluationTexts,
  type RetrievalSet,
  retrievalStats,
} from "../compress/evaluate.ts";
import { pruneModel } from "../compress/prune.ts";
import { modelFiles } from "../hub/registry.ts";
import { ensureTestModel, tinyTestModel } from "./fixtures/write_test_model.ts";
import { assertOneErrorLine, cli } from "./cli_helpers.ts";
import { inModelCache } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const haveMiniLM = await inModelCache(MINILM.onnx);

const TINY = tinyTestModel(5);

function unit(...v: number[]): Float32Array {
  const n = Math.hypot(...v);
  return Float32Array.from(v, (x) => x / n);
}

Deno.test("evaluate: recall and topic accuracy on hand-made embeddings", () => {
  const set: RetrievalSet = {
    items: [
      { text: "q1", topic: "a", role: "query" },
      { text: "q2", topic: "b", role: "query" },
      ...["a", "a", "b", "b", "c", "c"].map((topic, i) => ({
        text: `d${i}`,
        topic,
        role: "document" as const,
      })),
    ],
  };
  // A: q1 is nearest to d0 (a), then d1 (a); q2 nearest to d2 (b).
  const a = [
    unit(1, 0, 0),
    unit(0, 1, 0),
    unit(1, 0.1, 0),
    unit(1, 0.2, 0),
    unit(0.1, 1, 0),
    unit(0.2, 1, 0),
    unit(0, 0, 1),
    unit(0, 0.1, 1),
  ];
  // B: q1's top document becomes d4 (topic c); q2 keeps d2.
  const b: Float32Array[] = a.map((v) => v.slice());
  b[6] = unit(1, 0, 0.01);
  const r = retrievalStats(set, a, b);
  assert.equal(r.queries, 2);
  assert.equal(r.documents, 6);
  assert.equal(r.recallAt1, 0.5);
  assert.deepEqual(r.accuracyA, { top1: 1, precisionAt5: (2 / 5 + 2 / 5) / 2 });
  assert.equal(r.accuracyB.top1, 0.5);
  // The top-5 sets stay the same (d4 moves from 5th to 1st for q1).
  assert.equal(r.recallAt5, 1);
  assert.equal(r.accuracyB.precisionAt5, 0.4);
  assert.throws(() => retrievalStats({ items: set.items.slice(0, 4) }, a, b), /at least 5/);
});

Deno.test("evaluate: the repository's retrieval set is well formed", async () => {
  const set = await readEvaluationTexts(DEFAULT_RETRIEVAL_SET);
  assert.ok(!Array.isArray(set));
  const items = (set as RetrievalSet).items;
  assert.equal(items.length, 300);
  const topics = new Set(items.map((i) => i.topic));
  assert.equal(topics.size, 30);
  for (const t of topics) {
    const of = items.filter((i) => i.topic === t);
    assert.equal(of.filter((i) => i.role === "query").length, 3, t);
    assert.equal(of.filter((i) => i.role === "document").length, 7, t);
  }
  assert.equal(new Set(items.map((i) => i.text)).size, 300, "no duplicate sentences");
});

Deno.test("evaluate: generated models report per-layer errors", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-evaluate-" });
  try {
    const { path } = await ensureTestModel(TINY);
    const same = await evaluate(path, path);
    assert.equal(same.texts, "random tokens");
    assert.equal(same.layers!.length, 2);
    for (const l of same.layers!) assert.equal(l.maxAbsError, 0);
    assert.ok(same.cosine.min > 0.99999);
    const pruned = `${dir}/p.onnx`;
    await pruneModel(path, pruned, { sparsity: 0.5 });
    const r = await evaluate(path, pruned);
    assert.ok(r.layers!.every((l) => l.maxAbsError > 0 && l.maxAbsReference > 0));
    assert.ok(r.cosine.min < 0.9999);
    assert.ok(Math.abs(r.variantInfo.meanBlockSparsity - 0.5) < 1e-3);
    // A variant of another architecture is refused.
    const other = await ensureTestModel({ ...TINY, config: { ...TINY.config, numLayers: 1 } });
    await assert.rejects(() => evaluate(path, other.path), /differ in numLayers: 2 vs 1/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "evaluate: all-MiniLM-L6-v2 against itself on ORT and on sparsebert",
  ignore: !haveMiniLM,
  fn: async () => {
    const texts = (await readEvaluationTexts(DEFAULT_RETRIEVAL_SET)) as RetrievalSet;
    // Two texts per topic keep it fast: one query and its documents.
    const small: RetrievalSet = {
      items: texts.items.filter((_, i) => i % 10 === 0 || i % 10 >= 3 && i % 10 <= 7),
    };
    const r = await evaluate(MINILM.onnx!, MINILM.onnx!, { texts: small, runtime: "ort" });
    assert.equal(r.runtime, "ort");
    assert.equal(r.pooling, "mean");
    assert.ok(r.cosine.min > 0.99999);
    assert.equal(r.retrieval!.recallAt1, 1);
    assert.equal(r.retrieval!.recallAt5, 1);
    assert.ok(r.retrieval!.accuracyA.top1 > 0.9, JSON.stringify(r.retrieval));
    // sparsebert's fp32 encoder against ORT on the same file.
    const s = await evaluate(MINILM.onnx!, MINILM.onnx!, {
      texts: small,
      runtime: "auto",
      referenceRuntime: "ort",
      onNote: (line) => console.warn(`note: ${line}`),
    });
    if (s.runtime === "sparsebert") {
      assert.ok(s.cosine.min > 0.99999, JSON.stringify(s.cosine));
      assert.equal(s.retrieval!.recallAt1, 1);
    }
  },
});

Deno.test("evaluate: the CLI reports in JSON and fails clearly", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-evaluate-" });
  try {
    const { path } = await ensureTestModel(TINY);
    const pruned = `${dir}/p.onnx`;
    await pruneModel(path, pruned, { sparsity: 0.5 });
    const ok = await cli("evaluate", "--model", path, "--variant", pruned, "--json");
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stderr, "");
    const report = JSON.parse(ok.stdout);
    assert.equal(report.layers.length, 2);
    // --min-cosine turns a quality bound into the exit status.
    const bound = await cli(
      "evaluate",
      "--model",
      path,
      "--variant",
      pruned,
      "--min-cosine",
      "0.99999",
    );
    assert.equal(bound.code, 3);
    assert.match(bound.stderr, /min cosine .* is below 0.99999/);
    await Deno.writeTextFile(`${dir}/bad.json`, "{ not json");
    const cases: [string[], RegExp][] = [
      [["--model", path, "--variant", `${dir}/none.onnx`], /--variant ".*none.onnx" is neither/],
      [["--model", path, "--variant", pruned, "--pooling", "max"], /Unknown --pooling "max"/],
      [["--model", path, "--variant", pruned, "--runtime", "gpu"], /Unknown --runtime "gpu"/],
      [
        ["--model", path, "--variant", pruned, "--texts", `${dir}/none.txt`],
        /Cannot read texts file/,
      ],
      [["--variant", pruned], /--model is required/],
    ];
    for (const [args, pattern] of cases) {
      assertOneErrorLine(await cli("evaluate", ...args), pattern, 1);
    }
    await assert.rejects(() => readEvaluationTexts(`${dir}/bad.json`), /is not valid JSON/);
    await Deno.writeTextFile(`${dir}/items.json`, JSON.stringify({ items: [{ text: "x" }] }));
    await assert.rejects(
      () => readEvaluationTexts(`${dir}/items.json`),
      /item 0 needs "text", "topic" and "role"/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Pruning: exact sparsity per pattern and scope, the same graph with zeros in its
 * initializers (everything else byte-identical), Wanda scores, OBS (exact sparsity, kept
 * weights updated, closer to the dense model than Wanda), int8 inputs, external data, ONNX
 * Runtime on the output, and the errors of the API and the CLI. OBS's linear algebra is tested
 * in tests/obs_test.ts.
 */
import assert from "node:assert/strict";
import { OrtModel, randomBatches } from "../compress/calibrate.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { LAYER_LINEARS } from "../formats/onnx_layer.ts";
import { readOnnxModel } from "../formats/onnx_proto.ts";
import { tensorToFloat32 } from "../formats/onnx_tensors.ts";
import { lowestUnits, pruneModel, unitScores } from "../compress/prune.ts";
import { quantizeModel } from "../compress/quantize_model.ts";
import type { BertWeights, DenseWeight } from "../encoder/weights.ts";
import { ensureTestModel, tinyTestModel, writeTestModel } from "./fixtures/write_test_model.ts";
import { cosine, withTempDir } from "./helpers.ts";
import { assertOneErrorLine, cli } from "./cli_helpers.ts";

const TINY = tinyTestModel(7);

function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  return withTempDir("sparsebert-prune-", fn);
}

function linears(w: BertWeights): DenseWeight[] {
  return w.layers.flatMap((l) => LAYER_LINEARS.map((k) => l[k]));
}

Deno.test("prune: unit scores and the exact lowest-k selection", () => {
  const dense: DenseWeight = {
    out: 5,
    in: 2,
    // rows: [1, -2], [3, 0], [-0.5, 4], [2, 2], [1, 1]
    weight: Float32Array.from([1, -2, 3, 0, -0.5, 4, 2, 2, 1, 1]),
    bias: new Float32Array(5),
  };
  assert.deepEqual(Array.from(unitScores(dense, "unstructured", null)), [
    1,
    2,
    3,
    0,
    0.5,
    4,
    2,
    2,
    1,
    1,
  ]);
  // Wanda: |W_ij| * ||X_j||.
  const norms = Float64Array.from([2, 0.5]);
  assert.deepEqual(Array.from(unitScores(dense, "unstructured", norms)), [
    2,
    1,
    6,
    0,
    1,
    2,
    4,
    1,
    2,
    0.5,
  ]);
  // 4x1 blocks: rows 0-3 and the short group of row 4; score = L2 norm of the block.
  const blocks = unitScores(dense, "4x1", null);
  assert.equal(blocks.length, 4);
  assert.ok(Math.abs(blocks[0] - Math.sqrt(1 + 9 + 0.25 + 4)) < 1e-6);
  assert.ok(Math.abs(blocks[1] - Math.sqrt(4 + 0 + 16 + 4)) < 1e-6);
  assert.ok(Math.abs(blocks[2] - 1) < 1e-6 && Math.abs(blocks[3] - 1) < 1e-6);
  // Ties are broken by position, and exactly k units are chosen.
  assert.deepEqual(Array.from(lowestUnits(Float32Array.from([3, 1, 1, 2, 1]), 2)), [0, 1, 1, 0, 0]);
  assert.deepEqual(Array.from(lowestUnits(Float32Array.from([3, 1, 1, 2, 1]), 0)), [0, 0, 0, 0, 0]);
  assert.throws(() => lowestUnits(Float32Array.from([1, NaN]), 1), /Score 1 is NaN/);
});

Deno.test("prune: 4x1 per-layer magnitude writes zeros into the same graph", async () => {
  await withDir(async (dir) => {
    const { path } = await ensureTestModel(TINY);
    const out = `${dir}/pruned.onnx`;
    const report = await pruneModel(path, out, { sparsity: 0.75, pattern: "4x1" });
    assert.equal(report.linears.length, 12);
    const before = await readOnnxModel(path);
    const after = await readOnnxModel(out);
    // Same nodes, same initializer names; only the encoder linears' initializers changed.
    assert.deepEqual(after.graph.nodes, before.graph.nodes);
    assert.deepEqual(
      after.graph.initializers.map((t) => t.name),
      before.graph.initializers.map((t) => t.name),
    );
    const pruned = new Set(report.linears.map((l) => l.initializer));
    for (const [i, t] of after.graph.initializers.entries()) {
      const b = before.graph.initializers[i];
      if (!pruned.has(t.name)) assert.deepEqual(t.rawData, b.rawData, `${t.name} unchanged`);
    }
    const a0 = await analyzeOnnx(path);
    const a1 = await analyzeOnnx(out);
    const l0 = linears(a0.weights);
    linears(a1.weights).forEach((d, k) => {
      const blocks = Math.ceil(d.out / 4) * d.in;
      assert.equal(d.sparsity!.block4x1, Math.round(0.75 * blocks) / blocks);
      // Kept weights are untouched; zeroed blocks had the smallest norms.
      let keptMin = Infinity;
      let prunedMax = 0;
      for (let b = 0; b < blocks; b++) {
        const r = Math.floor(b / d.in) * 4;
        const i = b % d.in;
        let norm = 0;
        let zero = true;
        for (let o = r; o < Math.min(d.out, r + 4); o++) {
          norm += l0[k].weight[o * d.in + i] ** 2;
          if (d.weight[o * d.in + i] !== 0) zero = false;
          else if (l0[k].weight[o * d.in + i] !== 0 && !zero) assert.fail("partial block");
          if (d.weight[o * d.in + i] !== 0) {
            assert.equal(d.weight[o * d.in + i], l0[k].weight[o * d.in + i]);
          }
        }
        if (zero) prunedMax = Math.max(prunedMax, norm);
        else keptMin = Math.min(keptMin, norm);
      }
      assert.ok(prunedMax <= keptMin, `linear ${k}: pruned norm ${prunedMax} > kept ${keptMin}`);
    });
    assert.ok(Math.abs(report.total.block4x1 - 0.75) < 1e-3);
    // ONNX Runtime runs the pruned file.
    const s = await OrtModel.create(out);
    const y = await s.run(randomBatches({ vocabSize: 400, count: 2, seqLen: 8 })[0]);
    await s.release();
    assert.ok(Object.values(y)[0].data.every(Number.isFinite));
  });
});

Deno.test("prune: global and unstructured scopes, Wanda differs from magnitude", async () => {
  await withDir(async (dir) => {
    const { path } = await ensureTestModel(TINY);
    const g = await pruneModel(path, `${dir}/g.onnx`, {
      sparsity: 0.6,
      pattern: "unstructured",
      scope: "global",
    });
    const elements = g.linears.reduce((n, l) => n + l.shape[0] * l.shape[1], 0);
    assert.equal(Math.round(g.total.element * elements), Math.round(0.6 * elements));
    // One global threshold: every kept |w| of every linear >= every pruned |w|.
    const orig = linears((await analyzeOnnx(path)).weights);
    const glob = linears((await analyzeOnnx(`${dir}/g.onnx`)).weights);
    let keptMin = Infinity;
    let prunedMax = 0;
    glob.forEach((d, k) => {
      for (let i = 0; i < d.weight.length; i++) {
        const w = Math.abs(orig[k].weight[i]);
        if (d.weight[i] === 0) prunedMax = Math.max(prunedMax, w);
        else keptMin = Math.min(keptMin, w);
      }
    });
    assert.ok(prunedMax <= keptMin, `pruned ${prunedMax} > kept ${keptMin}`);
    const calibration = randomBatches({ vocabSize: 400, count: 4, seqLen: 16 });
    const w = await pruneModel(path, `${dir}/w.onnx`, {
      sparsity: 0.5,
      pattern: "unstructured",
      method: "wanda",
      calibration,
    });
    const m = await pruneModel(path, `${dir}/m.onnx`, { sparsity: 0.5, pattern: "unstructured" });
    assert.ok(w.calibrationTokens > 0);
    for (const r of [w, m]) {
      assert.ok(r.linears.every((l) => Math.abs(l.after.element - 0.5) < 1e-6));
    }
    const wa = linears((await analyzeOnnx(`${dir}/w.onnx`)).weights);
    const ma = linears((await analyzeOnnx(`${dir}/m.onnx`)).weights);
    let differ = 0;
    for (let i = 0; i < wa[0].weight.length; i++) {
      if ((wa[0].weight[i] === 0) !== (ma[0].weight[i] === 0)) differ++;
    }
    assert.ok(differ > 0.05 * wa[0].weight.length, `masks differ in ${differ} weights`);
  });
});

Deno.test("prune: --method obs prunes a model exactly and stays closer to it than Wanda", async () => {
  await withDir(async (dir) => {
    const { path } = await ensureTestModel(TINY);
    const calibration = randomBatches({ vocabSize: 400, count: 16, seqLen: 32 });
    const prune = (name: string, method: "obs" | "wanda", obsInputs?: "dense") =>
      pruneModel(path, `${dir}/${name}.onnx`, {
        sparsity: 0.6,
        pattern: "4x1",
        method,
        calibration,
        obsInputs,
      });
    const report = await prune("obs", "obs");
    assert.equal(report.method, "obs");
    assert.ok(report.calibrationTokens > 0);
    assert.equal(report.linears.length, 12);
    const dense = (await analyzeOnnx(path)).weights;
    const pruned = await analyzeOnnx(`${dir}/obs.onnx`);
    let updated = 0;
    for (const [l, layer] of pruned.weights.layers.entries()) {
      for (const k of LAYER_LINEARS) {
        const d = layer[k];
        const blocks = Math.ceil(d.out / 4) * d.in;
        assert.equal(d.sparsity!.block4x1, Math.round(0.6 * blocks) / blocks, `${l} ${k}`);
        assert.equal(d.sparsity!.element, d.sparsity!.block4x1, `${l} ${k}: whole blocks`);
        const w0 = dense.layers[l][k].weight;
        for (let i = 0; i < d.weight.length; i++) {
          if (d.weight[i] !== 0 && d.weight[i] !== w0[i]) updated++;
        }
      }
    }
    assert.ok(updated > 1000, `${updated} kept weights updated`);
    // Same graph, and ONNX Runtime's output on held-out inputs is closer to the dense model's.
    assert.deepEqual(
      (await readOnnxModel(`${dir}/obs.onnx`)).graph.nodes,
      pruned.source.graph.nodes,
    );
    await prune("obs-dense", "obs", "dense");
    await prune("wanda", "wanda");
    const held = randomBatches({ vocabSize: 400, count: 16, seqLen: 32, seed: 9 });
    const run = async (file: string) => {
      const s = await OrtModel.create(file);
      try {
        const outs = [];
        for (const b of held) outs.push(Object.values(await s.run(b))[0].data);
        return outs;
      } finally {
        await s.release();
      }
    };
    const ref = await run(path);
    const error = async (file: string) => {
      const y = await run(file);
      let e = 0;
      let norm = 0;
      for (const [b, r] of ref.entries()) {
        for (let i = 0; i < r.length; i++) {
          e += (y[b][i] - r[i]) ** 2;
          norm += r[i] ** 2;
        }
      }
      return Math.sqrt(e / norm);
    };
    const eObs = await error(`${dir}/obs.onnx`);
    const eDense = await error(`${dir}/obs-dense.onnx`);
    const eWanda = await error(`${dir}/wanda.onnx`);
    assert.ok(
      eObs < eWanda && eDense < eWanda,
      `obs ${eObs}, obs dense ${eDense}, wanda ${eWanda}`,
    );
    assert.notEqual(eObs, eDense);
  });
});

Deno.test("prune: int8 models keep their int8 weights, external data is written again", async () => {
  await withDir(async (dir) => {
    const { path } = await ensureTestModel(TINY);
    for (const granularity of ["per-tensor", "per-token"] as const) {
      const q = `${dir}/q-${granularity}.onnx`;
      await quantizeModel(path, q, { granularity });
      const out = `${dir}/qp-${granularity}.onnx`;
      await pruneModel(q, out, { sparsity: 0.5, pattern: "4x1" });
      const calibration = randomBatches({ vocabSize: 400, count: 2, seqLen: 8 });
      await assert.rejects(
        () => pruneModel(q, `${dir}/x.onnx`, { sparsity: 0.5, method: "obs", calibration }),
        /OBS pruning needs fp32 weights, and ".*q-per-.*\.onnx" is quantized/,
      );
      // Re-importing checks the per-token form's column sums against the pruned weights.
      const a = await analyzeOnnx(out);
      for (const d of linears(a.weights)) {
        assert.equal(d.quantized!.form, "MatMulInteger");
        assert.equal(
          d.quantized!.granularity,
          granularity === "per-token" ? granularity : undefined,
        );
        assert.ok(Math.abs(d.sparsity!.block4x1 - 0.5) < 1e-3);
      }
      // ONNX Runtime on the pruned int8 file agrees with it on the pruned weights in fp32.
      const fp32 = `${dir}/p-${granularity}.onnx`;
      await pruneModel(path, fp32, { sparsity: 0.5, pattern: "4x1" });
      const batch = randomBatches({ vocabSize: 400, count: 2, seqLen: 8 })[0];
      const run = async (file: string) => {
        const s = await OrtModel.create(file);
        try {
          return Object.values(await s.run(batch))[0].data;
        } finally {
          await s.release();
        }
      };
      const x = await run(out);
      const y = await run(fp32);
      assert.ok(cosine(x, y) > 0.995, `${granularity}: int8 pruned vs fp32 pruned`);
    }
    // External data in, external data out.
    const ext = `${dir}/ext.onnx`;
    await writeTestModel(ext, { ...TINY, externalData: true });
    const pruned = `${dir}/ext-pruned.onnx`;
    const r = await pruneModel(ext, pruned, { sparsity: 0.3 });
    assert.ok(r.bytes > 0);
    const stat = await Deno.stat(`${pruned}.data`);
    assert.ok(stat.size > 100_000);
    const back = await analyzeOnnx(pruned);
    assert.ok(Math.abs(back.weights.layers[1].output.sparsity!.block4x1 - 0.3) < 1e-3);
    const table = (m: Awaited<ReturnType<typeof readOnnxModel>>) =>
      tensorToFloat32(m.graph.initializers.find((t) => t.name.includes("word_embeddings"))!);
    assert.deepEqual(table(await readOnnxModel(pruned)), table(await readOnnxModel(ext)));
  });
});

Deno.test("prune: bad input is one clear error", async () => {
  const { path } = await ensureTestModel(TINY);
  await assert.rejects(
    () => pruneModel(path, "/tmp/x.onnx", { sparsity: 1 }),
    /Invalid sparsity 1/,
  );
  await assert.rejects(
    () => pruneModel(path, "/tmp/x.onnx", { sparsity: -0.1 }),
    /Invalid sparsity -0.1/,
  );
  await assert.rejects(
    () => pruneModel(path, "/tmp/x.onnx", { sparsity: 0.5, method: "wanda" }),
    /Wanda pruning needs calibration texts/,
  );
  await assert.rejects(
    () => pruneModel(path, "/tmp/x.onnx", { sparsity: 0.5, method: "obs" }),
    /OBS pruning needs calibration texts/,
  );
  const calibration = randomBatches({ vocabSize: 400, count: 2, seqLen: 8 });
  await assert.rejects(
    () =>
      pruneModel(path, "/tmp/x.onnx", {
        sparsity: 0.5,
        method: "obs",
        scope: "global",
        calibration,
      }),
    /OBS pruning supports the per-layer scope only, got "global"/,
  );
  await withDir(async (dir) => {
    const required = ["--sparsity", "0.5", "--out", `${dir}/o.onnx`];
    const cases: [string[], RegExp][] = [
      [[...required, "--pattern", "2x2"], /Unknown --pattern "2x2"/],
      [["--sparsity", "1.5", "--out", `${dir}/o.onnx`], /Invalid sparsity 1.5/],
      [["--sparsity", "abc", "--out", `${dir}/o.onnx`], /--sparsity must be a number, got "abc"/],
      [["--sparsity", "0.5"], /--out is required/],
      [["--out", `${dir}/o.onnx`], /--sparsity is required/],
      [[...required, "--method", "wanda"], /--method wanda needs --calibration/],
      [
        [...required, "--method", "wanda", "--calibration", `${dir}/none.txt`],
        /Cannot read texts file ".*none.txt"/,
      ],
      [[...required, "--global", "--per-layer"], /Choose one of/],
      [[...required, "--method", "obs"], /--method obs needs --calibration/],
      [[...required, "--method", "obs", "--global"], /per-layer scope only/],
      [[...required, "--obs-inputs", "dense"], /--obs-inputs is only used by --method obs/],
      [
        [...required, "--method", "obs", "--obs-inputs", "x"],
        /Unknown --obs-inputs "x": expected sequential or dense/,
      ],
    ];
    for (const [args, pattern] of cases) {
      assertOneErrorLine(await cli("prune", "--model", path, ...args), pattern, 1);
    }
    const missing = await cli("prune", "--model", `${dir}/missing.onnx`, ...required);
    assert.match(missing.stderr, /^error: --model ".*missing.onnx" is neither a file/);
    const help = await cli("prune", "--help");
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--method M/);
    assert.match(help.stdout, /obs \(SparseGPT/);
    // Success in JSON mode: one JSON document on stdout, nothing on stderr.
    for (const method of ["magnitude", "obs"]) {
      const calibrated = method === "obs" ? ["--calibration", "random"] : [];
      const ok = await cli(
        "prune",
        "--model",
        path,
        "--sparsity",
        "0.5",
        "--out",
        `${dir}/ok-${method}.onnx`,
        "--method",
        method,
        ...calibrated,
        "--json",
      );
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stderr, "");
      const report = JSON.parse(ok.stdout);
      assert.equal(report.ok, true);
      assert.equal(report.method, method);
      assert.equal(report.linears.length, 12);
    }
  });
});

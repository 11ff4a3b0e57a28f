/**
 * Model quantization (`compress/quantize_model.ts`, `deno task cli quantize`): the acceptance figure on
 * all-MiniLM-L6-v2 (int8 dense, cosine to fp32 >= 0.99 on every text of the retrieval set),
 * the saturation rule, the per-layer error report, and the errors of the API and the CLI.
 * (`quantize_test.ts` is the kernel test of `ops/quantize.ts`.)
 */
import assert from "node:assert/strict";
import { randomBatches } from "../compress/calibrate.ts";
import { evaluate } from "../compress/evaluate.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { LAYER_LINEARS } from "../formats/onnx_layer.ts";
import { quantizeAnalysis, quantizeModel } from "../compress/quantize_model.ts";
import { modelFiles } from "../hub/registry.ts";
import { ensureTestModel, tinyTestModel } from "./fixtures/write_test_model.ts";
import { assertOneErrorLine, cli } from "./cli_helpers.ts";
import { inModelCache, withTempDir } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const haveMiniLM = await inModelCache(MINILM.onnx);

const TINY = tinyTestModel(3);

function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  return withTempDir("sparsebert-quantize-", fn);
}

Deno.test({
  name: "quantize: all-MiniLM-L6-v2 int8 dense keeps cosine >= 0.99 to fp32 on every text",
  ignore: !haveMiniLM,
  fn: async () => {
    await withDir(async (dir) => {
      const out = `${dir}/model.onnx`;
      const report = await quantizeModel(MINILM.onnx!, out);
      assert.equal(report.granularity, "per-token");
      assert.equal(report.activationQmax, 127);
      assert.equal(report.weightBits, 8);
      assert.equal(report.linears, 36);
      await Deno.copyFile(MINILM.tokenizer, `${dir}/tokenizer.json`);
      // sparsebert's pipeline on the int8 kernels when the kernel library loads, else ORT on
      // both files; the report says which.
      const r = await evaluate(MINILM.onnx!, out);
      console.log(
        `MiniLM int8 (${r.runtime}): cosine min ${r.cosine.min.toFixed(5)} mean ${
          r.cosine.mean.toFixed(5)
        }, recall@1 ${r.retrieval!.recallAt1.toFixed(3)}, recall@5 ${
          r.retrieval!.recallAt5.toFixed(3)
        }`,
      );
      assert.equal(r.cosine.count, 300);
      assert.ok(r.cosine.min >= 0.99, JSON.stringify(r.cosine.worst));
      assert.equal(r.variantInfo.int8, 36);
      assert.ok(r.retrieval!.recallAt1 >= 0.95);
      if (r.runtime === "sparsebert") assert.ok((r.kernels?.["dense-i8"] ?? 0) > 0);
    });
  },
});

Deno.test("quantize: weight ranges never saturate int16 pair sums", async () => {
  const a = await analyzeOnnx((await ensureTestModel(TINY)).path);
  const pairMax = async (opts: Parameters<typeof quantizeAnalysis>[2]): Promise<number> => {
    const { model, report } = await quantizeAnalysis(a, "tiny.onnx", opts);
    const back = await import("../formats/onnx_import.ts").then((m) =>
      m.analyzeOnnxModel(model, "q.onnx")
    );
    let maxW = 0;
    for (const l of back.weights.layers) {
      for (const k of LAYER_LINEARS) {
        for (const v of l[k].quantized!.weight) maxW = Math.max(maxW, Math.abs(v));
      }
    }
    return 2 * maxW * report.activationQmax;
  };
  assert.ok(await pairMax({ granularity: "per-token" }) <= 32767);
  assert.ok(await pairMax({ granularity: "per-tensor" }) <= 32767);
  const calibration = randomBatches({ vocabSize: 400, count: 4, seqLen: 16 });
  assert.ok(await pairMax({ activations: "static", calibration }) <= 32767);
  // Asking for the saturating combination works but warns.
  const { report } = await quantizeAnalysis(a, "tiny.onnx", {
    granularity: "per-tensor",
    weightBits: 8,
  });
  assert.match(report.warnings[0], /can saturate/);
});

Deno.test("quantize: the error report compares each linear with fp32", async () => {
  const a = await analyzeOnnx((await ensureTestModel(TINY)).path);
  const calibration = randomBatches({ vocabSize: 400, count: 4, seqLen: 16 });
  const fine = await quantizeAnalysis(a, "tiny.onnx", { calibration, errorTokens: 16 });
  const coarse = await quantizeAnalysis(a, "tiny.onnx", {
    calibration,
    errorTokens: 16,
    weightBits: 7,
  });
  assert.equal(fine.report.errors.length, 12);
  for (const e of fine.report.errors) {
    assert.equal(e.tokens, 16);
    assert.ok(e.relativeError > 0 && e.relativeError < 0.05, `${e.linear}: ${e.relativeError}`);
    assert.ok(e.maxAbsError > 0);
  }
  // Same activations, coarser weights: more error.
  const mean = (r: typeof fine) =>
    r.report.errors.reduce((s, e) => s + e.relativeError, 0) / r.report.errors.length;
  assert.ok(mean(coarse) > mean(fine), `${mean(coarse)} vs ${mean(fine)}`);
  // No calibration, no report.
  assert.deepEqual((await quantizeAnalysis(a, "tiny.onnx")).report.errors, []);
});

Deno.test("quantize: bad input is one clear error; --json is quiet", async () => {
  const { path } = await ensureTestModel(TINY);
  const a = await analyzeOnnx(path);
  await assert.rejects(
    () => quantizeAnalysis(a, "tiny.onnx", { activations: "static" }),
    /Static activation quantization needs calibration texts/,
  );
  await withDir(async (dir) => {
    const out = `${dir}/q.onnx`;
    const cases: [string[], RegExp][] = [
      [["--out", out, "--activations", "sometimes"], /Unknown --activations "sometimes"/],
      [["--out", out, "--granularity", "per-row"], /Unknown --granularity "per-row"/],
      [["--out", out, "--weight-bits", "4"], /--weight-bits must be 7 or 8, got "4"/],
      [["--out", out, "--activations", "static"], /needs --calibration FILE/],
      [["--out", out, "--calibration", `${dir}/none.txt`], /Cannot read texts file ".*none.txt"/],
      [["--out", out, "--activations", "static", "--granularity", "per-token"], /dynamic/],
      [[], /--out is required/],
    ];
    for (const [args, pattern] of cases) {
      assertOneErrorLine(await cli("quantize", "--model", path, ...args), pattern, 1);
    }
    const help = await cli("quantize", "-h");
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--activations A/);
    const ok = await cli(
      "quantize",
      "--model",
      path,
      "--out",
      out,
      "--activations",
      "static",
      "--calibration",
      "random",
      "--json",
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stderr, "");
    const report = JSON.parse(ok.stdout);
    assert.equal(report.format, "QDQ");
    assert.equal(report.errors.length, 12);
    assert.ok(report.ortCheck.minCosine > 0.99, JSON.stringify(report.ortCheck));
  });
});

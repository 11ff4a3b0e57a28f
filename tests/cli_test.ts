/**
 * `deno task cli run`, `inspect` and `info` as a user runs them (a subprocess each): embeddings on a
 * real model, the inspect report of a sparse model, and one clear error line with a non-zero
 * exit for a truncated file, a non-BERT graph, an over-long text and bad arguments.
 */
import assert from "node:assert/strict";
import { cpuFeatureReport, cpuSupports, ISA_VARIANTS, probeCpuFeatures } from "../ffi/library.ts";
import { makeTensor } from "../formats/onnx_tensors.ts";
import { DataType } from "../formats/onnx_types.ts";
import { encodeOnnxModel } from "../formats/onnx_write.ts";
import { pipeline } from "../pipelines/pipeline.ts";
import { modelFiles } from "../hub/registry.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import { maxAbsDiff } from "./ort_reference.ts";
import { assertOneErrorLine, CLI, cli } from "./cli_helpers.ts";
import { inModelCache } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const haveMiniLM = await inModelCache(MINILM.onnx);

Deno.test({
  name: "cli run: MiniLM embeddings as JSON match the pipeline",
  ignore: !haveMiniLM,
  fn: async () => {
    const r = await cli("run", "--model", MINILM.onnx!, "--text", "Hello world", "--json");
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout);
    assert.equal(out.task, "feature-extraction");
    assert.deepEqual(out.result.dims, [1, 384]);
    using extractor = await pipeline("feature-extraction", MINILM.onnx!);
    const expected = await extractor("Hello world", { pooling: "mean", normalize: true });
    assert.ok(maxAbsDiff(Float32Array.from(out.result.data), expected.data) <= 1e-6);
    const text = await cli("run", "--model", MINILM.onnx!, "--text", "a", "--text", "b c");
    assert.equal(text.code, 0, text.stderr);
    assert.match(text.stdout, /dims \[2, 384\] \(mean pooling, declared by the registry entry\)/);
    assert.match(text.stdout, /norm 1\.0000/);
  },
});

Deno.test({
  name: "cli run: an over-long text is one error line unless --truncation",
  ignore: !haveMiniLM,
  fn: async () => {
    const long = "tokens ".repeat(40);
    const r = await cli("run", "--model", MINILM.onnx!, "--max-length", "16", "--text", long);
    assertOneErrorLine(r, /Text has 82 tokens, over the limit of 16 \(maxLength\)/);
    const ok = await cli(
      "run",
      "--model",
      MINILM.onnx!,
      "--max-length",
      "16",
      "--truncation",
      "--text",
      long,
    );
    assert.equal(ok.code, 0, ok.stderr);
  },
});

Deno.test("cli run: a truncated ONNX file is one error line", async () => {
  const { path } = await ensureTestModel({
    preset: "bert-mini",
    config: { numLayers: 1, vocabSize: 1000 },
  });
  const bytes = await Deno.readFile(path);
  const dir = await Deno.makeTempDir();
  try {
    const cut = `${dir}/truncated.onnx`;
    await Deno.writeFile(cut, bytes.subarray(0, Math.floor(bytes.length * 0.6)));
    const r = await cli("run", "--model", cut, "--text", "hello");
    assertOneErrorLine(r, /truncated\.onnx.*truncated or corrupt/);
    const inspect = await cli("inspect", "--model", cut);
    assertOneErrorLine(inspect, /truncated or corrupt/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli run: an ONNX graph that is not a BERT encoder is one error line", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/matmul.onnx`;
    await Deno.writeFile(
      path,
      encodeOnnxModel({
        irVersion: 8,
        opsetImport: [{ domain: "", version: 14 }],
        producerName: "test",
        producerVersion: "1",
        domain: "",
        modelVersion: 1,
        metadata: {},
        graph: {
          name: "matmul",
          nodes: [{
            name: "mm",
            opType: "MatMul",
            domain: "",
            inputs: ["x", "w"],
            outputs: ["y"],
            attributes: [],
          }],
          initializers: [makeTensor("w", DataType.FLOAT, [4, 2], new Float32Array(8))],
          inputs: [{ name: "x", elemType: DataType.FLOAT, shape: ["m", 4] }],
          outputs: [{ name: "y", elemType: DataType.FLOAT, shape: ["m", 2] }],
          valueInfo: [],
        },
      }),
    );
    const r = await cli("run", "--model", path, "--text", "hello");
    assertOneErrorLine(r, /matmul\.onnx/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli run: bad arguments are one error line", async () => {
  assertOneErrorLine(await cli("run", "--text", "x"), /--model is required/);
  assertOneErrorLine(
    await cli("run", "--model", "no-such-model-anywhere", "--text", "x"),
    /neither a file, a folder nor a known model name/,
  );
  assertOneErrorLine(
    await cli("run", "--model", "x", "--task", "translation", "--text", "x"),
    /Unknown task "translation"/,
  );
});

Deno.test("cli inspect: layers, shapes, parameters and the sparsity of a pruned model", async () => {
  const { path, config } = await ensureTestModel({
    preset: "bert-mini",
    sparsity: 0.5,
    seed: 2,
    config: { numLayers: 2, vocabSize: 1000 },
  });
  const r = await cli("inspect", "--model", path, "--json");
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  assert.equal(report.config.numLayers, 2);
  assert.equal(report.linears.filter((l: { layer: number | null }) => l.layer !== null).length, 12);
  const h = config.hiddenSize;
  const expectedParams = 1000 * h + 512 * h + 2 * h + 2 * h +
    2 * (4 * (h * h + h) + 2 * (4 * h * h) + 4 * h + h + 4 * h);
  assert.equal(report.parameters, expectedParams);
  assert.ok(
    Math.abs(report.sparsity.encoderBlocks - 0.5) < 0.02,
    `4x1 block sparsity ${report.sparsity.encoderBlocks}`,
  );
  const text = await cli("inspect", "--model", path);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /2 layers, hidden 256, 4 heads/);
  assert.match(text.stdout, /intermediate\s+\[1024, 256\]/);
});

Deno.test("cli info --json: the loaded variant, the CPU features and why that variant", async () => {
  const r = await cli("info", "--json");
  assert.equal(r.code, 0, r.stderr);
  const report = JSON.parse(r.stdout);
  const probed = probeCpuFeatures();
  // What the report says must be what the probe says, whatever this CPU is.
  assert.deepEqual(report.cpu.features, cpuFeatureReport(probed));
  for (const key of ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx"]) {
    assert.equal(typeof report.cpu.features[key], "boolean", key);
  }
  const runnable = ISA_VARIANTS.filter((isa) => cpuSupports(probed, isa));
  assert.deepEqual(
    report.variants.filter((v: { runnable: boolean }) => v.runnable).map((v: { isa: string }) =>
      v.isa
    ),
    runnable,
  );
  assert.equal(report.loaded.isa, runnable.at(-1), "the best runnable variant");
  assert.match(report.loaded.reason, /^best variant this CPU can run \(it needs /);
  const forced = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, "info", "--json"],
    env: { NO_COLOR: "1", SPARSEBERT_ISA: "baseline" },
    stdout: "piped",
  }).output();
  const baseline = JSON.parse(new TextDecoder().decode(forced.stdout));
  assert.equal(baseline.loaded.isa, "baseline");
  assert.equal(baseline.loaded.reason, "forced by SPARSEBERT_ISA");
});

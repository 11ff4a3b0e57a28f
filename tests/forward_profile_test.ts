import assert from "node:assert/strict";
import { BertEncoder } from "../encoder/bert.ts";
import { FORWARD_PHASES, ForwardProfile } from "../encoder/forward_profile.ts";
import { testModelWeights, writeTestModel } from "./fixtures/write_test_model.ts";
import { type CliRun, runScript } from "./cli_helpers.ts";

Deno.test("a profiled forward pass charges its phases and gives the unprofiled output", () => {
  const weights = testModelWeights({ preset: "bert-mini", config: { numLayers: 2 }, seed: 5 });
  using encoder = new BertEncoder(weights);
  const input = { inputIds: Int32Array.from({ length: 16 }, (_, i) => 100 + i), batch: 2, seq: 8 };
  const plain = encoder.forward(input);
  const profile = new ForwardProfile();
  const profiled = encoder.forward(input, { profile });
  encoder.forward(input, { profile });
  assert.deepEqual(profiled, plain);
  assert.equal(profile.passes, 2);
  const mean = profile.meanMs();
  // Dense fp32 layers: every phase but the fused feed-forward one ran.
  for (const phase of FORWARD_PHASES) {
    if (phase === "feed-forward-fused") assert.equal(profile.ms[phase], 0);
    else assert.ok(profile.ms[phase] >= 0, phase);
  }
  assert.ok(profile.ms.qkv > 0 && profile.ms.intermediate > 0, JSON.stringify(profile.ms));
  const sum = Object.values(mean).reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(sum - profile.totalMs()) < 1e-9);
  profile.reset();
  assert.equal(profile.passes, 0);
  assert.deepEqual(profile.meanMs(), {});
});

function profileCommand(args: string[]): Promise<CliRun> {
  return runScript(new URL("../bench/profile.ts", import.meta.url).pathname, ...args);
}

Deno.test("bench:profile profiles a model file and refuses bad options", async () => {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-profile-" });
  try {
    const path = `${dir}/model.onnx`;
    await writeTestModel(path, { config: { vocabSize: 300, numLayers: 2 }, sparsity: 0.9 });
    const help = await profileCommand(["--help"]);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--model FILE/);
    assert.equal((await profileCommand([])).code, 2);
    assert.equal((await profileCommand(["--model", path, "--kernels", "csr"])).code, 2);
    const run = await profileCommand([
      "--model",
      path,
      "--seq",
      "16",
      "--passes",
      "3",
      "--threads",
      "1",
      "--kernels",
      "sparse-f32",
      "--json",
    ]);
    assert.equal(run.code, 0, run.stdout);
    const r = JSON.parse(run.stdout);
    // Four linears per layer: Q/K/V fused into one, attention output, intermediate, output.
    assert.deepEqual(r.kernels, { "sparse-f32": 8 });
    assert.equal(r.forwardMs.n, 3);
    for (const phase of ["embeddings", "qkv", "attention", "intermediate", "output-norm"]) {
      assert.ok(r.phasesMs[phase] > 0, phase);
    }
    const sum = Object.values(r.phasesMs as Record<string, number>).reduce((a, b) => a + b, 0);
    assert.ok(Math.abs(sum - r.profiledTotalMs) < 1e-6);
    assert.equal(r.int8QuantizeMs, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

import * as assert from "node:assert/strict";
import { int8ActivationQmax } from "../ops/quantize.ts";
import { type CliRun, runScript } from "./cli_helpers.ts";

function accuracyCommand(args: string[]): Promise<CliRun> {
  return runScript(new URL("../bench/int8_accuracy.ts", import.meta.url).pathname, ...args);
}

Deno.test("bench:accuracy measures int8 against fp32 on a real model and refuses bad options", async () => {
  const help = await accuracyCommand(["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /--models LIST/);
  assert.equal((await accuracyCommand(["--threads", "0"])).code, 2);
  assert.equal((await accuracyCommand(["--bogus"])).code, 2);
  const texts = await Deno.makeTempFile({ suffix: ".json" });
  try {
    const sentences = ["Deno runs BERT on a CPU.", "Zig kernels multiply int8 weights.", "Rain."];
    await Deno.writeTextFile(texts, JSON.stringify(sentences));
    const run = await accuracyCommand([
      "--models",
      "all-minilm-l6-v2",
      "--texts",
      texts,
      "--threads",
      "1",
      "--json",
    ]);
    assert.equal(run.code, 0, run.stdout);
    const result = JSON.parse(run.stdout);
    assert.equal(result.activationQmax, int8ActivationQmax());
    assert.equal(result.texts, 3);
    assert.deepEqual(
      result.rows.map((r: { weights: string; attention: string }) => `${r.weights}/${r.attention}`),
      ["int8/fp32", "int8/int8", "bf16/fp32"],
    );
    for (const r of result.rows) {
      // int8 and bf16 move the embeddings a little, never to another text's.
      assert.ok(r.minCosine > 0.98 && r.minCosine < 1, `min cosine ${r.minCosine}`);
      assert.ok(r.meanCosine >= r.minCosine);
      assert.ok(r.belowLossless >= 0 && r.belowLossless <= 3);
    }
  } finally {
    await Deno.remove(texts);
  }
});

/**
 * Seeded, bounded fuzzing in the suite (tests/fuzz/targets.ts): a few thousand mutated
 * inputs per parser, and mutated HTTP bodies against a real server. Every case must end in a
 * result or a clear error. The seed is printed; `SPARSEBERT_FUZZ_SEED=N` replays a run, and
 * `deno task fuzz --minutes N` runs longer.
 */
import assert from "node:assert/strict";
import { importOnnx } from "../formats/onnx_import.ts";
import { spawnServer } from "../serve/spawn.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import {
  allTargets,
  fuzz,
  type FuzzStats,
  HTTP_BODIES,
  mutate,
  mutateJson,
} from "./fuzz/targets.ts";
import { rng } from "./harness.ts";
import { bytesTensor, v2TextBody } from "./serve_helpers.ts";

const SEED = Number(Deno.env.get("SPARSEBERT_FUZZ_SEED") ?? Date.now() % 1_000_000);
const CASES: Record<string, number> = {
  "onnx": 3000,
  "safetensors": 4000,
  "sbert": 400,
  "sbert-packed": 1000,
  "tokenizer.json": 400,
};

function report(stats: FuzzStats): void {
  console.log(
    `fuzz ${stats.target}: seed ${SEED}, ${stats.cases} cases, ${stats.ok} parsed, ` +
      `${stats.errors} clear errors, slowest ${stats.slowestMs.toFixed(0)} ms`,
  );
  assert.deepEqual(stats.findings, [], `replay with SPARSEBERT_FUZZ_SEED=${SEED}`);
}

Deno.test({
  name:
    `fuzz: ONNX, safetensors, .sbert and tokenizer.json parsers end every case clearly (seed ${SEED})`,
  sanitizeResources: false,
  async fn() {
    const targets = await allTargets();
    try {
      for (const target of targets) report(await fuzz(target, SEED, CASES[target.name]));
    } finally {
      for (const t of targets) await t.close?.();
    }
  },
});

Deno.test({
  name:
    `fuzz: mutated HTTP bodies get a 2xx or a 4xx JSON error, never a 5xx or a dead server (seed ${SEED})`,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const server = await spawnServer({
      config: {
        limits: { maxBodyBytes: 64 * 1024, maxInputs: 16, maxTextChars: 2000, bodyTimeoutMs: 2000 },
        models: [{ name: "minilm", model: "all-minilm-l6-v2", maxLength: 64, maxWaitMs: 1 }],
      },
    });
    try {
      const next = rng(SEED);
      const statuses = new Map<number, number>();
      const binary = v2TextBody(bytesTensor(["binary text"]));
      for (let i = 0; i < 600; i++) {
        const [route, text] = HTTP_BODIES[i % HTTP_BODIES.length];
        const useBinary = i % 7 === 6;
        const seedBytes = useBinary ? binary.body : new TextEncoder().encode(text);
        const body = next() < 0.5 && !useBinary ? mutateJson(text, next) : mutate(seedBytes, next);
        const headers: Record<string, string> = { "content-type": "application/json" };
        if (useBinary) {
          headers["inference-header-content-length"] = String(
            next() < 0.5 ? binary.headerLength : Math.floor(next() * 2 ** 32) - 2 ** 31,
          );
        }
        const target = useBinary ? "/v2/models/minilm/infer" : route;
        const r = await fetch(`${server.url}${target}`, {
          method: "POST",
          headers,
          body: body as Uint8Array<ArrayBuffer>,
        });
        const answer = await r.text();
        statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
        assert.ok(r.status < 500, `case ${i} (${target}): ${r.status} ${answer.slice(0, 300)}`);
        if (r.status >= 400) {
          assert.doesNotThrow(() => JSON.parse(answer), `case ${i}: error body is not JSON`);
        }
      }
      // Oversized and cut-short bodies.
      const big = await fetch(`${server.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input: "x".repeat(200_000) }),
      });
      await big.text();
      assert.equal(big.status, 413);
      const live = await fetch(`${server.url}/v2/health/live`);
      assert.equal(live.status, 200, "the server is alive after the run");
      await live.text();
      console.log(`fuzz http: seed ${SEED}, 600 bodies, statuses ${JSON.stringify([...statuses])}`);
    } finally {
      await server.stop();
    }
  },
});

Deno.test("external data cannot escape the model's folder through a symbolic link", async () => {
  const { path } = await ensureTestModel({
    preset: "bert-mini",
    config: { numLayers: 1, vocabSize: 512, hiddenSize: 64, numHeads: 2, intermediateSize: 128 },
    seed: 12,
    externalData: true,
  });
  const dir = await Deno.makeTempDir({ prefix: "external_escape_" });
  try {
    const name = path.slice(path.lastIndexOf("/") + 1);
    await Deno.copyFile(path, `${dir}/${name}`);
    // The location the model names, as a link to the real file in another folder.
    await Deno.symlink(`${path}.data`, `${dir}/${name}.data`);
    await assert.rejects(
      () => importOnnx(`${dir}/${name}`),
      /points to external data ".*", a link to ".*" outside the model's folder/,
    );
    // The same file inside the folder loads.
    await Deno.remove(`${dir}/${name}.data`);
    await Deno.copyFile(`${path}.data`, `${dir}/${name}.data`);
    await importOnnx(`${dir}/${name}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

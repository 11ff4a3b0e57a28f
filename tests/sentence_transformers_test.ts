/**
 * sentence-transformers fidelity: all-MiniLM-L6-v2 from its safetensors folder with its
 * sentence-transformers files (modules.json, 1_Pooling, Normalize), no options given, embeds
 * the 300 texts of data/retrieval_set.json as sentence-transformers itself does, to max abs
 * 1e-5, through the pipeline, the CLI and the server; and a model with a Dense module. The reference is sentence-transformers'
 * output recorded by tools/st_reference.py (tests/fixtures/st_all_minilm_l6_v2_retrieval.json
 * says how, with which versions); sentence-transformers needs torch (several GB from PyPI), so
 * the suite compares against the recording instead of running it.
 */
import assert from "node:assert/strict";
import { sha256Hex } from "../ffi/download.ts";
import { type FeatureExtractionPipeline, pipeline } from "../pipelines/pipeline.ts";
import { modelFiles } from "../hub/registry.ts";
import { type SpawnedServer, spawnServer } from "../serve/spawn.ts";
import { inModelCache } from "./helpers.ts";

const BOUND = 1e-5;
const FOLDER = modelFiles("all-minilm-l6-v2-st").dir;
const FIXTURE = new URL("./fixtures/st_all_minilm_l6_v2_retrieval", import.meta.url).pathname;
const SET = new URL("../data/retrieval_set.json", import.meta.url).pathname;

const haveModel = await inModelCache(`${FOLDER}/modules.json`);

async function reference(): Promise<{ texts: string[]; rows: Float32Array[] }> {
  const meta = JSON.parse(await Deno.readTextFile(`${FIXTURE}.json`));
  const bytes = await Deno.readFile(`${FIXTURE}.f32`);
  assert.equal(await sha256Hex(bytes), meta.sha256, "the recorded embeddings were changed");
  const setBytes = await Deno.readFile(SET);
  assert.equal(
    await sha256Hex(setBytes),
    meta.retrievalSetSha256,
    "re-record after editing the set",
  );
  const texts = JSON.parse(new TextDecoder().decode(setBytes)).items.map((i: { text: string }) =>
    i.text
  );
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const rows = texts.map((_: string, i: number) => all.subarray(i * meta.dim, (i + 1) * meta.dim));
  return { texts, rows };
}

function worstRow(got: ArrayLike<number>[], want: Float32Array[]): number {
  let worst = 0;
  got.forEach((row, r) => {
    for (let i = 0; i < want[r].length; i++) {
      const d = Math.abs(row[i] - want[r][i]);
      if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
    }
  });
  return worst;
}

Deno.test({
  name:
    "sentence-transformers: all-MiniLM-L6-v2's folder embeds as sentence-transformers does (pipeline)",
  ignore: !haveModel,
  async fn() {
    const { texts, rows } = await reference();
    using embed = await pipeline("feature-extraction", FOLDER);
    assert.equal(embed.model.embedding?.pooling, "mean");
    assert.equal(embed.model.embedding?.normalize, true);
    assert.equal(embed.tokenizer.maxLength, 256, "max_seq_length of sentence_bert_config.json");
    const out = await embed(texts);
    assert.deepEqual(out.dims, [300, 384]);
    const got = rows.map((_, r) => out.data.subarray(r * 384, (r + 1) * 384));
    const d = worstRow(got, rows);
    assert.ok(d <= BOUND, `max abs ${d} against sentence-transformers`);
  },
});

Deno.test({
  name: "sentence-transformers: the same through the CLI and the server",
  ignore: !haveModel,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const { texts, rows } = await reference();
    const cli = new URL("../tools/cli.ts", import.meta.url).pathname;
    const few = texts.slice(0, 6).flatMap((t) => ["--text", t]);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", cli, "run", "--model", FOLDER, ...few, "--json"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    const report = JSON.parse(new TextDecoder().decode(out.stdout)).result;
    const cliRows = rows.slice(0, 6).map((_, r) => report.data.slice(r * 384, (r + 1) * 384));
    assert.ok(worstRow(cliRows, rows.slice(0, 6)) <= BOUND, "CLI");

    const server = await spawnServer({
      config: { models: [{ name: "st", model: FOLDER, maxLength: 256, kernel: "dense-f32" }] },
    });
    try {
      const got: number[][] = [];
      for (let i = 0; i < texts.length; i += 100) {
        const r = await fetch(`${server.url}/v1/embeddings`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: "st", input: texts.slice(i, i + 100) }),
        });
        const body = await r.json();
        assert.equal(r.status, 200, JSON.stringify(body));
        got.push(...(body.data as { embedding: number[] }[]).map((d) => d.embedding));
      }
      const d = worstRow(got, rows);
      assert.ok(d <= BOUND, `server: max abs ${d} against sentence-transformers`);
    } finally {
      await server.stop();
    }
  },
});

/** A folder with a fixture's modules around the registry folder's Transformer files. */
async function fixtureFolder(name: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: `${name}_` });
  const fixture = new URL(`./fixtures/${name}`, import.meta.url).pathname;
  for (
    const file of ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
  ) {
    await Deno.symlink(`${FOLDER}/${file}`, `${dir}/${file}`);
  }
  for await (const { name: path } of Deno.readDir(fixture)) {
    if (path !== "README.md" && path !== "reference.f32") {
      await Deno.symlink(`${fixture}/${path}`, `${dir}/${path}`);
    }
  }
  return dir;
}

/** A fixture's reference.f32 as rows of `width`. */
async function fixtureRows(name: string, width: number): Promise<Float32Array[]> {
  const bytes = await Deno.readFile(new URL(`./fixtures/${name}/reference.f32`, import.meta.url));
  const all = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  return Array.from(
    { length: all.length / width },
    (_, r) => all.subarray(r * width, (r + 1) * width),
  );
}

/**
 * A test over a fixture folder (the model with the sentence-transformers files of
 * tests/fixtures/`fixture`), its feature-extraction pipeline and a server serving it under the
 * fixture's name, with the reference texts and the fixture's recorded rows of `width`; the
 * folder, the pipeline and the server go afterwards.
 */
function fixtureTest(
  name: string,
  fixture: string,
  width: number,
  fn: (
    run: {
      texts: string[];
      rows: Float32Array[];
      server: SpawnedServer;
      embed: FeatureExtractionPipeline;
    },
  ) => Promise<void>,
): void {
  Deno.test({
    name,
    ignore: !haveModel,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const { texts } = await reference();
      const rows = await fixtureRows(fixture, width);
      const dir = await fixtureFolder(fixture);
      const server = await spawnServer({
        config: { models: [{ name: fixture, model: dir, maxLength: 256, kernel: "dense-f32" }] },
      });
      try {
        using embed = await pipeline("feature-extraction", dir);
        await fn({ texts, rows, server, embed });
      } finally {
        await server.stop();
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

fixtureTest(
  "sentence-transformers: a Dense module (384 -> 256, Tanh) runs as sentence-transformers does",
  "st_dense",
  256,
  async ({ texts, rows, server, embed }) => {
    assert.equal(embed.model.embedding?.dense?.length, 1);
    const out = await embed(texts.slice(0, 24));
    assert.deepEqual(out.dims, [24, 256]);
    const got = rows.map((_, r) => out.data.subarray(r * 256, (r + 1) * 256));
    const d = worstRow(got, rows);
    assert.ok(d <= BOUND, `pipeline: max abs ${d} against sentence-transformers`);
    const r = await fetch(`${server.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model: "st_dense", input: texts.slice(0, 24) }),
    });
    const body = await r.json();
    assert.equal(r.status, 200, JSON.stringify(body));
    const served = (body.data as { embedding: number[] }[]).map((x) => x.embedding);
    const ds = worstRow(served, rows);
    assert.ok(ds <= BOUND, `server: max abs ${ds} against sentence-transformers`);
  },
);

fixtureTest(
  "sentence-transformers: a prompt the pooling leaves out (include_prompt false)",
  "st_prompt",
  384,
  async ({ texts, rows, server, embed }) => {
    assert.equal(embed.model.embedding?.includePrompt, false);
    const out = await embed(texts.slice(0, 24), { promptName: "query" });
    const got = rows.map((_, r) => out.data.subarray(r * 384, (r + 1) * 384));
    const d = worstRow(got, rows);
    assert.ok(d <= BOUND, `pipeline: max abs ${d} against sentence-transformers`);
    // Counting the prompt's tokens would give other vectors: the test can tell.
    const counted = await embed(texts.slice(0, 24).map((t) => `query: ${t}`), {
      promptName: "document",
    });
    assert.ok(
      worstRow(rows.map((_, r) => counted.data.subarray(r * 384, (r + 1) * 384)), rows) > 1e-3,
    );
    const r = await fetch(`${server.url}/embed`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ inputs: texts.slice(0, 24), prompt_name: "query" }),
    });
    const body = await r.json();
    assert.equal(r.status, 200, JSON.stringify(body));
    const ds = worstRow(body as number[][], rows);
    assert.ok(ds <= BOUND, `server: max abs ${ds} against sentence-transformers`);
  },
);

/**
 * Embeddings as each model defines them: the sentence-transformers files are read (pooling
 * mode, Normalize, max_seq_length, prompts), registry entries carry their model's pooling
 * (bge-small-en-v1.5: CLS + Normalize), and the pipeline and CLI use it when the caller names
 * none: bge's default embeddings equal CLS + L2 of ONNX Runtime's output on the same file. A
 * model file next to a differently named tokenizer works by discovery and with `--tokenizer`.
 */
import assert from "node:assert/strict";
import { pipeline } from "../pipelines/pipeline.ts";
import { modelFiles } from "../hub/registry.ts";
import { readSentenceConfig, SentenceConfigError } from "../formats/sentence_config.ts";
import { spawnServer } from "../serve/spawn.ts";
import { maxAbsDiff, releaseOrtSessions, runOrt } from "./ort_reference.ts";
import { poolReference } from "./reference/pooling.ts";
import { inModelCache } from "./helpers.ts";

const BGE = modelFiles("bge-small-en-v15");
const TEXTS = ["what is a sparse encoder?", "BGE pools the CLS token", "ok"];

const haveBge = await inModelCache(BGE.onnx);

async function folder(files: Record<string, unknown>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "st_config_" });
  for (const [name, content] of Object.entries(files)) {
    const path = `${dir}/${name}`;
    await Deno.mkdir(path.slice(0, path.lastIndexOf("/")), { recursive: true });
    await Deno.writeTextFile(path, typeof content === "string" ? content : JSON.stringify(content));
  }
  return dir;
}

/** `deno task cli run ... --json`; fails the test on a non-zero exit. */
async function cliRun(
  ...args: string[]
): Promise<{ result: Record<string, unknown> & { data: number[] } }> {
  const cli = new URL("../tools/cli.ts", import.meta.url).pathname;
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", cli, "run", ...args, "--json"],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  return JSON.parse(new TextDecoder().decode(out.stdout));
}

const MODULES = [
  { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
  { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
  { idx: 2, name: "2", path: "2_Normalize", type: "sentence_transformers.models.Normalize" },
];
const CLS = { word_embedding_dimension: 384, pooling_mode_cls_token: true };

Deno.test("sentence-transformers files give pooling, Normalize, max_seq_length and prompts", async () => {
  const dir = await folder({
    "modules.json": MODULES,
    "1_Pooling/config.json": { ...CLS, pooling_mode_mean_tokens: false, include_prompt: false },
    "sentence_bert_config.json": { max_seq_length: 512, do_lower_case: true },
    "config_sentence_transformers.json": {
      prompts: { query: "query: " },
      default_prompt_name: null,
    },
  });
  try {
    assert.deepEqual(await readSentenceConfig(dir), {
      pooling: "cls",
      normalize: true,
      includePrompt: false,
      maxSeqLength: 512,
      doLowerCase: true,
      prompts: { query: "query: " },
      defaultPromptName: null,
      source: dir,
    });
    // Without the Normalize module: mean pooling, no normalisation.
    await Deno.writeTextFile(`${dir}/modules.json`, JSON.stringify(MODULES.slice(0, 2)));
    await Deno.writeTextFile(
      `${dir}/1_Pooling/config.json`,
      JSON.stringify({ pooling_mode_mean_tokens: true }),
    );
    const mean = await readSentenceConfig(dir);
    assert.equal(mean?.pooling, "mean");
    assert.equal(mean?.normalize, false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a folder without sentence-transformers files declares nothing; bad ones fail clearly", async () => {
  const empty = await folder({ "config.json": {} });
  const two = await folder({
    "1_Pooling/config.json": { pooling_mode_cls_token: true, pooling_mode_max_tokens: true },
  });
  const dense = await folder({
    "modules.json": [...MODULES, { path: "2_Dense", type: "sentence_transformers.models.Dense" }],
    "1_Pooling/config.json": CLS,
  });
  const lstm = await folder({
    "modules.json": [...MODULES, { path: "2_LSTM", type: "sentence_transformers.models.LSTM" }],
    "1_Pooling/config.json": CLS,
  });
  const broken = await folder({ "modules.json": MODULES, "1_Pooling/config.json": "{ nope" });
  try {
    assert.equal(await readSentenceConfig(empty), null);
    await assert.rejects(() => readSentenceConfig(two), /sets cls \+ max pooling mode/);
    await assert.rejects(() => readSentenceConfig(dense), /2_Dense\/config\.json is missing/);
    await assert.rejects(
      () => readSentenceConfig(lstm),
      (e: unknown) =>
        e instanceof SentenceConfigError && /a LSTM module \("2_LSTM"\)/.test(e.message),
    );
    await assert.rejects(
      () => readSentenceConfig(broken),
      /1_Pooling\/config\.json" is not valid JSON/,
    );
  } finally {
    for (const dir of [empty, two, dense, lstm, broken]) {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

Deno.test({
  name: "bge-small-en-v1.5 by name embeds with CLS + L2 by default, equal to ORT's output",
  ignore: !haveBge,
  sanitizeResources: false,
  async fn() {
    using embed = await pipeline("feature-extraction", "bge-small-en-v15");
    assert.deepEqual(
      { pooling: embed.model.embedding?.pooling, normalize: embed.model.embedding?.normalize },
      { pooling: "cls", normalize: true },
    );
    const out = await embed(TEXTS);
    const enc = embed.tokenizer.encodeBatch(TEXTS);
    const [batch, seq] = enc.shape;
    const hidden = (await runOrt(BGE.onnx!, { ...enc, batch, seq })).last_hidden_state;
    const h = embed.config.hiddenSize;
    const shape = { batch, seq, hidden: h, mask: Uint8Array.from(enc.attentionMask) };
    const expected = poolReference(hidden, shape, { mode: "cls", normalize: true });
    assert.deepEqual(out.dims, [TEXTS.length, h]);
    const d = maxAbsDiff(out.data, expected);
    assert.ok(d <= 1e-5, `bge default embeddings differ from ORT CLS + L2 by ${d}`);
    // The caller still decides when it says so.
    const mean = await embed(TEXTS, { pooling: "mean", normalize: false });
    const meanRef = poolReference(hidden, shape, { mode: "mean", normalize: false });
    assert.ok(maxAbsDiff(mean.data, meanRef) <= 1e-4);
    await releaseOrtSessions();
  },
});

Deno.test({
  name: "a model file with <stem>-tokenizer.json is found; --tokenizer names another",
  ignore: !haveBge,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tokenizer_beside_" });
    try {
      await Deno.symlink(BGE.onnx!, `${dir}/bge.onnx`);
      await assert.rejects(
        () => pipeline("feature-extraction", `${dir}/bge.onnx`),
        /has no tokenizer \(looked for tokenizer\.json, <stem>-tokenizer\.json/,
      );
      await Deno.symlink(BGE.tokenizer, `${dir}/vocab-of-bge.json`);
      using named = await pipeline("feature-extraction", `${dir}/bge.onnx`, {
        tokenizer: `${dir}/vocab-of-bge.json`,
      });
      const a = await named(TEXTS, { pooling: "cls", normalize: true });
      await Deno.symlink(BGE.tokenizer, `${dir}/bge-tokenizer.json`);
      using found = await pipeline("feature-extraction", `${dir}/bge.onnx`);
      assert.equal(found.model.weights.source.tokenizer, `${dir}/bge-tokenizer.json`);
      const b = await found(TEXTS, { pooling: "cls", normalize: true });
      assert.deepEqual(b.data, a.data);
      await assert.rejects(
        () => pipeline("feature-extraction", `${dir}/bge.onnx`, { tokenizer: `${dir}/none.json` }),
        /Tokenizer file ".*none\.json" does not exist/,
      );
      // The CLI: the registry's CLS pooling by default, and --tokenizer.
      const report = await cliRun("--model", "bge-small-en-v15", "--text", TEXTS[0]);
      assert.equal(report.result.pooling, "cls");
      assert.equal(report.result.normalize, true);
      assert.ok(maxAbsDiff(report.result.data, a.data.subarray(0, 384)) <= 1e-6);
      const tokenizerArgs = ["--tokenizer", `${dir}/vocab-of-bge.json`, "--pooling", "cls"];
      const withTokenizer = await cliRun(
        "--model",
        `${dir}/bge.onnx`,
        ...tokenizerArgs,
        "--text",
        TEXTS[0],
      );
      assert.deepEqual(withTokenizer.result.data, report.result.data);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "the server embeds bge-small-en-v1.5 with its CLS pooling unless configured otherwise",
  ignore: !haveBge,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // A folder with sentence-transformers files and prompts, around the same ONNX file.
    const dir = await folder({
      "modules.json": MODULES,
      "1_Pooling/config.json": CLS,
      "config_sentence_transformers.json": {
        prompts: { query: "Represent this: ", none: "" },
        default_prompt_name: "query",
      },
    });
    await Deno.symlink(BGE.onnx!, `${dir}/model.onnx`);
    await Deno.symlink(BGE.tokenizer, `${dir}/tokenizer.json`);
    const models = [
      { name: "bge", model: "bge-small-en-v15", maxLength: 128 },
      { name: "bge-mean", model: "bge-small-en-v15", maxLength: 128, pooling: "mean" },
    ];
    const server = await spawnServer({ config: { models } });
    const prompted = await spawnServer({
      config: { models: [{ name: "st", model: `${dir}/model.onnx`, maxLength: 128 }] },
    });
    try {
      using embed = await pipeline("feature-extraction", "bge-small-en-v15");
      const cls = await embed(TEXTS, { pooling: "cls", normalize: true });
      const mean = await embed(TEXTS, { pooling: "mean", normalize: true });
      for (const [name, expected] of [["bge", cls], ["bge-mean", mean]] as const) {
        const response = await fetch(`${server.url}/v1/embeddings`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ model: name, input: TEXTS }),
        });
        const body = await response.json();
        assert.equal(response.status, 200, JSON.stringify(body));
        const got = (body.data as { embedding: number[] }[]).flatMap((d) => d.embedding);
        const d = maxAbsDiff(got, expected.data);
        assert.ok(d <= 2e-5, `${name}: server embeddings differ from the pipeline's by ${d}`);
      }
      // TEI's /embed with prompt_name prepends the model's prompt.
      const teiEmbed = async (body: Record<string, unknown>) => {
        const r = await fetch(`${prompted.url}/embed`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        return { status: r.status, body: await r.json() };
      };
      const withPrompt = await teiEmbed({ inputs: TEXTS[0], prompt_name: "query" });
      assert.equal(withPrompt.status, 200, JSON.stringify(withPrompt.body));
      const expected = await embed(`Represent this: ${TEXTS[0]}`, {
        pooling: "cls",
        normalize: true,
      });
      assert.ok(maxAbsDiff(withPrompt.body[0], expected.data) <= 2e-5, "prompted embedding");
      const unknown = await teiEmbed({ inputs: TEXTS[0], prompt_name: "passage" });
      assert.equal(unknown.status, 422);
      assert.match(unknown.body.error, /Available prompts: \["query", "none"\]/);
      // default_prompt_name applies when a request names none: TEI, OpenAI and the pipeline.
      const byDefault = await teiEmbed({ inputs: TEXTS[0] });
      assert.ok(maxAbsDiff(byDefault.body[0], expected.data) <= 2e-5, "TEI default prompt");
      const openai = await fetch(`${prompted.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ input: TEXTS[0] }),
      });
      const openaiBody = await openai.json();
      assert.ok(
        maxAbsDiff(openaiBody.data[0].embedding, expected.data) <= 2e-5,
        "OpenAI default prompt",
      );
      using local = await pipeline("feature-extraction", dir);
      assert.ok(
        maxAbsDiff((await local(TEXTS[0])).data, expected.data) <= 2e-5,
        "pipeline default",
      );
      const plain = await local(TEXTS[0], { promptName: "none" });
      const plainExpected = await embed(TEXTS[0], { pooling: "cls", normalize: true });
      assert.ok(maxAbsDiff(plain.data, plainExpected.data) <= 2e-5, "promptName overrides it");
    } finally {
      await server.stop();
      await prompted.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "every declared pooling mode runs, equal to the reference on ORT's token vectors",
  ignore: !haveBge,
  sanitizeResources: false,
  async fn() {
    for (const mode of ["max", "mean_sqrt_len", "weightedmean", "lasttoken"] as const) {
      const flags = Object.fromEntries(
        [["max", "max_tokens"], ["mean_sqrt_len", "mean_sqrt_len_tokens"], [
          "weightedmean",
          "weightedmean_tokens",
        ], ["lasttoken", "lasttoken"]].map(([m, f]) => [`pooling_mode_${f}`, m === mode]),
      );
      const dir = await folder({
        "modules.json": MODULES.slice(0, 2),
        "1_Pooling/config.json": flags,
      });
      try {
        await Deno.symlink(BGE.onnx!, `${dir}/model.onnx`);
        await Deno.symlink(BGE.tokenizer, `${dir}/tokenizer.json`);
        using embed = await pipeline("feature-extraction", dir);
        assert.equal(embed.model.embedding?.pooling, mode);
        const out = await embed(TEXTS);
        const enc = embed.tokenizer.encodeBatch(TEXTS);
        const [batch, seq] = enc.shape;
        const hidden = (await runOrt(BGE.onnx!, { ...enc, batch, seq })).last_hidden_state;
        const shape = { batch, seq, hidden: 384, mask: Uint8Array.from(enc.attentionMask) };
        const expected = poolReference(hidden, shape, { mode, normalize: false });
        const d = maxAbsDiff(out.data, expected);
        assert.ok(d <= 1e-4, `${mode}: differs from ORT + reference by ${d}`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
    await releaseOrtSessions();
  },
});

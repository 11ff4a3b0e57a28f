// Real clients against the real server: the `openai` npm client on /v1/embeddings, Python's
// `tritonclient[http]` on the KServe v2 routes and `tei-client` on the TEI routes (PyPI, venv
// set up by tools/serve_clients_setup.ts). Their results must equal the library's pipelines.
import assert from "node:assert/strict";
import OpenAI from "openai";
import type {
  ClassificationResult,
  FeatureExtractionPipeline,
  TextClassificationPipeline,
} from "../pipelines/pipeline.ts";
import { buildPipeline } from "../serve/pipeline_backend.ts";
import { type SpawnedServer, spawnServer } from "../serve/spawn.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import { ensureServeClients } from "../tools/serve_clients_setup.ts";
import { libraryEmbeddings } from "./serve_expected.ts";
import { maxAbsDiff, serverTest } from "./serve_helpers.ts";

const MODEL = "minilm";
const MAX_LENGTH = 128;
const TOLERANCE = 2e-5;
const TEXTS = [
  "Clients should not notice which server they talk to.",
  "tritonclient speaks the binary tensor extension",
  "naïve café 🙂",
];

const config = {
  models: [{
    name: MODEL,
    aliases: ["text-embedding-3-small"],
    model: "all-minilm-l6-v2-q",
    fallback: "all-minilm-l6-v2",
    maxLength: MAX_LENGTH,
    maxWaitMs: 2,
  }],
};

async function loaded(url: string, key = ""): Promise<string> {
  const r = await fetch(`${url}/v2/models/${MODEL}`, {
    headers: { authorization: `Bearer ${key}` },
  });
  return (await r.json()).parameters.model;
}

/** Runs a Python client script of tests/ with `request` on stdin; returns what it printed. */
async function clientScript(python: string, name: string, request: Record<string, unknown>) {
  const script = new URL(`./${name}`, import.meta.url).pathname;
  const child = new Deno.Command(python, {
    args: [script],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(JSON.stringify(request)));
  await writer.close();
  const out = await child.output();
  assert.ok(out.success, `${name} failed:\n${new TextDecoder().decode(out.stderr)}`);
  // deno-lint-ignore no-explicit-any
  return JSON.parse(new TextDecoder().decode(out.stdout)) as Record<string, any>;
}

/** tests/serve_clients_tei.py: the PyPI tei-client against the server. */
function teiClient(python: string, request: Record<string, unknown>) {
  return clientScript(python, "serve_clients_tei.py", request);
}

/**
 * A test of a Python client against a server on this file's `config`: the clients' venv is set
 * up first (tools/serve_clients_setup.ts) and the server stopped afterwards.
 */
function pythonClientTest(
  name: string,
  fn: (python: string, server: SpawnedServer) => Promise<void>,
): void {
  let python = "";
  const setUp = async () => {
    python = await ensureServeClients();
    return { config };
  };
  serverTest(name, setUp, (server) => fn(python, server));
}

serverTest("serve clients: the openai npm client gets the pipeline's embeddings", {
  config,
  env: { SPARSEBERT_API_KEY: "client-key" },
}, async (server) => {
  const expected = await libraryEmbeddings(await loaded(server.url, "client-key"), TEXTS, {
    maxLength: MAX_LENGTH,
  });
  const client = new OpenAI({
    baseURL: `${server.url}/v1`,
    apiKey: "client-key",
    maxRetries: 0,
  });
  // The client asks for base64 by default and decodes it itself.
  const batch = await client.embeddings.create({ model: MODEL, input: TEXTS });
  assert.equal(batch.data.length, TEXTS.length);
  batch.data.forEach((d, i) => {
    assert.equal(d.index, i);
    const diff = maxAbsDiff(d.embedding, expected[i]);
    assert.ok(diff <= TOLERANCE, `text ${i}: max abs diff ${diff}`);
  });
  assert.ok(batch.usage.prompt_tokens > 0);
  const floats = await client.embeddings.create({
    model: "text-embedding-3-small",
    input: TEXTS[2],
    encoding_format: "float",
  });
  assert.ok(maxAbsDiff(floats.data[0].embedding, expected[2]) <= TOLERANCE);
  // Matryoshka `dimensions`: the first 128 components, back to unit length.
  const short = await client.embeddings.create({ model: MODEL, input: TEXTS, dimensions: 128 });
  short.data.forEach((d, i) => {
    assert.equal(d.embedding.length, 128);
    const head = expected[i].slice(0, 128);
    const norm = Math.hypot(...head);
    const diff = maxAbsDiff(d.embedding, head.map((v) => v / norm));
    assert.ok(diff <= TOLERANCE, `text ${i}, 128 dimensions: max abs diff ${diff}`);
    assert.ok(Math.abs(Math.hypot(...d.embedding) - 1) < 1e-5, "unit length");
  });
  const models = await client.models.list();
  assert.ok(models.data.some((m) => m.id === MODEL));
  // Errors surface as the client's typed errors with the server's message.
  await assert.rejects(
    client.embeddings.create({ model: "gpt-nope", input: "a" }),
    (err: unknown) => err instanceof OpenAI.NotFoundError && /gpt-nope/.test(err.message),
  );
  const wrongKey = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 });
  await assert.rejects(
    wrongKey.embeddings.create({ model: MODEL, input: "a" }),
    OpenAI.AuthenticationError,
  );
});

pythonClientTest(
  "serve clients: Python tritonclient[http] on the v2 routes gets the pipeline's embeddings",
  async (python, server) => {
    const expected = await libraryEmbeddings(await loaded(server.url), TEXTS, {
      maxLength: MAX_LENGTH,
    });
    const [hello] = await libraryEmbeddings(await loaded(server.url), ["hello world"], {
      maxLength: MAX_LENGTH,
    });
    const seen = await clientScript(python, "serve_clients_triton.py", {
      url: server.url.replace(/^http:\/\//, ""),
      model: MODEL,
      texts: TEXTS,
      ids: [[101, 7592, 2088, 102, 0], [101, 7592, 2088, 102, 0]],
      mask: [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]],
    });
    assert.equal(seen.live, true);
    assert.equal(seen.ready, true);
    assert.equal(seen.model_ready, true);
    assert.equal(seen.metadata.name, MODEL);
    assert.equal(seen.config.max_batch_size, 32);
    assert.equal(seen.binary_id, "bin-1");
    for (const key of ["binary", "json"]) {
      const rows = seen[key] as number[][];
      assert.equal(rows.length, TEXTS.length);
      rows.forEach((row, i) => {
        const diff = maxAbsDiff(row, expected[i]);
        assert.ok(diff <= TOLERANCE, `${key} text ${i}: max abs diff ${diff}`);
      });
    }
    for (const row of seen.tokens as number[][]) {
      assert.ok(maxAbsDiff(row, hello) <= TOLERANCE, "token ids [CLS] hello world [SEP]");
    }
    assert.equal(seen.errors.unknown_model.status, "404");
    assert.match(seen.errors.unknown_model.message, /no-such-model/);
    assert.equal(seen.errors.unknown_input.status, "400");
    assert.match(seen.errors.unknown_input.message, /Unknown input "txt"/);
  },
);

pythonClientTest(
  "serve clients: Python tei-client on the TEI routes (/embed, /embed_all, /tokenize, ...)",
  async (python, server) => {
    const model = await loaded(server.url);
    const expected = await libraryEmbeddings(model, TEXTS, { maxLength: MAX_LENGTH });
    using pipe = await buildPipeline("feature-extraction", model, {
      kernel: "auto",
      maxLength: MAX_LENGTH,
      tokenizer: null,
    }) as FeatureExtractionPipeline;
    const raw = await pipe(TEXTS, { pooling: "mean", normalize: false });
    const long = "many words in a long text that goes on ".repeat(40) + "and the end";
    const ids = pipe.tokenizer.encode(TEXTS[0]).ids;
    const seen = await teiClient(python, {
      mode: "embedding",
      url: server.url,
      texts: TEXTS,
      long,
      ids,
    });
    assert.equal(seen.health, true);
    assert.equal(seen.info.model_type, "embedding");
    assert.deepEqual(seen.info.model_metadata, { pooling: "mean" });
    assert.equal(seen.info.max_input_length, MAX_LENGTH);
    const h = pipe.config.hiddenSize;
    (seen.embed as number[][]).forEach((row, i) => {
      assert.ok(maxAbsDiff(row, expected[i]) <= TOLERANCE, `embed ${i}`);
      assert.ok(maxAbsDiff(seen.embed_raw[i], raw.data.subarray(i * h, (i + 1) * h)) <= 1e-4);
    });
    // /embed_all: one vector per token of the text, special tokens included.
    const first = pipe.tokenizer.encode(TEXTS[0]);
    assert.equal(seen.embed_all[0].length, first.ids.length);
    assert.equal(seen.embed_all[0][0].length, h);
    const tokens = pipe.encoder.forward({
      inputIds: Int32Array.from(first.ids),
      attentionMask: new Int32Array(first.ids.length).fill(1),
      tokenTypeIds: Int32Array.from(first.typeIds),
      batch: 1,
      seq: first.ids.length,
    });
    assert.ok(maxAbsDiff(seen.embed_all[0].flat(), tokens) <= 1e-4, "embed_all token vectors");
    const tokenized = seen.tokenize[0].tokens as {
      id: number;
      special: boolean;
      text: string;
      start: number | null;
      stop: number | null;
    }[];
    for (const t of tokenized) {
      if (t.special) assert.equal(t.start, null);
      else assert.equal(TEXTS[0].slice(t.start!, t.stop!), t.text, `token ${t.id} offsets`);
    }
    assert.deepEqual(tokenized.map((t) => t.id), ids);
    assert.deepEqual(
      tokenized.map((t) => t.special),
      ids.map((_, i) => i === 0 || i === ids.length - 1),
    );
    assert.deepEqual(seen.decode, [pipe.tokenizer.decode(ids)]);
    assert.deepEqual(seen.prompt_names, []);
    // Truncation: an error by default, TEI's body; left and right keep different ends.
    assert.equal(seen.too_long.error_type, "Validation");
    assert.match(seen.too_long.error, /over the limit of 128 tokens/);
    const cut = (side: "left" | "right") => {
      const enc = pipe.tokenizer.encode(long, {
        truncation: true,
        truncationSide: side,
        maxLength: MAX_LENGTH,
      });
      return enc.ids;
    };
    const [left, right] = [cut("left"), cut("right")];
    assert.notDeepEqual(left, right);
    const expectLeft = await libraryEmbeddings(model, [pipe.tokenizer.decode(left)], {
      maxLength: MAX_LENGTH,
    });
    assert.ok(maxAbsDiff(seen.left[0], expectLeft[0]) <= 1e-3, "left truncation keeps the end");
    assert.ok(maxAbsDiff(seen.left[0], seen.right[0]) > 1e-3, "left and right differ");
    assert.equal(seen.bad_dimensions.status, 400);
    assert.equal(seen.bad_dimensions.body.error_type, "Validation");
  },
);

Deno.test({
  name:
    "serve clients: tei-client /rerank on a one-label cross-encoder and /predict on a classifier",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const python = await ensureServeClients();
    const tokenizer = new URL("../.cache/models/all-minilm-l6-v2/tokenizer.json", import.meta.url)
      .pathname;
    const texts = [
      "Berlin is the capital of Germany.",
      "Bananas are yellow.",
      "Paris is in France.",
    ];
    const query = "What is the capital of Germany?";
    for (const labels of [1, 3]) {
      const { path } = await ensureTestModel({
        preset: "bert-mini",
        task: "text-classification",
        numLabels: labels,
        config: { numLayers: 1, vocabSize: 30522 },
        seed: 40 + labels,
      });
      const server = await spawnServer({
        config: {
          models: [{
            name: "head",
            task: "text-classification",
            model: path,
            tokenizer,
            maxLength: 64,
          }],
        },
      });
      try {
        using pipe = await buildPipeline("text-classification", path, {
          kernel: "auto",
          maxLength: 64,
          tokenizer,
        }) as TextClassificationPipeline;
        if (labels === 1) {
          const seen = await teiClient(python, { mode: "reranker", url: server.url, query, texts });
          assert.equal(seen.info.model_type, "reranker");
          const scores = await pipe(
            texts.map((t) => ({ text: query, textPair: t })),
          ) as ClassificationResult[];
          const order = [...scores.keys()].sort((a, b) => scores[b].score - scores[a].score);
          assert.deepEqual(seen.rerank.map((r: { index: number }) => r.index), order);
          for (const r of seen.rerank as { index: number; score: number; text: string }[]) {
            assert.ok(Math.abs(r.score - scores[r.index].score) < 1e-5, `rerank score ${r.index}`);
            assert.equal(r.text, texts[r.index]);
            assert.ok(r.score > 0 && r.score < 1, "a sigmoid score");
          }
          for (const r of seen.rerank_raw as { index: number; score: number }[]) {
            assert.ok(Math.abs(r.score - scores[r.index].logit) < 1e-4, `raw score ${r.index}`);
          }
        } else {
          const seen = await teiClient(python, { mode: "classifier", url: server.url, texts });
          assert.equal(seen.info.model_type, "classifier");
          const all = await pipe(texts, { topK: labels }) as ClassificationResult[][];
          (seen.predict as { label: string; score: number }[][]).forEach((row, i) => {
            assert.deepEqual(row.map((s) => s.label), all[i].map((s) => s.label));
            row.forEach((s, j) => assert.ok(Math.abs(s.score - all[i][j].score) < 1e-5));
          });
          const pair = await pipe({ text: texts[0], textPair: texts[1] }, {
            topK: labels,
          }) as ClassificationResult[];
          const rawPair = seen.predict_pair[0] as { label: string; score: number }[];
          for (const s of rawPair) {
            const want = pair.find((p) => p.label === s.label)!;
            assert.ok(Math.abs(s.score - want.logit) < 1e-4, `pair logit ${s.label}`);
          }
        }
      } finally {
        await server.stop();
      }
    }
  },
});

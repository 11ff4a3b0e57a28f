// Real clients against the real server: the `openai` npm client on /v1/embeddings and Python's
// `tritonclient[http]` (PyPI, venv set up by tools/serve_clients_setup.ts) on the KServe v2
// routes. Their results must equal the library's feature-extraction pipeline.
import assert from "node:assert/strict";
import OpenAI from "openai";
import { spawnServer } from "../serve/spawn.ts";
import { ensureServeClients } from "../tools/serve_clients_setup.ts";
import { libraryEmbeddings } from "./serve_expected.ts";
import { maxAbsDiff } from "./serve_helpers.ts";

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

Deno.test({
  name: "serve clients: the openai npm client gets the pipeline's embeddings",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const server = await spawnServer({ config, env: { SPARSEBERT_API_KEY: "client-key" } });
    try {
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
    } finally {
      await server.stop();
    }
  },
});

Deno.test({
  name: "serve clients: Python tritonclient[http] on the v2 routes gets the pipeline's embeddings",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const python = await ensureServeClients();
    const server = await spawnServer({ config });
    try {
      const expected = await libraryEmbeddings(await loaded(server.url), TEXTS, {
        maxLength: MAX_LENGTH,
      });
      const [hello] = await libraryEmbeddings(await loaded(server.url), ["hello world"], {
        maxLength: MAX_LENGTH,
      });
      const script = new URL("./serve_clients_triton.py", import.meta.url).pathname;
      const child = new Deno.Command(python, {
        args: [script],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const writer = child.stdin.getWriter();
      await writer.write(new TextEncoder().encode(JSON.stringify({
        url: server.url.replace(/^http:\/\//, ""),
        model: MODEL,
        texts: TEXTS,
        ids: [[101, 7592, 2088, 102, 0], [101, 7592, 2088, 102, 0]],
        mask: [[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]],
      })));
      await writer.close();
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.ok(out.success, `tritonclient script failed:\n${stderr}`);
      const seen = JSON.parse(new TextDecoder().decode(out.stdout));
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
    } finally {
      await server.stop();
    }
  },
});

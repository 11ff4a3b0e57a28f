// The server over real HTTP on a free loopback port, with the real MiniLM model: protocols,
// results equal to the library's pipeline, every bad input a 4xx JSON error, overload with
// Retry-After and recovery, health during a long batch, disconnects, auth, graceful shutdown.
import assert from "node:assert/strict";
import type {
  QuestionAnsweringPipeline,
  TextClassificationPipeline,
  TokenClassificationPipeline,
} from "../pipelines/pipeline.ts";
import { buildPipeline } from "../serve/pipeline_backend.ts";
import { type SpawnedServer, spawnServer } from "../serve/spawn.ts";
import { libraryEmbeddings } from "./serve_expected.ts";
import {
  bytesTensor,
  decodeBase64F32,
  expectError,
  httpRequest,
  maxAbsDiff,
  post,
  rawHttp,
  serverTest,
  v2TextBody,
} from "./serve_helpers.ts";

const MODEL = "minilm";
const TEXTS = [
  "Sparse encoders run fast on small CPUs.",
  "hello",
  "The server merges requests that arrive together into one batch, grouped by length.",
  "Ünïcödé text, emoji 🙂 and CJK 日本語 are tokenized too.",
];
// Embeddings equal the pipeline's up to float summation order across different paddings.
const TOLERANCE = 2e-5;

function baseConfig(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    limits: {
      maxBodyBytes: 256 * 1024,
      maxInputs: 32,
      maxTextChars: 4000,
      bodyTimeoutMs: 1500,
      queueTimeoutMs: 30_000,
    },
    models: [{
      name: MODEL,
      model: "all-minilm-l6-v2-q",
      fallback: "all-minilm-l6-v2",
      maxLength: 128,
      maxBatch: 16,
      maxWaitMs: 5,
      maxQueue: 512,
      ...extra,
    }],
  };
}

async function json(response: Response): Promise<Record<string, unknown>> {
  const text = await response.text();
  assert.equal(response.status, 200, `expected 200, got ${response.status}: ${text}`);
  return JSON.parse(text);
}

async function loadedModel(server: SpawnedServer): Promise<string> {
  const meta = await json(await fetch(`${server.url}/v2/models/${MODEL}`));
  return (meta.parameters as Record<string, string>).model;
}

const opts = { sanitizeOps: false, sanitizeResources: false };

Deno.test({
  name: "serve: protocols, results and bad inputs against the real model",
  ...opts,
  fn: async (t) => {
    const server = await spawnServer({ config: baseConfig() });
    try {
      const url = server.url;
      const loaded = await loadedModel(server);
      const expected = await libraryEmbeddings(loaded, TEXTS, { maxLength: 128 });

      await t.step("health, metadata, model list, docs, openapi, metrics", async () => {
        assert.deepEqual(await json(await fetch(`${url}/v2/health/live`)), { live: true });
        assert.deepEqual(await json(await fetch(`${url}/v2/health/ready`)), { ready: true });
        assert.deepEqual(await json(await fetch(`${url}/v2/models/${MODEL}/ready`)), {
          name: MODEL,
          ready: true,
        });
        const meta = await json(await fetch(`${url}/v2/models/${MODEL}/versions/1`));
        assert.equal(meta.name, MODEL);
        const outputs = meta.outputs as { name: string; shape: number[] }[];
        assert.deepEqual(outputs[0], { name: "embedding", datatype: "FP32", shape: [-1, 384] });
        const config = await json(await fetch(`${url}/v2/models/${MODEL}/config`));
        assert.equal(config.max_batch_size, 16);
        const list = await json(await fetch(`${url}/v1/models`));
        assert.ok((list.data as { id: string }[]).some((m) => m.id === MODEL));
        const api = await json(await fetch(`${url}/openapi.json`));
        assert.equal(api.openapi, "3.1.0");
        for (const path of ["/v1/embeddings", "/v2/models/{name}/infer", "/metrics"]) {
          assert.ok(path in (api.paths as object), `openapi.json lacks ${path}`);
        }
        const docs = await fetch(`${url}/docs`);
        assert.match(await docs.text(), /sparsebert server/);
        assert.match(docs.headers.get("content-type")!, /text\/html/);
        const metrics = await (await fetch(`${url}/metrics`)).text();
        for (
          const name of [
            "sparsebert_requests_total",
            "sparsebert_request_duration_seconds_bucket",
            "sparsebert_queue_depth",
            "process_resident_memory_bytes",
          ]
        ) assert.match(metrics, new RegExp(name));
      });

      await t.step("POST /v1/embeddings equals the pipeline (float and base64)", async () => {
        const body = await json(await post(`${url}/v1/embeddings`, { model: MODEL, input: TEXTS }));
        assert.equal(body.object, "list");
        const data = body.data as { index: number; embedding: number[] }[];
        assert.equal(data.length, TEXTS.length);
        data.forEach((d, i) => {
          assert.equal(d.index, i);
          const diff = maxAbsDiff(d.embedding, expected[i]);
          assert.ok(diff <= TOLERANCE, `text ${i}: max abs diff ${diff}`);
        });
        const usage = body.usage as { prompt_tokens: number };
        assert.ok(usage.prompt_tokens >= TEXTS.length * 3);
        const b64 = await json(
          await post(`${url}/v1/embeddings`, {
            model: MODEL,
            input: TEXTS[2],
            encoding_format: "base64",
          }),
        );
        const vector = decodeBase64F32((b64.data as { embedding: string }[])[0].embedding);
        assert.ok(maxAbsDiff(vector, expected[2]) <= TOLERANCE);
        // A single string and no model field (the default embedding model).
        const single = await json(await post(`${url}/v1/embeddings`, { input: TEXTS[1] }));
        const e = (single.data as { embedding: number[] }[])[0].embedding;
        assert.ok(maxAbsDiff(e, expected[1]) <= TOLERANCE);
      });

      await t.step("concurrent requests are batched together and answered correctly", async () => {
        const before = await (await fetch(`${url}/metrics`)).text();
        const responses = await Promise.all(
          Array.from(
            { length: 24 },
            (_, i) =>
              post(`${url}/v1/embeddings`, { model: MODEL, input: TEXTS[i % TEXTS.length] }),
          ),
        );
        for (const [i, r] of responses.entries()) {
          const body = await json(r);
          const e = (body.data as { embedding: number[] }[])[0].embedding;
          const diff = maxAbsDiff(e, expected[i % TEXTS.length]);
          assert.ok(diff <= TOLERANCE, `request ${i}: diff ${diff}`);
        }
        const after = await (await fetch(`${url}/metrics`)).text();
        const sum = (text: string, name: string) =>
          Number(new RegExp(`^${name}\\{model="${MODEL}"\\} (\\S+)$`, "m").exec(text)?.[1] ?? 0);
        const batches = sum(after, "sparsebert_batch_size_count") -
          sum(before, "sparsebert_batch_size_count");
        const inputs = sum(after, "sparsebert_batch_size_sum") -
          sum(before, "sparsebert_batch_size_sum");
        assert.equal(inputs, 24);
        assert.ok(batches < 24, `24 concurrent requests ran as ${batches} batches (no batching)`);
      });

      await t.step("KServe v2 infer: JSON BYTES, INT64 tokens and binary tensors", async () => {
        const infer = `${url}/v2/models/${MODEL}/infer`;
        const r = await json(
          await post(infer, {
            id: "req-1",
            inputs: [{ name: "text", shape: [TEXTS.length], datatype: "BYTES", data: TEXTS }],
          }),
        );
        assert.equal(r.id, "req-1");
        assert.equal(r.model_name, MODEL);
        const out = (r.outputs as { name: string; shape: number[]; data: number[] }[])[0];
        assert.deepEqual(out.shape, [TEXTS.length, 384]);
        for (let i = 0; i < TEXTS.length; i++) {
          const diff = maxAbsDiff(out.data.slice(i * 384, (i + 1) * 384), expected[i]);
          assert.ok(diff <= TOLERANCE, `v2 text ${i}: diff ${diff}`);
        }
        // The same texts as token ids, padded, with a mask: same embeddings.
        const tokens = await json(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: [[101, 7592, 102]] }),
        );
        const viaTokens = (tokens.data as { embedding: number[] }[])[0].embedding;
        const ids = [[101, 7592, 102, 0, 0], [101, 7592, 2088, 999, 102]];
        const mask = [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]];
        const t2 = await json(
          await post(infer, {
            inputs: [
              { name: "input_ids", shape: [2, 5], datatype: "INT64", data: ids },
              { name: "attention_mask", shape: [2, 5], datatype: "INT64", data: mask.flat() },
            ],
          }),
        );
        const data = (t2.outputs as { data: number[] }[])[0].data;
        assert.ok(maxAbsDiff(data.slice(0, 384), viaTokens) <= TOLERANCE);
        assert.ok(maxAbsDiff(data.slice(0, 384), expected[1]) <= TOLERANCE, "[CLS] hello [SEP]");
        // Binary tensor extension both ways.
        const { body, headerLength } = v2TextBody(bytesTensor(TEXTS.slice(0, 2)), {
          rows: 2,
          outputs: [{ name: "embedding", parameters: { binary_data: true } }],
        });
        const br = await post(infer, body, {
          "inference-header-content-length": String(headerLength),
          "content-type": "application/octet-stream",
        });
        assert.equal(br.status, 200);
        const length = Number(br.headers.get("inference-header-content-length"));
        const bytes = new Uint8Array(await br.arrayBuffer());
        const head = JSON.parse(new TextDecoder().decode(bytes.subarray(0, length)));
        assert.equal(head.outputs[0].parameters.binary_data_size, 2 * 384 * 4);
        const floats = new Float32Array(bytes.slice(length).buffer);
        assert.ok(maxAbsDiff(floats.subarray(0, 384), expected[0]) <= TOLERANCE);
        assert.ok(maxAbsDiff(floats.subarray(384), expected[1]) <= TOLERANCE);
      });

      await t.step("limits: 422 quoting the limit, or truncation when asked", async () => {
        const long = "word ".repeat(300);
        const e = await expectError(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: ["ok", long] }),
          422,
          { param: "input[1]" },
        );
        assert.match(e.message, /302 tokens, over the limit of 128 tokens/);
        const cut = await json(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: long, truncate: true }),
        );
        assert.equal((cut.usage as { prompt_tokens: number }).prompt_tokens, 128);
        const [truncated] = await libraryEmbeddings(loaded, [long], {
          maxLength: 128,
          truncation: true,
        });
        const got = (cut.data as { embedding: number[] }[])[0].embedding;
        assert.ok(maxAbsDiff(got, truncated) <= TOLERANCE, "truncated embedding != pipeline");
        await expectError(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: "x".repeat(4001) }),
          422,
          { param: "input", match: /over the limit of 4000/ },
        );
        await expectError(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: new Array(33).fill("a") }),
          422,
          { param: "input", match: /over the limit of 32 per request/ },
        );
        await expectError(
          await post(`${url}/v1/embeddings`, { model: MODEL, input: ["y".repeat(300_000)] }),
          413,
          { match: /over the limit of 262144 bytes/ },
        );
      });

      await t.step("every bad input gets a 4xx JSON error naming the field", async () => {
        const e = `${url}/v1/embeddings`;
        const v2 = `${url}/v2/models/${MODEL}/infer`;
        await expectError(
          await post(e, '{"input": "a"', { "content-type": "application/json" }),
          400,
          { match: /not valid JSON/ },
        );
        await expectError(await post(e, "", { "content-type": "application/json" }), 400);
        await expectError(await post(e, [1, 2]), 400);
        await expectError(await post(e, { input: 5 }), 400, { param: "input" });
        await expectError(await post(e, { input: ["a", 7] }), 400, { param: "input[1]" });
        await expectError(await post(e, { input: [] }), 400, { param: "input" });
        await expectError(await post(e, {}), 400, { param: "input" });
        await expectError(await post(e, { input: "a", model: 3 }), 400, { param: "model" });
        await expectError(await post(e, { input: "a", model: "nope" }), 404, { param: "model" });
        await expectError(await post(e, { input: "a", encoding_format: "hex" }), 400, {
          param: "encoding_format",
        });
        for (const dimensions of [0, 385, 1.5, "12"]) {
          await expectError(await post(e, { input: "a", dimensions }), 400, {
            param: "dimensions",
          });
        }
        await expectError(await post(e, { input: "a", truncate: "yes" }), 400, {
          param: "truncate",
        });
        await expectError(await post(e, { input: "a", temperature: 0 }), 400, {
          param: "temperature",
        });
        await expectError(await post(e, { input: [101, 99999999, 102] }), 400, {
          param: "input[1]",
        });
        await expectError(await post(e, { input: [101, 1.5] }), 400, { param: "input[1]" });
        await expectError(
          await post(e, JSON.stringify({ input: "a" }), { "content-type": "text/plain" }),
          415,
          { param: "content-type" },
        );
        await expectError(
          await post(e, JSON.stringify({ input: "a" }), {
            "content-type": "application/json; charset=latin1",
          }),
          415,
        );
        const badUtf8 = new Uint8Array([
          ...new TextEncoder().encode('{"input": "a'),
          0xff,
          0xc3,
          0x22,
          0x7d,
        ]);
        await expectError(await post(e, badUtf8, { "content-type": "application/json" }), 400, {
          match: /UTF-8/,
        });
        await expectError(
          await post(e, "[".repeat(200_000), { "content-type": "application/json" }),
          400,
        );
        await expectError(
          await post(e, JSON.stringify({ input: "a" }), {
            "content-type": "application/json",
            "content-encoding": "gzip",
          }),
          415,
          { param: "content-encoding" },
        );
        await expectError(await fetch(e), 405);
        await expectError(await fetch(`${url}/v1/nothing`), 404);
        await expectError(await post(`${url}/v2/models/nope/infer`, {}), 404, { param: "name" });
        await expectError(await post(`${url}/v2/models/${MODEL}/versions/7/infer`, {}), 404, {
          param: "version",
        });
        await expectError(await post(v2, {}), 400, { param: "inputs" });
        await expectError(
          await post(v2, {
            inputs: [{ name: "text", shape: [2], datatype: "BYTES", data: ["a"] }],
          }),
          400,
          { param: "text.data" },
        );
        await expectError(
          await post(v2, { inputs: [{ name: "text", shape: [1], datatype: "FP16", data: ["a"] }] }),
          400,
          { param: "text.datatype" },
        );
        await expectError(
          await post(v2, { inputs: [{ name: "txt", shape: [1], datatype: "BYTES", data: ["a"] }] }),
          400,
          { param: "txt" },
        );
        await expectError(
          await post(v2, { inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: [3] }] }),
          400,
          { param: "text.data" },
        );
        await expectError(
          await post(v2, {
            inputs: [{ name: "text", shape: "1", datatype: "BYTES", data: ["a"] }],
          }),
          400,
          { param: "text.shape" },
        );
        await expectError(
          await post(v2, {
            inputs: [{ name: "input_ids", shape: [1, 2], datatype: "INT64", data: [101, -4] }],
          }),
          400,
          { param: "input_ids[0][1]" },
        );
        await expectError(
          await post(v2, {
            inputs: [{ name: "input_ids", shape: [1, 2], datatype: "INT64", data: [101, 102] }, {
              name: "attention_mask",
              shape: [1, 3],
              datatype: "INT64",
              data: [1, 1, 1],
            }],
          }),
          400,
          { param: "attention_mask.shape" },
        );
        await expectError(
          await post(v2, {
            inputs: [{ name: "text", shape: [1], datatype: "BYTES", data: ["a"] }],
            outputs: [{ name: "logits" }],
          }),
          400,
          { param: "outputs" },
        );
        const short = v2TextBody(new Uint8Array([9, 0, 0, 0, 104]), { declaredSize: 50 });
        const blob = short.body;
        await expectError(
          await post(v2, blob, { "inference-header-content-length": String(short.headerLength) }),
          400,
          { match: /binary_data_size 50/ },
        );
        await expectError(
          await post(v2, blob, { "inference-header-content-length": "99999" }),
          400,
        );
        // The server still answers correctly afterwards.
        const ok = await json(await post(e, { input: TEXTS[0] }));
        assert.ok(
          maxAbsDiff((ok.data as { embedding: number[] }[])[0].embedding, expected[0]) <= TOLERANCE,
        );
      });

      await t.step("truncated bodies, disconnects and non-HTTP bytes do not hurt", async () => {
        const body = JSON.stringify({ input: TEXTS[0] });
        const partial = await rawHttp(
          server.port,
          httpRequest("POST", "/v1/embeddings", body, { "content-type": "application/json" }, 4000),
          { timeoutMs: 10_000 },
        );
        assert.match(partial ?? "", /^HTTP\/1\.1 408/, `slow body: ${partial}`);
        const big = JSON.stringify({ input: new Array(32).fill(TEXTS[2]) });
        for (let i = 0; i < 5; i++) {
          await rawHttp(server.port, httpRequest("POST", "/v1/embeddings", big, {}), {
            closeAfterWrite: true,
          });
          const req = httpRequest("POST", "/v1/embeddings", big, {});
          await rawHttp(server.port, req.subarray(0, req.length >> 1), { closeAfterWrite: true });
        }
        const garbage = await rawHttp(
          server.port,
          new TextEncoder().encode("\x16\x03\x01\x00 nonsense\r\n\r\n"),
          { timeoutMs: 3000 },
        );
        assert.ok(garbage === null || /^HTTP\/1\.1 4\d\d/.test(garbage), `garbage: ${garbage}`);
        assert.deepEqual(await json(await fetch(`${url}/v2/health/live`)), { live: true });
        const ok = await json(await post(`${url}/v1/embeddings`, { input: TEXTS[3] }));
        assert.ok(
          maxAbsDiff((ok.data as { embedding: number[] }[])[0].embedding, expected[3]) <= TOLERANCE,
        );
        const metrics = await (await fetch(`${url}/metrics`)).text();
        assert.doesNotMatch(metrics, /status="5\d\d"/, "no 5xx may have been answered");
      });

      await t.step("health answers while a long batch runs", async () => {
        const long = "many words in a fairly long sentence ".repeat(20);
        const started = performance.now();
        let inferenceDone = 0;
        const inference = post(`${url}/v1/embeddings`, {
          input: new Array(32).fill(long),
          truncate: true,
        }).then(async (r) => {
          await r.arrayBuffer();
          inferenceDone = performance.now();
          return r.status;
        });
        await new Promise((r) => setTimeout(r, 50));
        const health = await fetch(`${url}/v2/health/ready`);
        await health.arrayBuffer();
        const h1 = performance.now();
        assert.equal(await inference, 200);
        assert.equal(health.status, 200);
        assert.ok(
          inferenceDone === 0 || h1 < inferenceDone,
          `health (${Math.round(h1 - started)} ms) waited for the batch (${
            Math.round(inferenceDone - started)
          } ms)`,
        );
      });

      await t.step("one JSON log line per request with an id", async () => {
        const r = await fetch(`${url}/v2/health/live`, { headers: { "x-request-id": "trace-42" } });
        await r.arrayBuffer();
        assert.equal(r.headers.get("x-request-id"), "trace-42");
        await new Promise((r) => setTimeout(r, 100));
        const line = server.logs.find((l) => l.id === "trace-42");
        assert.ok(line, "no log line for the request");
        assert.equal(line.status, 200);
        assert.equal(line.route, "/v2/health/live");
        assert.equal(typeof line.ms, "number");
        const inference = server.logs.filter((l) =>
          l.route === "/v1/embeddings" && l.status === 200
        );
        assert.ok(
          inference.length > 0 &&
            inference.every((l) => typeof l.id === "string" && typeof l.tokens === "number"),
        );
      });
    } finally {
      const status = await server.stop();
      assert.equal(status.code, 0, "the server must exit cleanly on SIGTERM");
    }
  },
});

serverTest("serve: overload answers 429 with Retry-After and the server recovers", {
  config: baseConfig({ maxQueue: 8, maxBatch: 4, maxWaitMs: 2 }),
}, async (server) => {
  const input = new Array(4).fill("overload ".repeat(40));
  const responses = await Promise.all(
    Array.from({ length: 40 }, () => post(`${server.url}/v1/embeddings`, { input })),
  );
  const statuses = new Map<number, number>();
  for (const r of responses) {
    statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    if (r.status === 429) {
      assert.equal(r.headers.get("retry-after"), "1");
      await expectError(r, 429, { match: /overloaded/ });
    } else {
      await r.arrayBuffer();
    }
  }
  assert.ok((statuses.get(429) ?? 0) > 0, `no 429 among ${JSON.stringify([...statuses])}`);
  assert.ok((statuses.get(200) ?? 0) > 0, "some requests must still be served");
  assert.deepEqual([...statuses.keys()].filter((s) => s !== 200 && s !== 429), []);
  const after = await json(await post(`${server.url}/v1/embeddings`, { input: "calm again" }));
  assert.equal((after.data as unknown[]).length, 1);
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  assert.match(metrics, /sparsebert_queue_depth\{model="minilm"\} 0/);
  assert.match(metrics, /sparsebert_rejected_total\{reason="queue_full"\} [1-9]/);
});

serverTest("serve: bearer auth with SPARSEBERT_API_KEY (health stays open)", {
  config: baseConfig(),
  env: { SPARSEBERT_API_KEY: "s3cret-token" },
}, async (server) => {
  const live = await fetch(`${server.url}/v2/health/live`);
  assert.equal(live.status, 200);
  await live.arrayBuffer();
  const missing = await post(`${server.url}/v1/embeddings`, { input: "a" });
  assert.equal(missing.headers.get("www-authenticate"), 'Bearer realm="sparsebert"');
  await expectError(missing, 401, { match: /Authorization/ });
  await expectError(
    await post(`${server.url}/v1/embeddings`, { input: "a" }, { authorization: "Bearer nope" }),
    401,
  );
  await expectError(await fetch(`${server.url}/v2/models/${MODEL}`), 401);
  const ok = await post(`${server.url}/v1/embeddings`, { input: "a" }, {
    authorization: "Bearer s3cret-token",
  });
  assert.equal(ok.status, 200);
  await ok.arrayBuffer();
});

Deno.test({
  name: "serve: SIGTERM finishes the request in flight, then exits 0",
  ...opts,
  fn: async () => {
    const server = await spawnServer({ config: baseConfig() });
    const long = "a sentence that takes a while to embed ".repeat(10);
    const inflight = post(`${server.url}/v1/embeddings`, {
      input: new Array(32).fill(long),
      truncate: true,
    });
    await new Promise((r) => setTimeout(r, 50));
    const stopped = server.stop();
    const response = await inflight;
    const body = await json(response);
    assert.equal((body.data as unknown[]).length, 32);
    const status = await stopped;
    assert.equal(status.code, 0);
    assert.ok(server.logs.some((l) => l.event === "stopped" && l.outcome === "done"));
  },
});

Deno.test({
  name: "serve: a bad configuration fails start-up with a clear message",
  ...opts,
  fn: async () => {
    await assert.rejects(
      spawnServer({
        config: { models: [{ model: "all-minilm-l6-v2", maxBatch: 0 }] },
        inheritStderr: false,
      }),
      /exited with code 2/,
    );
    await assert.rejects(
      spawnServer({
        config: { models: [{ model: "/nonexistent/model.onnx" }] },
        inheritStderr: false,
      }),
      /exited with code 1/,
    );
  },
});

async function writeTaskModel(dir: string, task: string, extra: string[] = []): Promise<string> {
  const out = `${dir}/${task}.onnx`;
  const writer = new URL("./fixtures/write_test_model.ts", import.meta.url).pathname;
  const result = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      writer,
      "--preset",
      "bert-mini",
      "--layers",
      "2",
      "--task",
      task,
      "--seed",
      "7",
      "--out",
      out,
      "--json",
      ...extra,
    ],
    stdout: "null",
    stderr: "piped",
  }).output();
  assert.ok(result.success, new TextDecoder().decode(result.stderr));
  return out;
}

Deno.test({
  name: "serve: task endpoints (classification, QA, token classification) equal the pipelines",
  ...opts,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "sparsebert-serve-tasks-" });
    const tokenizer = new URL("../.cache/models/all-minilm-l6-v2/tokenizer.json", import.meta.url)
      .pathname;
    const cls = await writeTaskModel(dir, "text-classification", ["--num-labels", "3"]);
    const qa = await writeTaskModel(dir, "question-answering");
    const tok = await writeTaskModel(dir, "token-classification", ["--num-labels", "5"]);
    const common = { tokenizer, maxLength: 128, maxWaitMs: 2 };
    const server = await spawnServer({
      config: {
        models: [
          { name: "cls", task: "text-classification", model: cls, ...common },
          { name: "qa", task: "question-answering", model: qa, ...common },
          { name: "ner", task: "token-classification", model: tok, ...common },
        ],
      },
    });
    try {
      const url = server.url;
      const build = (
        task: "text-classification" | "question-answering" | "token-classification",
        model: string,
      ) => buildPipeline(task, model, { kernel: "auto", maxLength: 128, tokenizer });
      const texts = [
        "A fine day in the park.",
        "Terrible, awful service!",
        "Berlin is in Germany.",
      ];

      const classifier = await build("text-classification", cls) as TextClassificationPipeline;
      const expected = await classifier(texts, { topK: 3 }) as { label: string; score: number }[][];
      const r = await json(await post(`${url}/v1/text-classification`, { input: texts, top_k: 3 }));
      const data = r.data as {
        index: number;
        label: string;
        score: number;
        labels: { label: string; score: number }[];
      }[];
      data.forEach((d, i) => {
        assert.equal(d.label, expected[i][0].label);
        assert.ok(Math.abs(d.score - expected[i][0].score) < 1e-5);
        assert.deepEqual(d.labels.map((l) => l.label), expected[i].map((l) => l.label));
      });
      const v2 = await json(
        await post(`${url}/v2/models/cls/infer`, {
          inputs: [{ name: "text", shape: [3], datatype: "BYTES", data: texts }],
        }),
      );
      const labels = (v2.outputs as { name: string; data: string[] }[]).find((o) =>
        o.name === "label"
      )!;
      assert.deepEqual(labels.data, expected.map((e) => e[0].label));
      await expectError(
        await post(`${url}/v1/text-classification`, { input: "a", top_k: 4 }),
        400,
        { param: "top_k" },
      );
      await expectError(
        await post(`${url}/v1/text-classification`, { input: "a", model: "qa" }),
        404,
        { param: "model" },
      );

      const answerer = await build("question-answering", qa) as QuestionAnsweringPipeline;
      const pairs = [
        {
          question: "Where is Berlin?",
          context: "Berlin is the capital of Germany and its largest city.",
        },
        {
          question: "Who wrote it?",
          context: "The book was written by a team of engineers. ".repeat(30),
        },
      ];
      const answers = await json(await post(`${url}/v1/question-answering`, { inputs: pairs }));
      const got = answers.data as {
        answer: string;
        score: number;
        tokenStart: number;
        tokenEnd: number;
        start: number;
        end: number;
      }[];
      for (const [i, p] of pairs.entries()) {
        // Character offsets slice the context to the answer.
        assert.equal(p.context.slice(got[i].start, got[i].end), got[i].answer, `pair ${i} offsets`);
        const want = await answerer(p.question, p.context) as {
          answer: string;
          score: number;
          tokenStart: number;
          tokenEnd: number;
        };
        assert.equal(got[i].answer, want.answer);
        assert.equal(got[i].tokenStart, want.tokenStart);
        assert.equal(got[i].tokenEnd, want.tokenEnd);
        assert.ok(
          Math.abs(got[i].score - want.score) < 1e-5,
          `pair ${i}: ${got[i].score} vs ${want.score}`,
        );
      }
      const single = await json(await post(`${url}/v1/question-answering`, pairs[0]));
      assert.equal((single.data as { answer: string }[])[0].answer, got[0].answer);
      await expectError(await post(`${url}/v1/question-answering`, { question: "q" }), 400, {
        param: "context",
      });
      await expectError(
        await post(`${url}/v1/question-answering`, { question: "", context: "c" }),
        400,
        { param: "question" },
      );
      await expectError(
        await post(`${url}/v1/question-answering`, { question: "why ".repeat(70), context: "c" }),
        422,
        { param: "question" },
      );

      const tagger = await build("token-classification", tok) as TokenClassificationPipeline;
      const wantTags = await tagger(texts) as {
        entity: string;
        index: number;
        word: string;
        score: number;
      }[][];
      const tags = await json(await post(`${url}/v1/token-classification`, { input: texts }));
      const gotTags = tags.data as {
        index: number;
        entities: {
          entity: string;
          index: number;
          word: string;
          score: number;
          start: number;
          end: number;
        }[];
      }[];
      gotTags.forEach((g, i) => {
        for (const e of g.entities) {
          assert.equal(texts[i].slice(e.start, e.end).toLowerCase(), e.word.replace(/^##/, ""));
        }
        assert.deepEqual(
          g.entities.map((e) => [e.entity, e.index, e.word]),
          wantTags[i].map((e) => [e.entity, e.index, e.word]),
        );
        g.entities.forEach((e, k) => assert.ok(Math.abs(e.score - wantTags[i][k].score) < 1e-5));
      });
      await expectError(await post(`${url}/v1/embeddings`, { input: "a" }), 404, {
        param: "model",
      });
      classifier.dispose();
      answerer.dispose();
      tagger.dispose();
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** The token budget of the mixed-length batching test. */
const TOKEN_BUDGET = 256;

serverTest("serve: a mixed-length load is batched within the token budget (maxBatchTokens)", {
  config: baseConfig({ maxBatchTokens: TOKEN_BUDGET, maxBatch: 32, maxWaitMs: 20 }),
}, async (server) => {
  const word = "token ";
  const requests = Array.from(
    { length: 60 },
    (_, i) =>
      post(`${server.url}/v1/embeddings`, { input: word.repeat(1 + ((i * 37) % 110)) })
        .then(async (r) => [r.status, await r.arrayBuffer()] as const),
  );
  const results = await Promise.all(requests);
  assert.deepEqual(results.map(([status]) => status), new Array(60).fill(200));
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const count = (name: string, le: string): number =>
    Number(
      new RegExp(`${name}_bucket\\{model="${MODEL}",le="${le.replace("+", "\\+")}"\\} (\\d+)`)
        .exec(metrics)?.[1],
    );
  const total = count("sparsebert_batch_padded_tokens", "+Inf");
  assert.ok(total > 0, "no batch was recorded");
  assert.equal(
    count("sparsebert_batch_padded_tokens", String(TOKEN_BUDGET)),
    total,
    "over the budget",
  );
  assert.ok(count("sparsebert_batch_size", "1") < total, "no input was batched with another");
});

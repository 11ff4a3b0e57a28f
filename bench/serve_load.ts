/**
 * `deno task bench:serve`: a bounded load and fault run against the real server on loopback.
 *
 *   1. sequential baseline: the same requests sent one at a time;
 *   2. load: autocannon (npm) at 64 connections for 60 s (10 s with --quick);
 *   3. overload: a server with a small queue under 4x the connections with 8-input requests,
 *      then a check that it serves normally once the load stops;
 *   4. bad inputs: truncated bodies, invalid UTF-8, huge arrays, wrong content types, ...;
 *   5. clients that disconnect mid-request, then a health and an inference check;
 *   6. SIGTERM with a request in flight (it must complete; exit code 0).
 *
 * It reports 5xx counts, dropped connections (errors, timeouts, resets), embeddings/s against
 * the one-at-a-time baseline, latency percentiles, batch sizes (from /metrics) and resident
 * memory, and writes a JSON file to bench/results/.
 *
 * @module
 */
import autocannon from "autocannon";
import { type SpawnedServer, spawnServer } from "../serve/spawn.ts";
import { compareInstances, soak } from "./serve_soak.ts";
import { metricsText, metricSum, percentile, round, writeReport } from "./_serve_common.ts";
import { flagOptions, integerOption, runCommand, stringOptions } from "../tools/_command.ts";
import { httpRequest as rawRequest, rawHttp, v2TextBody } from "../tests/serve_helpers.ts";

const HELP = `Usage: deno task bench:serve [options]

Load and fault run of the server on 127.0.0.1 (every phase bounded in time and count).

Options:
  --quick            short phases (load 10 s, baseline 5 s, overload 5 s)
  --duration S       load phase seconds (default 60, quick 10)
  --connections N    load connections (default 64)
  --model NAME       registry model or .onnx file (default: the server's default model)
  --threads N        kernel threads of the server (default: the library default)
  --instances N      with --soak: worker processes of the model, each with its share of the
                     threads (default: the server's default, 1)
  --soak MINUTES     instead: a soak at 70% of measured capacity with mixed lengths (RSS,
                     p99 and errors per minute; see bench/serve_soak.ts)
  --instances-compare
                     instead: embeddings/s of one model instance against two (each a worker
                     process with its share of the cores), closed loop, 32 clients
  --json             print the JSON report instead of the summary
  --out FILE         where to write the JSON (default bench/results/<run>-<time>.json)
  -h, --help         show this help`;

const TEXTS = [
  "The quick brown fox jumps over the lazy dog.",
  "Sparse int8 encoders make CPU inference cheap.",
  "A server batches requests that arrive together.",
  "How many embeddings per second can two cores produce?",
  "Health checks must answer while a batch runs.",
  "Overload should be refused early, with a Retry-After header.",
  "Deno workers keep inference off the main event loop.",
  "Every bad input gets a clear JSON error.",
];

function count5xx(text: string): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith("sparsebert_requests_total{") && /status="5\d\d"/.test(line)) {
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return total;
}

interface PhaseResult {
  seconds: number;
  requests: number;
  ok: number;
  embeddingsPerSecond: number;
  latencyMs: { p50: number; p90: number; p99: number; max: number };
}

async function sequential(url: string, model: string, seconds: number, maxRequests: number) {
  const latencies: number[] = [];
  let ok = 0;
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  for (let i = 0; i < maxRequests && performance.now() < deadline; i++) {
    const s = performance.now();
    const r = await fetch(`${url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, input: TEXTS[i % TEXTS.length] }),
    });
    await r.arrayBuffer();
    latencies.push(performance.now() - s);
    if (r.status === 200) ok++;
  }
  const elapsed = (performance.now() - t0) / 1000;
  latencies.sort((a, b) => a - b);
  return {
    seconds: round(elapsed, 2),
    requests: latencies.length,
    ok,
    embeddingsPerSecond: round(ok / elapsed),
    latencyMs: {
      p50: round(percentile(latencies, 0.5), 2),
      p90: round(percentile(latencies, 0.9), 2),
      p99: round(percentile(latencies, 0.99), 2),
      max: round(latencies.at(-1) ?? NaN, 2),
    },
  } satisfies PhaseResult;
}

interface CannonSummary extends PhaseResult {
  connections: number;
  statusCounts: Record<string, number>;
  errors: number;
  timeouts: number;
  resets: number;
  missingRetryAfter: number;
}

async function cannon(
  url: string,
  options: { connections: number; seconds: number; bodies: string[]; inputsPerRequest: number },
): Promise<CannonSummary> {
  let missingRetryAfter = 0;
  const result = await autocannon({
    url: `${url}/v1/embeddings`,
    connections: options.connections,
    duration: options.seconds,
    timeout: 60,
    method: "POST",
    headers: { "content-type": "application/json" },
    requests: options.bodies.map((body) => ({
      method: "POST",
      body,
      onResponse: (status: number, _body: string, _context: unknown, headers: unknown) => {
        if (status !== 429 && status !== 503) return;
        const h = headers as Record<string, string> | string[] | undefined;
        let has = false;
        if (Array.isArray(h)) {
          for (let i = 0; i < h.length; i += 2) {
            if (String(h[i]).toLowerCase() === "retry-after") has = true;
          }
        } else if (h !== undefined) {
          has = Object.keys(h).some((k) => k.toLowerCase() === "retry-after");
        }
        if (!has) missingRetryAfter++;
      },
    })),
  });
  const statusCounts: Record<string, number> = {};
  for (const [code, v] of Object.entries(result.statusCodeStats ?? {})) {
    statusCounts[code] = (v as { count: number }).count;
  }
  const ok = statusCounts["200"] ?? 0;
  const seconds = options.seconds;
  return {
    connections: options.connections,
    seconds,
    requests: result.requests.total,
    ok,
    embeddingsPerSecond: round(ok * options.inputsPerRequest / seconds),
    latencyMs: {
      p50: result.latency.p50,
      p90: result.latency.p90,
      p99: result.latency.p99,
      max: result.latency.max,
    },
    statusCounts,
    errors: result.errors,
    timeouts: result.timeouts,
    resets: result.resets ?? 0,
    missingRetryAfter,
  };
}

/** Sends raw bytes over TCP; returns the status line's code (or null) and the body text. */
async function raw(
  port: number,
  request: Uint8Array,
  options: { closeAfterWrite?: boolean; timeoutMs?: number } = {},
): Promise<{ status: number | null; body: string }> {
  const text = await rawHttp(port, request, options);
  if (text === null) return { status: null, body: "" };
  const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? NaN);
  return {
    status: Number.isNaN(status) ? null : status,
    body: text.slice(text.indexOf("\r\n\r\n") + 4),
  };
}

function concat(chunks: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(chunks.reduce((s, c) => s + c.length, 0));
  let p = 0;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  return out;
}

/** A request (POST unless `method` says otherwise) with `connection: close`. */
function httpRequest(
  path: string,
  body: Uint8Array | string,
  headers: Record<string, string> = {},
  options: { contentLength?: number; method?: string } = {},
): Uint8Array {
  return rawRequest(options.method ?? "POST", path, body, headers, options.contentLength);
}

interface BadCase {
  name: string;
  status: number | null;
  jsonError: boolean;
  ok: boolean;
}

async function badInputs(server: SpawnedServer, model: string): Promise<BadCase[]> {
  const port = server.port;
  const json = { "content-type": "application/json" };
  const embed = (body: unknown) => JSON.stringify({ model, ...body as object });
  /** A v2 inference request of one input tensor holding `["a"]`. */
  const v2Infer = (input: { name: string; shape: number[]; datatype: string }) =>
    httpRequest(
      `/v2/models/${model}/infer`,
      JSON.stringify({ inputs: [{ ...input, data: ["a"] }] }),
      json,
    );
  const utf8Bad = concat([
    new TextEncoder().encode(`{"model": "${model}", "input": "abc `),
    new Uint8Array([0xff, 0xfe, 0xc3]),
    new TextEncoder().encode(`"}`),
  ]);
  // A binary body whose header claims more tensor bytes than follow.
  const v2Short = v2TextBody(new Uint8Array([5, 0, 0, 0, 104]), { declaredSize: 100 });
  const v2Blob = v2Short.body;
  const cases: [string, Uint8Array, { timeoutMs?: number }?][] = [
    ["malformed JSON", httpRequest("/v1/embeddings", `{"input": "abc"`, json)],
    ["empty body", httpRequest("/v1/embeddings", "", json)],
    ["JSON array body", httpRequest("/v1/embeddings", "[1, 2]", json)],
    ["input of wrong type", httpRequest("/v1/embeddings", embed({ input: 5 }), json)],
    ["input array of mixed types", httpRequest("/v1/embeddings", embed({ input: ["a", 3] }), json)],
    ["empty input array", httpRequest("/v1/embeddings", embed({ input: [] }), json)],
    [
      "unknown model",
      httpRequest("/v1/embeddings", JSON.stringify({ model: "nope", input: "a" }), json),
    ],
    [
      "model of wrong type",
      httpRequest("/v1/embeddings", JSON.stringify({ model: 3, input: "a" }), json),
    ],
    [
      "bad encoding_format",
      httpRequest("/v1/embeddings", embed({ input: "a", encoding_format: "hex" }), json),
    ],
    ["unknown field", httpRequest("/v1/embeddings", embed({ input: "a", temperature: 1 }), json)],
    ["invalid UTF-8", httpRequest("/v1/embeddings", utf8Bad, json)],
    [
      "wrong content type text/plain",
      httpRequest("/v1/embeddings", embed({ input: "a" }), { "content-type": "text/plain" }),
    ],
    [
      "wrong content type form",
      httpRequest("/v1/embeddings", "input=a", {
        "content-type": "application/x-www-form-urlencoded",
      }),
    ],
    [
      "wrong charset",
      httpRequest("/v1/embeddings", embed({ input: "a" }), {
        "content-type": "application/json; charset=latin1",
      }),
    ],
    [
      "huge array (too many inputs)",
      httpRequest("/v1/embeddings", embed({ input: new Array(50_000).fill("a") }), json),
    ],
    [
      "huge body (over the size limit)",
      httpRequest("/v1/embeddings", embed({ input: ["x".repeat(3 << 20)] }), json),
    ],
    ["declared huge body", httpRequest("/v1/embeddings", "{}", json, { contentLength: 1 << 30 })],
    [
      "text over the character limit",
      httpRequest("/v1/embeddings", embed({ input: "word ".repeat(20_000) }), json),
    ],
    [
      "text over the token limit",
      httpRequest("/v1/embeddings", embed({ input: "word ".repeat(2_000) }), json),
    ],
    [
      "token id outside the vocabulary",
      httpRequest("/v1/embeddings", embed({ input: [101, 99999999, 102] }), json),
    ],
    [
      "deeply nested JSON",
      httpRequest("/v1/embeddings", "[".repeat(100_000) + "]".repeat(100_000), json),
    ],
    ["GET on a POST route", httpRequest("/v1/embeddings", "", {}, { method: "GET" })],
    ["unknown route", httpRequest("/v1/nothing", "{}", json)],
    ["v2 unknown model", httpRequest("/v2/models/nope/infer", "{}", json)],
    ["v2 inputs missing", httpRequest(`/v2/models/${model}/infer`, "{}", json)],
    ["v2 shape/data mismatch", v2Infer({ name: "text", shape: [2], datatype: "BYTES" })],
    ["v2 wrong datatype", v2Infer({ name: "text", shape: [1], datatype: "FP16" })],
    ["v2 unknown input", v2Infer({ name: "txt", shape: [1], datatype: "BYTES" })],
    [
      "v2 binary size past the end",
      httpRequest(`/v2/models/${model}/infer`, v2Blob, {
        "inference-header-content-length": String(v2Short.headerLength),
      }),
    ],
    [
      "v2 header length over the body",
      httpRequest(`/v2/models/${model}/infer`, v2Blob, {
        "inference-header-content-length": "99999",
      }),
    ],
    [
      "truncated body (client waits)",
      httpRequest("/v1/embeddings", embed({ input: "a" }), json, { contentLength: 4000 }),
      { timeoutMs: 30_000 },
    ],
  ];
  const out: BadCase[] = [];
  for (const [name, request, options] of cases) {
    const r = await raw(port, request, options);
    let jsonError = false;
    try {
      const body = JSON.parse(r.body);
      jsonError = typeof body.error === "string" || typeof body.error?.message === "string";
    } catch { /* not JSON */ }
    const ok = r.status !== null && r.status >= 400 && r.status < 500 && jsonError;
    out.push({ name, status: r.status, jsonError, ok });
  }
  // Not HTTP at all: the connection must just be refused politely (400 or closed), no crash.
  const garbage = await raw(
    port,
    new TextEncoder().encode("\x16\x03\x01 definitely not http\r\n\r\n"),
  );
  out.push({
    name: "non-HTTP bytes",
    status: garbage.status,
    jsonError: false,
    ok: garbage.status === null || (garbage.status >= 400 && garbage.status < 500),
  });
  return out;
}

async function disconnects(server: SpawnedServer, model: string, rounds: number) {
  const port = server.port;
  const json = { "content-type": "application/json" };
  const big = JSON.stringify({ model, input: new Array(64).fill(TEXTS.join(" ")) });
  let attempts = 0;
  for (let i = 0; i < rounds; i++) {
    // Whole request, then gone before the answer.
    await raw(port, httpRequest("/v1/embeddings", big, json), { closeAfterWrite: true });
    // Headers only, then gone.
    await raw(port, httpRequest("/v1/embeddings", "", json, { contentLength: 500 }), {
      closeAfterWrite: true,
    });
    // Half a body, then gone.
    const half = httpRequest("/v1/embeddings", big, json);
    await raw(port, half.subarray(0, half.length >> 1), { closeAfterWrite: true });
    attempts += 3;
  }
  await new Promise((r) => setTimeout(r, 500));
  const live = await fetch(`${server.url}/v2/health/live`);
  await live.body?.cancel();
  const after = await fetch(`${server.url}/v1/embeddings`, {
    method: "POST",
    headers: json,
    body: JSON.stringify({ model, input: "still serving?" }),
  });
  await after.body?.cancel();
  return { attempts, liveAfter: live.status, inferenceAfter: after.status };
}

/** The options of {@linkcode loadRun} and {@linkcode longRun}. */
interface ServeLoadOptions {
  quick: boolean;
  soak?: string;
  instances?: string;
  threads?: string;
  model?: string;
  duration?: string;
  connections: string;
  json: boolean;
  out?: string;
}

/** `--threads` (0: the library default). */
function threadsOption(values: ServeLoadOptions): number {
  return values.threads === undefined ? 0 : integerOption("threads", values.threads, 0, 64);
}

/** What every report of this benchmark starts with: when, where and how it ran. */
function reportHeader(): Record<string, unknown> {
  return {
    date: new Date().toISOString(),
    machine: { cpus: navigator.hardwareConcurrency, deno: Deno.version.deno },
    command: `deno task bench:serve ${Deno.args.join(" ")}`.trim(),
  };
}

async function longRun(values: ServeLoadOptions): Promise<number> {
  const minutes = values.soak === undefined ? 0 : integerOption("soak", values.soak, 1, 600);
  const threads = threadsOption(values);
  const say = values.json ? () => {} : (line: string) => console.error(line);
  const result = values.soak !== undefined
    ? await soak({
      minutes,
      threads,
      model: values.model,
      instances: values.instances === undefined
        ? undefined
        : integerOption("instances", values.instances, 1, 64),
      say,
    })
    : await compareInstances({
      threads,
      seconds: Number(values.duration ?? 20),
      model: values.model,
      say,
    });
  const report = { ...reportHeader(), ...result };
  const kind = values.soak !== undefined ? "serve_soak" : "serve_instances";
  const out = await writeReport(kind, report, values.out);
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else say(`wrote ${out}`);
  return 0;
}

function main(): Promise<number> {
  const options = {
    ...stringOptions("duration", "model", "threads", "out", "soak", "instances"),
    ...flagOptions("quick", "json", "instances-compare"),
    connections: { type: "string", default: "64" },
  } as const;
  return runCommand(Deno.args, { help: HELP, parse: { options } }, ({ values }) => {
    if (values.soak !== undefined || values["instances-compare"]) return longRun(values);
    return loadRun(values);
  });
}

/** The load and fault run (phases 1 to 6). */
async function loadRun(values: ServeLoadOptions): Promise<number> {
  const quick = values.quick;
  const duration = integerOption("duration", values.duration ?? (quick ? "10" : "60"), 1, 600);
  const connections = integerOption("connections", values.connections, 1, 1024);
  const threads = threadsOption(values);
  const say = values.json ? () => {} : (line: string) => console.error(line);
  const modelEntry = values.model !== undefined
    ? [{ name: "bench", model: values.model }]
    : undefined;
  const report: Record<string, unknown> = reportHeader();

  say("Starting the server ...");
  const t0 = performance.now();
  const server = await spawnServer({
    config: {
      log: false,
      threads,
      ...(modelEntry ? { models: modelEntry } : {}),
      limits: { bodyTimeoutMs: 3000 },
    },
  });
  const model = (await (await fetch(`${server.url}/v1/models`)).json()).data[0].id as string;
  report.model = model;
  report.startSeconds = round((performance.now() - t0) / 1000, 1);
  const loaded = server.logs.find((l) => l.event === "model_loaded");
  report.loaded = loaded ?? null;
  let failures = 0;
  try {
    say(`Warm-up (${model}) ...`);
    await sequential(server.url, model, 3, 30);
    say(`Sequential baseline (${quick ? 5 : 15} s) ...`);
    const seq = await sequential(server.url, model, quick ? 5 : 15, 100_000);
    report.sequential = seq;
    say(`  ${seq.embeddingsPerSecond} embeddings/s, p99 ${seq.latencyMs.p99} ms`);

    say(`Load: ${connections} connections for ${duration} s ...`);
    const before = await metricsText(server.url);
    const bodies = TEXTS.map((t) => JSON.stringify({ model, input: t }));
    const load = await cannon(server.url, {
      connections,
      seconds: duration,
      bodies,
      inputsPerRequest: 1,
    });
    const after = await metricsText(server.url);
    const batches = metricSum(after, "sparsebert_batch_size_count") -
      metricSum(before, "sparsebert_batch_size_count");
    const batchInputs = metricSum(after, "sparsebert_batch_size_sum") -
      metricSum(before, "sparsebert_batch_size_sum");
    const server5xx = count5xx(after) - count5xx(before);
    report.load = {
      ...load,
      server5xx,
      meanBatchSize: round(batchInputs / Math.max(1, batches), 2),
      speedupOverSequential: round(load.embeddingsPerSecond / seq.embeddingsPerSecond, 2),
      residentMemoryBytes: metricSum(after, "process_resident_memory_bytes"),
    };
    say(
      `  ${load.embeddingsPerSecond} embeddings/s (${
        round(load.embeddingsPerSecond / seq.embeddingsPerSecond, 2)
      }x sequential), p99 ${load.latencyMs.p99} ms, mean batch ${
        round(batchInputs / Math.max(1, batches), 2)
      }, 5xx ${server5xx}, errors ${load.errors}, timeouts ${load.timeouts}`,
    );
    if (server5xx > 0 || load.errors > 0 || load.timeouts > 0) failures++;

    say("Bad inputs ...");
    const bad = await badInputs(server, model);
    report.badInputs = bad;
    const badFailures = bad.filter((c) => !c.ok);
    say(`  ${bad.length - badFailures.length}/${bad.length} answered 4xx with a JSON error`);
    for (const c of badFailures) say(`  NOT OK: ${c.name}: status ${c.status}`);
    failures += badFailures.length;

    say("Clients disconnecting mid-request ...");
    const gone = await disconnects(server, model, quick ? 5 : 20);
    report.disconnects = gone;
    say(
      `  ${gone.attempts} dropped requests; afterwards live ${gone.liveAfter}, inference ${gone.inferenceAfter}`,
    );
    if (gone.liveAfter !== 200 || gone.inferenceAfter !== 200) failures++;

    say("Graceful shutdown with a request in flight ...");
    const inflight = fetch(`${server.url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ model, input: new Array(32).fill(TEXTS.join(" ")) }),
    });
    await new Promise((r) => setTimeout(r, 30));
    const status = await server.stop();
    const answered = await inflight.then(async (r) => {
      await r.arrayBuffer();
      return r.status;
    }, (e) => `failed: ${(e as Error).message}`);
    report.shutdown = { exitCode: status.code, inflightStatus: answered };
    say(`  exit code ${status.code}, in-flight request answered ${answered}`);
    if (status.code !== 0 || answered !== 200) failures++;
  } finally {
    await server.stop().catch(() => {});
  }

  say("Overload: small queue, 4x connections, 8 inputs per request ...");
  const small = await spawnServer({
    config: {
      log: false,
      threads,
      models: [{
        ...(modelEntry?.[0] ??
          { name: model, model: "all-minilm-l6-v2-q", fallback: "all-minilm-l6-v2" }),
        maxQueue: 64,
        maxBatch: 16,
      }],
    },
  });
  try {
    const smallModel = (await (await fetch(`${small.url}/v1/models`)).json()).data[0].id as string;
    const rssBefore = metricSum(await metricsText(small.url), "process_resident_memory_bytes");
    const bodies = TEXTS.map((_, i) =>
      JSON.stringify({ model: smallModel, input: TEXTS.slice(i).concat(TEXTS.slice(0, i)) })
    );
    // Resident memory sampled once a second while the overload runs (bounded: one sample per
    // second for the phase's length).
    const rssSamples: number[] = [];
    let sampling = true;
    const sampler = (async () => {
      for (let i = 0; i < 120 && sampling; i++) {
        await new Promise((r) => setTimeout(r, 1000));
        if (!sampling) break;
        try {
          rssSamples.push(
            metricSum(await metricsText(small.url), "process_resident_memory_bytes"),
          );
        } catch { /* a refused scrape is counted by the server, not here */ }
      }
    })();
    const over = await cannon(small.url, {
      connections: connections * 4,
      seconds: quick ? 5 : 15,
      bodies,
      inputsPerRequest: 8,
    });
    sampling = false;
    await sampler;
    const m = await metricsText(small.url);
    const rssAfter = metricSum(m, "process_resident_memory_bytes");
    const t = performance.now();
    let recoveredMs: number | null = null;
    for (let i = 0; i < 50; i++) {
      const r = await fetch(`${small.url}/v1/embeddings`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: smallModel, input: "after the storm" }),
      });
      await r.arrayBuffer();
      if (r.status === 200) {
        recoveredMs = round(performance.now() - t, 1);
        break;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const refused = (over.statusCounts["429"] ?? 0) + (over.statusCounts["503"] ?? 0);
    report.overload = {
      ...over,
      refused,
      server5xxOther: count5xx(m) - metricSum(m, "sparsebert_requests_total", 'status="503"'),
      residentMemoryBytes: {
        before: rssBefore,
        maxDuring: Math.max(0, ...rssSamples),
        after: rssAfter,
        samples: rssSamples.length,
      },
      recoveredAfterMs: recoveredMs,
    };
    say(
      `  ${refused} refused (429/503), ${over.ok} served, of ${over.requests}; missing ` +
        `Retry-After ${over.missingRetryAfter}, errors ${over.errors}, RSS ${
          round(rssBefore / 2 ** 20)
        } -> max ${round(Math.max(0, ...rssSamples) / 2 ** 20)} -> ${
          round(rssAfter / 2 ** 20)
        } MiB, recovered in ${recoveredMs} ms`,
    );
    if (
      refused === 0 || over.missingRetryAfter > 0 || recoveredMs === null || over.errors > 0 ||
      over.timeouts > 0
    ) failures++;
  } finally {
    await small.stop();
  }

  report.failures = failures;
  const out = await writeReport("serve_load", report, values.out);
  if (values.json) console.log(JSON.stringify(report));
  else {say(
      `Report: ${out}; ${failures === 0 ? "all checks passed" : `${failures} check(s) failed`}`,
    );}
  return failures === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());

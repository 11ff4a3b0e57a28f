/**
 * The long runs of `deno task bench:serve`:
 *
 * - `--soak MINUTES`: measures capacity (closed loop, 32 clients, mixed lengths), then sends
 *   an open-loop load at 70% of it for MINUTES and reports per minute: p50/p99 latency, errors,
 *   and resident memory of the server and its workers (from /metrics); at the end, the RSS
 *   growth after a warm-up and its slope, and p99 of every minute against the first's
 *   ({@linkcode summarize}).
 * - `--instances-compare`: the same closed-loop load on one instance (all threads) and on two
 *   instances (each a worker process with its share of the cores), embeddings/s side by side.
 *
 * @module
 */
import { spawnServer } from "../serve/spawn.ts";
import { metricsText, metricSum, percentile, round } from "./_serve_common.ts";

/** Short, medium and long inputs (about 8, 40 and 120 tokens), mixed in every phase. */
const MIXED = [
  "Sparse encoders answer quickly.",
  "A server batches requests that arrive together, grouped by length, so that padding " +
  "stays small and every core stays busy while health checks keep answering.",
  ("Mixed lengths exercise the bucketed batcher: long inputs run with long ones and short " +
    "ones with short ones, and the token budget bounds every batch. ").repeat(4),
];

async function embedOnce(url: string, n: number): Promise<{ ms: number; status: number }> {
  const started = performance.now();
  try {
    const r = await fetch(`${url}/v1/embeddings`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ input: MIXED[n % MIXED.length] }),
    });
    await r.arrayBuffer();
    return { ms: performance.now() - started, status: r.status };
  } catch {
    return { ms: performance.now() - started, status: 0 };
  }
}

/** Closed loop: `clients` clients sending back to back for `seconds`; embeddings per second. */
async function capacity(url: string, clients: number, seconds: number): Promise<number> {
  const deadline = performance.now() + seconds * 1000;
  let ok = 0;
  const t0 = performance.now();
  await Promise.all(Array.from({ length: clients }, async (_, c) => {
    // Bounded by the deadline (each request ends or fails).
    for (let n = c; performance.now() < deadline; n += clients) {
      if ((await embedOnce(url, n)).status === 200) ok++;
    }
  }));
  return ok / ((performance.now() - t0) / 1000);
}

/** Resident memory of the server process and its workers, bytes. */
async function residentBytes(url: string): Promise<number> {
  const text = await metricsText(url);
  return metricSum(text, "process_resident_memory_bytes") +
    metricSum(text, "sparsebert_worker_resident_memory_bytes");
}

/** One minute of the soak. */
export interface SoakMinute {
  /** Minute number, from 1. */
  minute: number;
  /** Requests answered. */
  requests: number;
  /** Answers that were not 200 (or no answer). */
  errors: number;
  /** Latency percentiles, milliseconds. */
  p50Ms: number;
  p99Ms: number;
  /** Server + workers resident memory at the minute's end, MiB. */
  rssMiB: number;
}

/** Options of {@linkcode soak}. */
export interface SoakOptions {
  minutes: number;
  threads: number;
  model?: string;
  say: (line: string) => void;
}

/** Runs the soak; returns its report (JSON-ready). */
export async function soak(options: SoakOptions): Promise<Record<string, unknown>> {
  const server = await spawnServer({
    config: {
      log: false,
      threads: options.threads,
      ...(options.model ? { models: [{ name: "bench", model: options.model }] } : {}),
      limits: { queueTimeoutMs: 30_000 },
    },
    inheritStderr: false,
  });
  try {
    options.say("Measuring capacity (32 clients, 20 s, mixed lengths) ...");
    const measured = await capacity(server.url, 32, 20);
    const rate = 0.7 * measured;
    options.say(`capacity ${round(measured)} embeddings/s; soak at ${round(rate)}/s`);
    const minutes: SoakMinute[] = [];
    const intervalMs = 1000 / rate;
    const t0 = performance.now();
    let n = 0;
    for (let minute = 1; minute <= options.minutes; minute++) {
      const end = t0 + minute * 60_000;
      const inflight: Promise<{ ms: number; status: number }>[] = [];
      // Open loop: arrivals on a fixed schedule, whatever the answers' latency.
      while (performance.now() < end) {
        const due = t0 + n * intervalMs;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        inflight.push(embedOnce(server.url, n++));
      }
      const answers = await Promise.all(inflight);
      const latencies = answers.map((a) => a.ms).sort((a, b) => a - b);
      const row: SoakMinute = {
        minute,
        requests: answers.length,
        errors: answers.filter((a) => a.status !== 200).length,
        p50Ms: round(percentile(latencies, 0.5), 2),
        p99Ms: round(percentile(latencies, 0.99), 2),
        rssMiB: round((await residentBytes(server.url)) / 2 ** 20),
      };
      minutes.push(row);
      options.say(
        `minute ${minute}: ${row.requests} requests, ${row.errors} errors, p50 ${row.p50Ms} ms, ` +
          `p99 ${row.p99Ms} ms, RSS ${row.rssMiB} MiB`,
      );
    }
    const summary = summarize(minutes);
    options.say(
      `RSS growth after the ${summary.warmupMinutes}-minute warm-up: ` +
        `${summary.rssGrowthAfterWarmupPercent}% (slope ${summary.rssSlopeMiBPer10Minutes} ` +
        `MiB / 10 min; since minute 1: ${summary.rssGrowthSinceMinute1Percent}%); worst p99 / ` +
        `minute 1 p99: ${summary.worstP99OverFirst}x; errors: ${summary.errors}`,
    );
    return { capacityPerSecond: round(measured), ratePerSecond: round(rate), minutes, summary };
  } finally {
    await server.stop();
  }
}

/**
 * The soak's verdict figures. Warm-up: the first 5 minutes (a third of a short run), while the
 * workspaces of every batch shape and the allocator's arenas grow; RSS growth is measured from
 * its end to the last minute, with the least-squares slope over the same minutes.
 */
export function summarize(minutes: SoakMinute[]): Record<string, number> {
  const warmup = Math.max(1, Math.min(5, Math.floor(minutes.length / 3)));
  const after = minutes.slice(warmup - 1);
  const last = minutes.at(-1)!;
  const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
  const t = after.map((m) => m.minute);
  const r = after.map((m) => m.rssMiB);
  const tm = mean(t);
  const rm = mean(r);
  const den = t.reduce((s, x) => s + (x - tm) ** 2, 0);
  const slope = den === 0 ? 0 : t.reduce((s, x, i) => s + (x - tm) * (r[i] - rm), 0) / den;
  return {
    warmupMinutes: warmup,
    rssGrowthAfterWarmupPercent: round((last.rssMiB / after[0].rssMiB - 1) * 100, 2),
    rssGrowthSinceMinute1Percent: round((last.rssMiB / minutes[0].rssMiB - 1) * 100, 2),
    rssSlopeMiBPer10Minutes: round(slope * 10, 2),
    worstP99OverFirst: round(Math.max(...minutes.map((m) => m.p99Ms)) / minutes[0].p99Ms, 2),
    minutesOverP99Bound: minutes.filter((m) => m.p99Ms > 1.5 * minutes[0].p99Ms).length,
    errors: minutes.reduce((s, m) => s + m.errors, 0),
  };
}

/** Embeddings/s of one instance against two on the same machine (closed loop, 32 clients). */
export async function compareInstances(
  options: { threads: number; seconds: number; model?: string; say: (line: string) => void },
): Promise<Record<string, unknown>> {
  const rows: Record<string, unknown>[] = [];
  for (const instances of [1, 2]) {
    const server = await spawnServer({
      config: {
        log: false,
        threads: options.threads,
        models: [{ name: "bench", model: options.model ?? "all-minilm-l6-v2-q", instances }],
      },
      inheritStderr: false,
    });
    try {
      await capacity(server.url, 8, 3); // warm-up
      const perSecond = await capacity(server.url, 32, options.seconds);
      const threads = server.logs.find((l) => l.event === "model_loaded")?.threads;
      rows.push({ instances, threadsPerWorker: threads, embeddingsPerSecond: round(perSecond) });
      options.say(
        `${instances} instance(s), ${threads} kernel thread(s) each: ${
          round(perSecond)
        } embeddings/s`,
      );
    } finally {
      await server.stop();
    }
  }
  const [one, two] = rows.map((r) => r.embeddingsPerSecond as number);
  return { rows, twoOverOne: round(two / one, 2) };
}

/**
 * The long runs of `deno task bench:serve`:
 *
 * - `--soak MINUTES`: measures capacity (closed loop, 32 clients, mixed lengths, the median of
 *   five 15-s windows after a warm-up), then sends
 *   an open-loop load at 70% of it for MINUTES and reports per minute: p50/p99 latency, errors,
 *   and resident memory of the server and its workers (from /metrics); at the end, the RSS
 *   growth after a warm-up and its slope, and p99 of every minute against the first's
 *   ({@linkcode summarize}).
 * - `--instances-compare`: the same closed-loop load on one instance (all threads) and on two
 *   instances (each a worker process with its share of the cores), embeddings/s side by side.
 *
 * @module
 */
import { defaultModelConfig } from "../serve/config.ts";
import { spawnServer } from "../serve/spawn.ts";
import { metricsText, metricSum, percentile, round } from "./_serve_common.ts";
import { median } from "./_timing.ts";

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

/** What `/metrics` says at one moment: memory, and counts of slow batches and requests. */
interface ServerSample {
  serverRssBytes: number;
  workerRssBytes: number;
  tokens: number;
  workerHeapBytes: number;
  workerHeapCommittedBytes: number;
  workerCollections: number;
  workerCollectionSeconds: number;
  workerExternalBytes: number;
  batches: number;
  batchesUnder250Ms: number;
  requests: number;
  requestsUnder250Ms: number;
}

async function sampleServer(url: string): Promise<ServerSample> {
  const text = await metricsText(url);
  const route = 'route="/v1/embeddings"';
  return {
    serverRssBytes: metricSum(text, "process_resident_memory_bytes"),
    workerRssBytes: metricSum(text, "sparsebert_worker_resident_memory_bytes"),
    tokens: metricSum(text, "sparsebert_tokens_total"),
    workerHeapBytes: metricSum(text, "sparsebert_worker_heap_bytes"),
    workerHeapCommittedBytes: metricSum(text, "sparsebert_worker_heap_committed_bytes"),
    workerCollections: metricSum(text, "sparsebert_worker_collections"),
    workerCollectionSeconds: metricSum(text, "sparsebert_worker_collection_seconds"),
    workerExternalBytes: metricSum(text, "sparsebert_worker_external_bytes"),
    batches: metricSum(text, "sparsebert_batch_duration_seconds_count"),
    batchesUnder250Ms: metricSum(text, "sparsebert_batch_duration_seconds_bucket", 'le="0.25"'),
    requests: metricSum(text, "sparsebert_request_duration_seconds_count", route),
    requestsUnder250Ms: metricSum(
      text,
      "sparsebert_request_duration_seconds_bucket",
      `${route},le="0.25"`,
    ),
  };
}

/** Steal and total CPU jiffies of the machine (/proc/stat), to tell a stolen CPU from ours. */
function cpuJiffies(): { steal: number; total: number } {
  try {
    const fields = Deno.readTextFileSync("/proc/stat").split("\n")[0].trim().split(/\s+/)
      .slice(1).map(Number);
    return { steal: fields[7] ?? 0, total: fields.reduce((a, b) => a + b, 0) };
  } catch {
    return { steal: 0, total: 0 };
  }
}

/** CPU ticks of every process (/proc/PID/stat utime + stime), with its command name. */
function processTicks(): Map<number, { name: string; ticks: number }> {
  const out = new Map<number, { name: string; ticks: number }>();
  try {
    for (const entry of Deno.readDirSync("/proc")) {
      const pid = Number(entry.name);
      if (!Number.isInteger(pid)) continue;
      try {
        const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
        const close = stat.lastIndexOf(")");
        const fields = stat.slice(close + 2).split(" ");
        out.set(pid, {
          name: stat.slice(stat.indexOf("(") + 1, close),
          ticks: Number(fields[11]) + Number(fields[12]),
        });
      } catch {
        // The process ended meanwhile.
      }
    }
  } catch {
    // No /proc (not Linux): nothing to attribute.
  }
  return out;
}

/**
 * The processes other than `ours` that used the most CPU between two {@linkcode processTicks}
 * samples, as "name PID: percent of one core" (at most 3): what competed with the server.
 */
function otherProcesses(
  before: Map<number, { name: string; ticks: number }>,
  after: Map<number, { name: string; ticks: number }>,
  ours: Set<number>,
  seconds: number,
): string[] {
  const ticksPerSecond = 100; // USER_HZ on Linux
  return [...after].filter(([pid]) => !ours.has(pid))
    .map(([pid, p]) => ({ pid, name: p.name, used: p.ticks - (before.get(pid)?.ticks ?? 0) }))
    .filter((p) => p.used > 0).sort((a, b) => b.used - a.used).slice(0, 3)
    .map((p) => `${p.name} ${p.pid}: ${round((100 * p.used) / (ticksPerSecond * seconds))}%`);
}

/**
 * Largest delay of this process's event loop over a 50 ms timer, reset on read: a stall of
 * the load generator itself shows here, not in the server's counts.
 */
function eventLoopLag(): { read: () => number; stop: () => void } {
  let worst = 0;
  let last = performance.now();
  const id = setInterval(() => {
    const now = performance.now();
    worst = Math.max(worst, now - last - 50);
    last = now;
  }, 50);
  return {
    read: () => {
      const w = worst;
      worst = 0;
      return w;
    },
    stop: () => clearInterval(id),
  };
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
  /** Server + workers resident memory at the minute's end, MiB, */
  rssMiB: number;
  /**
   * of which the server process's; the workers' V8 heap in use and committed, and their
   * external (ArrayBuffer) memory.
   */
  serverRssMiB: number;
  workerHeapMiB: number;
  workerHeapCommittedMiB: number;
  workerExternalMiB: number;
  /** Collections the workers ran for dead batch buffers this minute, and their milliseconds. */
  workerCollections: number;
  workerCollectionMs: number;
  /** Where a slow minute's time went: batches and requests over 250 ms by the server's clocks, */
  slowBatches: number;
  slowServerRequests: number;
  /**
   * the load generator's worst event-loop delay (ms), the machine's stolen CPU share (%), the
   * other processes that used the most CPU (name PID: % of one core),
   */
  clientLagMs: number;
  stealPercent: number;
  otherProcesses: string[];
  /**
   * Tokens the workers ran per second of their CPU time: the same load on a CPU that runs
   * slower (a busy neighbour on the same physical core, a lower clock) shows here, not as steal.
   */
  tokensPerCpuSecond: number;
  /**
   * CPU used by this load generator, the server process and the workers, each in % of one core:
   * on 2 cores the three share 200%, so what the workers leave idle shows here.
   */
  cpuPercent: CpuSplit;
  /** the minute's slowest seconds (second of the run: worst latency ms), at most 5, */
  slowestSeconds: string[];
  /**
   * and the workers' calls of 250 ms or more (`slow_call` log events: batch x seq, wall and
   * process CPU ms), at most 5.
   */
  slowCalls: string[];
}

/** CPU used per process group, % of one core. */
export interface CpuSplit {
  client: number;
  server: number;
  workers: number;
}

/** The CPU of the load generator, the server and the workers between two samples. */
function cpuSplit(
  before: Map<number, { ticks: number }>,
  after: Map<number, { ticks: number }>,
  pids: { client: number; server: number; workers: Set<number> },
  seconds: number,
): CpuSplit {
  const used = (pid: number) => (after.get(pid)?.ticks ?? 0) - (before.get(pid)?.ticks ?? 0);
  const percent = (ticks: number) => round(ticks / seconds); // 100 ticks per second = 100%
  return {
    client: percent(used(pids.client)),
    server: percent(used(pids.server)),
    workers: percent([...pids.workers].reduce((sum, pid) => sum + used(pid), 0)),
  };
}

/** Options of {@linkcode soak}. */
export interface SoakOptions {
  minutes: number;
  threads: number;
  model?: string;
  /** Worker processes of the model (default: the server's default, one). */
  instances?: number;
  say: (line: string) => void;
}

/** Runs the soak; returns its report (JSON-ready). */
export async function soak(options: SoakOptions): Promise<Record<string, unknown>> {
  const server = await spawnServer({
    config: {
      log: true, // for the workers' slow_call events
      threads: options.threads,
      ...(options.model || options.instances
        ? {
          models: [{
            name: "bench",
            model: options.model ?? defaultModelConfig().model,
            ...(options.instances ? { instances: options.instances } : {}),
          }],
        }
        : {}),
      limits: { queueTimeoutMs: 30_000 },
    },
    inheritStderr: false,
  });
  try {
    // Capacity is what the machine sustains: the median of five 15-s closed-loop windows after
    // a warm-up. (The best of two 10-s windows, used before, read 369/s where a later window held
    // 311/s, so "70%" was up to 83% of what the machine sustains and a small disturbance became
    // a queue that took minutes to drain.)
    options.say(
      "Measuring capacity (32 clients, mixed lengths: a 5-s warm-up, then the median of five " +
        "15-s windows) ...",
    );
    await capacity(server.url, 32, 5);
    const workers = new Set<number>();
    for (const l of server.logs) {
      if (l.event === "model_loaded") { for (const pid of l.pids as number[]) workers.add(pid); }
    }
    const pids = { client: Deno.pid, server: server.process.pid, workers };
    const workerTicks = (t: Map<number, { ticks: number }>) =>
      [...workers].reduce((sum, pid) => sum + (t.get(pid)?.ticks ?? 0), 0);
    /** Tokens per second of worker CPU between two samples (100 ticks per CPU-second). */
    const tokensPerCpuSecond = (
      tokens: number,
      before: Map<number, { ticks: number }>,
      after: Map<number, { ticks: number }>,
    ) => round(tokens / Math.max(0.01, (workerTicks(after) - workerTicks(before)) / 100));
    const capacityTicks = processTicks();
    const capacityTokens = (await sampleServer(server.url)).tokens;
    const capacityStart = performance.now();
    const windows: number[] = [];
    for (let w = 0; w < 5; w++) windows.push(await capacity(server.url, 32, 15));
    const measured = median(windows);
    const capacityEndTicks = processTicks();
    const capacityCpu = cpuSplit(
      capacityTicks,
      capacityEndTicks,
      pids,
      (performance.now() - capacityStart) / 1000,
    );
    const capacityTokensPerCpuSecond = tokensPerCpuSecond(
      (await sampleServer(server.url)).tokens - capacityTokens,
      capacityTicks,
      capacityEndTicks,
    );
    options.say(
      `capacity windows: ${windows.map((w) => round(w)).join(", ")} embeddings/s; CPU % of a ` +
        `core: client ${capacityCpu.client}, server ${capacityCpu.server}, workers ` +
        `${capacityCpu.workers} (${capacityTokensPerCpuSecond} tokens per worker CPU-s)`,
    );
    const rate = 0.7 * measured;
    options.say(`capacity ${round(measured)} embeddings/s; soak at ${round(rate)}/s`);
    const minutes: SoakMinute[] = [];
    const intervalMs = 1000 / rate;
    const t0 = performance.now();
    const lag = eventLoopLag();
    let before = await sampleServer(server.url);
    let cpuBefore = cpuJiffies();
    // Ours: this load generator, the server and its workers (and their deno task parents).
    const ours = new Set([Deno.pid, server.process.pid, Deno.ppid]);
    for (const pid of workers) ours.add(pid);
    server.logs.splice(0); // the capacity phase's events are not the soak's
    let ticksBefore = processTicks();
    let n = 0;
    // Answers are counted in the minute they arrive in; the schedule never pauses between
    // minutes (waiting for a minute's stragglers would send a burst afterwards).
    let done: { ms: number; status: number; at: number }[] = [];
    const outstanding = new Set<Promise<void>>();
    for (let minute = 1; minute <= options.minutes; minute++) {
      const end = t0 + minute * 60_000;
      // Open loop: arrivals on a fixed schedule, whatever the answers' latency.
      while (performance.now() < end) {
        const due = t0 + n * intervalMs;
        const wait = due - performance.now();
        if (wait > 1) await new Promise((r) => setTimeout(r, wait));
        const at = Math.floor((performance.now() - t0) / 1000);
        const request = embedOnce(server.url, n++).then((a) => {
          done.push({ ...a, at });
          outstanding.delete(request);
        });
        outstanding.add(request);
      }
      if (minute === options.minutes) await Promise.all(outstanding);
      const answers = done;
      done = [];
      const after = await sampleServer(server.url);
      const calls = server.logs.splice(0).filter((l) => l.event === "slow_call");
      const cpuAfter = cpuJiffies();
      const ticksAfter = processTicks();
      const latencies = answers.map((a) => a.ms).sort((a, b) => a - b);
      const worstBySecond = new Map<number, number>();
      for (const a of answers) {
        worstBySecond.set(a.at, Math.max(worstBySecond.get(a.at) ?? 0, a.ms));
      }
      const row: SoakMinute = {
        minute,
        requests: answers.length,
        errors: answers.filter((a) => a.status !== 200).length,
        p50Ms: round(percentile(latencies, 0.5), 2),
        p99Ms: round(percentile(latencies, 0.99), 2),
        rssMiB: round((after.serverRssBytes + after.workerRssBytes) / 2 ** 20),
        serverRssMiB: round(after.serverRssBytes / 2 ** 20),
        workerHeapMiB: round(after.workerHeapBytes / 2 ** 20),
        workerHeapCommittedMiB: round(after.workerHeapCommittedBytes / 2 ** 20),
        workerCollections: Math.max(0, after.workerCollections - before.workerCollections),
        workerCollectionMs: round(
          1000 * Math.max(0, after.workerCollectionSeconds - before.workerCollectionSeconds),
        ),
        workerExternalMiB: round(after.workerExternalBytes / 2 ** 20),
        slowBatches: (after.batches - after.batchesUnder250Ms) -
          (before.batches - before.batchesUnder250Ms),
        slowServerRequests: (after.requests - after.requestsUnder250Ms) -
          (before.requests - before.requestsUnder250Ms),
        clientLagMs: round(lag.read()),
        stealPercent: round(
          100 * (cpuAfter.steal - cpuBefore.steal) / Math.max(1, cpuAfter.total - cpuBefore.total),
          2,
        ),
        otherProcesses: otherProcesses(ticksBefore, ticksAfter, ours, 60),
        tokensPerCpuSecond: tokensPerCpuSecond(
          after.tokens - before.tokens,
          ticksBefore,
          ticksAfter,
        ),
        cpuPercent: cpuSplit(ticksBefore, ticksAfter, pids, 60),
        slowestSeconds: [...worstBySecond].sort((a, b) => b[1] - a[1]).slice(0, 5)
          .map(([second, ms]) => `${second}: ${round(ms)}`),
        slowCalls: calls.slice(0, 5).map((c) =>
          `${c.batch ?? c.inputs}x${c.seq ?? ""} ${c.ms} ms (cpu ${c.cpuMs}, sys ${c.systemMs})`
        ),
      };
      before = after;
      cpuBefore = cpuAfter;
      ticksBefore = ticksAfter;
      minutes.push(row);
      options.say(
        `minute ${minute}: ${row.requests} requests, ${row.errors} errors, p50 ${row.p50Ms} ms, ` +
          `p99 ${row.p99Ms} ms, RSS ${row.rssMiB} MiB (server ${row.serverRssMiB}; worker heap ` +
          `${row.workerHeapMiB} of ${row.workerHeapCommittedMiB} committed, external ` +
          `${row.workerExternalMiB}; ${row.workerCollections} collections, ${row.workerCollectionMs} ms); over 250 ms: ${row.slowBatches} batches, ` +
          `${row.slowServerRequests} requests (server); client lag ${row.clientLagMs} ms, ` +
          `steal ${row.stealPercent}%; ${row.tokensPerCpuSecond} tokens per worker CPU-s; CPU % ` +
          `client ${row.cpuPercent.client}, server ${row.cpuPercent.server}, workers ` +
          `${row.cpuPercent.workers}; others ${row.otherProcesses.join(", ")}; slowest seconds ${
            row.slowestSeconds.join(", ")
          }; ` +
          `${calls.length} slow worker calls ${row.slowCalls.join(", ")}`,
      );
    }
    lag.stop();
    const summary = summarize(minutes);
    options.say(
      `RSS growth after the ${summary.warmupMinutes}-minute warm-up: ` +
        `${summary.rssGrowthAfterWarmupPercent}% (median of the last 5 minutes over the 5 after ` +
        `warm-up: ${summary.rssGrowthWindowMedianPercent}%; slope ${summary.rssSlopeMiBPer10Minutes} ` +
        `MiB / 10 min; since minute 1: ${summary.rssGrowthSinceMinute1Percent}%); worst p99 / ` +
        `minute 1 p99: ${summary.worstP99OverFirst}x; errors: ${summary.errors}`,
    );
    return {
      capacityPerSecond: round(measured),
      capacityWindows: windows.map((w) => round(w)),
      capacityCpuPercent: capacityCpu,
      capacityTokensPerCpuSecond,
      ratePerSecond: round(rate),
      minutes,
      summary,
    };
  } finally {
    await server.stop();
  }
}

/**
 * The soak's verdict figures. Warm-up: the first 5 minutes (a third of a short run), while the
 * workspaces of every batch shape and the allocator's arenas grow; RSS growth is measured from
 * its end to the last minute, with the least-squares slope over the same minutes, and as the
 * median of the last five minutes over the median of the five after warm-up (added after the
 * fifth 30-minute run, whose last minute alone decided the first figure).
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
  // Window figure: the median of the last five minutes against the median of the five minutes
  // from the end of warm-up, so one minute's resident batch shapes do not decide it.
  const firstWindow = after.slice(0, 5).map((m) => m.rssMiB);
  const lastWindow = minutes.slice(-5).map((m) => m.rssMiB);
  return {
    warmupMinutes: warmup,
    rssGrowthAfterWarmupPercent: round((last.rssMiB / after[0].rssMiB - 1) * 100, 2),
    rssGrowthWindowMedianPercent: round((median(lastWindow) / median(firstWindow) - 1) * 100, 2),
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
        models: [{ name: "bench", model: options.model ?? defaultModelConfig().model, instances }],
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

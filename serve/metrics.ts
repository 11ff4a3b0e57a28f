/**
 * Prometheus metrics in the text exposition format (version 0.0.4), kept in process memory:
 * request counts by route and status, request latency, batch sizes and durations, queue depth,
 * tokens processed and a tokens/s rate over the last 10 seconds.
 *
 * @module
 */
import type { BatchReport } from "./batcher.ts";

const LATENCY_BUCKETS = [
  0.001,
  0.0025,
  0.005,
  0.01,
  0.025,
  0.05,
  0.1,
  0.25,
  0.5,
  1,
  2.5,
  5,
  10,
  30,
];
const BATCH_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
const PADDED_BUCKETS = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536];

function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}

function labelText(labels: Record<string, string>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length === 0 ? "" : `{${parts.join(",")}}`;
}

/** One sample of a family: its labels and its value (a histogram renders several lines). */
type Sample = [labels: Record<string, string>, value: number | Histogram];

/** The samples of `map`, each labelled `label` = its key, valued `read(value)`. */
function byLabel<V>(
  map: ReadonlyMap<string, V>,
  label: string,
  read: (value: V) => number | Histogram = (value) => value as number | Histogram,
): Sample[] {
  return [...map].map(([key, value]) => [{ [label]: key }, read(value)]);
}

/** The samples of `map`, whose keys are JSON arrays of the values of `labels`, in order. */
function byLabels(map: ReadonlyMap<string, number>, labels: readonly string[]): Sample[] {
  return [...map].map(([key, value]) => {
    const values = JSON.parse(key) as string[];
    return [Object.fromEntries(labels.map((label, i) => [label, values[i]])), value];
  });
}

function formatNumber(value: number): string {
  if (value === Infinity) return "+Inf";
  if (value === -Infinity) return "-Inf";
  if (Number.isNaN(value)) return "NaN";
  return String(value);
}

class Histogram {
  readonly bounds: number[];
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(bounds: number[]) {
    this.bounds = bounds;
    this.counts = new Array(bounds.length).fill(0);
  }

  observe(value: number): void {
    this.sum += value;
    this.count++;
    for (let i = 0; i < this.bounds.length; i++) {
      if (value <= this.bounds[i]) {
        this.counts[i]++;
        return;
      }
    }
  }

  render(name: string, labels: Record<string, string>, out: string[]): void {
    let cumulative = 0;
    for (let i = 0; i < this.bounds.length; i++) {
      cumulative += this.counts[i];
      out.push(
        `${name}_bucket${labelText({ ...labels, le: formatNumber(this.bounds[i]) })} ${cumulative}`,
      );
    }
    out.push(`${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${this.count}`);
    out.push(`${name}_sum${labelText(labels)} ${formatNumber(this.sum)}`);
    out.push(`${name}_count${labelText(labels)} ${this.count}`);
  }
}

/** A sliding 10 s window of token counts, in 1 s slots, for a tokens/s gauge. */
class RateWindow {
  #slots = new Float64Array(10);
  #slotTimes = new Float64Array(10);

  add(count: number, nowMs: number): void {
    const second = Math.floor(nowMs / 1000);
    const slot = second % 10;
    if (this.#slotTimes[slot] !== second) {
      this.#slotTimes[slot] = second;
      this.#slots[slot] = 0;
    }
    this.#slots[slot] += count;
  }

  perSecond(nowMs: number): number {
    const second = Math.floor(nowMs / 1000);
    let total = 0;
    for (let i = 0; i < 10; i++) {
      if (second - this.#slotTimes[i] < 10) total += this.#slots[i];
    }
    return total / 10;
  }
}

/** Per-model figures the metrics read at scrape time. */
export interface QueueProbe {
  /** Inputs waiting. */
  depth(): number;
  /** Batches running. */
  running(): number;
  /** Worker processes loaded and serving. */
  workersLive(): number;
  /** Worker processes configured. */
  workers(): number;
  /** Resident memory of the live workers, bytes (0 where unknown). */
  workerResidentBytes(): number;
  /** V8 heap in use in the live workers at their last answers, bytes. */
  workerHeapBytes(): number;
  /** V8 heap committed in the live workers at their last answers, bytes. */
  workerHeapCommittedBytes(): number;
  /** Collections the live workers ran for dead ArrayBuffers, and their seconds in all. */
  workerCollections(): number;
  workerCollectionSeconds(): number;
  /** Their memory outside the V8 heap held by JavaScript objects (ArrayBuffers), bytes. */
  workerExternalBytes(): number;
}

/** The server's metrics registry. */
export class Metrics {
  #requests = new Map<string, number>();
  #latency = new Map<string, Histogram>();
  #batchSize = new Map<string, Histogram>();
  #batchPadded = new Map<string, Histogram>();
  #batchSeconds = new Map<string, Histogram>();
  #tokens = new Map<string, number>();
  #inputs = new Map<string, number>();
  #rates = new Map<string, RateWindow>();
  #rejected = new Map<string, number>();
  #queues = new Map<string, QueueProbe>();
  #workerFaults = new Map<string, number>();
  #inflight = 0;
  #started = Date.now();

  /** Registers a model's queue so its depth is reported. */
  registerQueue(model: string, probe: QueueProbe): void {
    this.#queues.set(model, probe);
  }

  /** Counts a request that started. */
  requestStarted(): void {
    this.#inflight++;
  }

  /** Records a finished request under its route template. */
  requestFinished(route: string, method: string, status: number, seconds: number): void {
    this.#inflight--;
    const key = JSON.stringify([route, method, String(status)]);
    this.#requests.set(key, (this.#requests.get(key) ?? 0) + 1);
    let h = this.#latency.get(route);
    if (h === undefined) this.#latency.set(route, h = new Histogram(LATENCY_BUCKETS));
    h.observe(seconds);
  }

  /** Records a request refused for `reason` (e.g. `queue_full`). */
  rejected(reason: string): void {
    this.#rejected.set(reason, (this.#rejected.get(reason) ?? 0) + 1);
  }

  /** Counts a worker process of `model` that died (`cause`: `signal:SIGKILL`, `exit:1`, ...). */
  workerFault(model: string, cause: string): void {
    const key = JSON.stringify([model, cause]);
    this.#workerFaults.set(key, (this.#workerFaults.get(key) ?? 0) + 1);
  }

  /** Records one batch of a model. */
  batch(model: string, report: Omit<BatchReport, "bucket" | "failed">): void {
    const { size, tokens, seconds } = report;
    let p = this.#batchPadded.get(model);
    if (p === undefined) this.#batchPadded.set(model, p = new Histogram(PADDED_BUCKETS));
    p.observe(report.paddedTokens);
    let h = this.#batchSize.get(model);
    if (h === undefined) this.#batchSize.set(model, h = new Histogram(BATCH_BUCKETS));
    h.observe(size);
    let d = this.#batchSeconds.get(model);
    if (d === undefined) this.#batchSeconds.set(model, d = new Histogram(LATENCY_BUCKETS));
    d.observe(seconds);
    this.#tokens.set(model, (this.#tokens.get(model) ?? 0) + tokens);
    this.#inputs.set(model, (this.#inputs.get(model) ?? 0) + size);
    let r = this.#rates.get(model);
    if (r === undefined) this.#rates.set(model, r = new RateWindow());
    r.add(tokens, Date.now());
  }

  /** Requests in flight now. */
  get inflight(): number {
    return this.#inflight;
  }

  /** Total requests recorded with a given status class (e.g. 5 for 5xx). */
  countStatusClass(statusClass: number): number {
    let total = 0;
    for (const [key, n] of this.#requests) {
      const status = Number(JSON.parse(key)[2]);
      if (Math.floor(status / 100) === statusClass) total += n;
    }
    return total;
  }

  /** The exposition text. */
  render(): string {
    const out: string[] = [];
    const now = Date.now();
    /** One metric family: its HELP and TYPE lines, then a sample (or histogram) per labels. */
    const family = (
      name: string,
      type: "counter" | "gauge" | "histogram",
      help: string,
      samples: Iterable<Sample>,
    ): void => {
      out.push(`# HELP ${name} ${help}`);
      out.push(`# TYPE ${name} ${type}`);
      for (const [labels, value] of samples) {
        if (value instanceof Histogram) value.render(name, labels, out);
        else out.push(`${name}${labelText(labels)} ${value}`);
      }
    };
    /** A family with a sample per model: `map`'s values, read by `read`. */
    const perModel = <V>(
      name: string,
      type: "counter" | "gauge" | "histogram",
      help: string,
      map: ReadonlyMap<string, V>,
      read?: (value: V) => number | Histogram,
    ): void => family(name, type, help, byLabel(map, "model", read));
    const queueGauge = (name: string, help: string, read: (q: QueueProbe) => number): void =>
      perModel(name, "gauge", help, this.#queues, read);
    family(
      "sparsebert_requests_total",
      "counter",
      "HTTP requests by route template, method and status.",
      byLabels(this.#requests, ["route", "method", "status"]),
    );
    const latency = "Request latency by route template.";
    const byRoute = byLabel(this.#latency, "route");
    family("sparsebert_request_duration_seconds", "histogram", latency, byRoute);
    const inflight: Sample = [{}, this.#inflight];
    family("sparsebert_requests_in_flight", "gauge", "Requests being handled now.", [inflight]);
    const rejected = "Requests refused before inference, by reason.";
    family("sparsebert_rejected_total", "counter", rejected, byLabel(this.#rejected, "reason"));
    perModel("sparsebert_batch_size", "histogram", "Inputs per inference batch.", this.#batchSize);
    const padded = "Padded tokens per batch (inputs x longest input).";
    perModel("sparsebert_batch_padded_tokens", "histogram", padded, this.#batchPadded);
    const seconds = "Time one batch took in a worker.";
    perModel("sparsebert_batch_duration_seconds", "histogram", seconds, this.#batchSeconds);
    queueGauge("sparsebert_queue_depth", "Inputs waiting to be batched.", (q) => q.depth());
    queueGauge("sparsebert_batches_running", "Batches running in workers now.", (q) => q.running());
    queueGauge(
      "sparsebert_workers_live",
      "Worker processes loaded and serving.",
      (q) => q.workersLive(),
    );
    queueGauge("sparsebert_workers", "Worker processes configured.", (q) => q.workers());
    family(
      "sparsebert_worker_restarts_total",
      "counter",
      "Worker processes that died and were restarted, by cause.",
      byLabels(this.#workerFaults, ["model", "cause"]),
    );
    queueGauge(
      "sparsebert_worker_resident_memory_bytes",
      "Resident memory of a model's worker processes.",
      (q) => q.workerResidentBytes(),
    );
    queueGauge(
      "sparsebert_worker_heap_bytes",
      "V8 heap in use in a model's worker processes at their last answers.",
      (q) => q.workerHeapBytes(),
    );
    queueGauge(
      "sparsebert_worker_heap_committed_bytes",
      "V8 heap committed (used or not) in a model's worker processes at their last answers.",
      (q) => q.workerHeapCommittedBytes(),
    );
    queueGauge(
      "sparsebert_worker_collections",
      "Garbage collections the live workers ran for dead batch buffers (ArrayBuffers).",
      (q) => q.workerCollections(),
    );
    queueGauge(
      "sparsebert_worker_collection_seconds",
      "Seconds the live workers spent in those collections.",
      (q) => q.workerCollectionSeconds(),
    );
    queueGauge(
      "sparsebert_worker_external_bytes",
      "Memory held by JavaScript objects outside the V8 heap (ArrayBuffers) in a model's workers.",
      (q) => q.workerExternalBytes(),
    );
    const tokens = "Tokens run through the encoder (padding excluded).";
    perModel("sparsebert_tokens_total", "counter", tokens, this.#tokens);
    const inputs = "Inputs (texts or sequences) run.";
    perModel("sparsebert_inputs_total", "counter", inputs, this.#inputs);
    const rate = "Tokens per second over the last 10 seconds.";
    perModel("sparsebert_tokens_per_second", "gauge", rate, this.#rates, (r) => r.perSecond(now));
    const memory = Deno.memoryUsage();
    const processGauges: [string, string, number][] = [
      ["process_resident_memory_bytes", "Resident memory of the server process.", memory.rss],
      ["sparsebert_heap_used_bytes", "JavaScript heap in use (main isolate).", memory.heapUsed],
      [
        "process_start_time_seconds",
        "Start time of the server, Unix seconds.",
        Math.floor(this.#started / 1000),
      ],
    ];
    for (const [name, help, value] of processGauges) family(name, "gauge", help, [[{}, value]]);
    return out.join("\n") + "\n";
  }
}

/**
 * Cross-request dynamic batching. Inputs from any number of requests wait in per-bucket FIFO
 * queues (a bucket is a range of sequence lengths); whenever an executor (a worker instance)
 * is free, the batcher hands it up to `maxBatch` inputs of one bucket, and no more than
 * `maxBatchTokens` padded tokens. A bucket is ready once it holds a full batch or its oldest
 * input has waited `maxWaitMs`; of the ready buckets, the one whose oldest input has waited
 * longest goes first. Under load the executors stay busy, inputs pile up meanwhile, and batches
 * grow on their own.
 *
 * The queue is bounded (`maxQueue` inputs): a request that does not fit is refused as a whole
 * with {@linkcode OverloadedError} before anything is queued, so memory stays bounded. An input
 * that waits longer than `queueTimeoutMs` fails its request with {@linkcode QueueTimeoutError}.
 * A request whose client went away (its `AbortSignal`) leaves the queue at once.
 *
 * @module
 */
import { NamedError } from "./errors.ts";

/** Runs one batch; resolves to one result per item, in order. */
export type BatchExecutor<I, R> = (items: I[], bucket: number) => Promise<R[]>;

/** Batch statistics reported after each batch. */
export interface BatchReport {
  /** Items in the batch. */
  size: number;
  /** Bucket bound of the batch. */
  bucket: number;
  /** Sum of the items' lengths (tokens). */
  tokens: number;
  /** Items x the longest item: the padded batch the encoder ran (what maxBatchTokens bounds). */
  paddedTokens: number;
  /** Seconds the executor took. */
  seconds: number;
  /** Whether the executor failed. */
  failed: boolean;
}

/** Options of {@linkcode Batcher}. */
export interface BatcherOptions<I, R> {
  /** Largest batch. */
  maxBatch: number;
  /**
   * Largest batch in padded tokens (items x their longest length: what the encoder runs, as
   * TEI's `--max-batch-tokens`); default: no bound beyond `maxBatch`. Must hold one input of
   * the longest bucket.
   */
  maxBatchTokens?: number;
  /** Longest wait for a batch to fill, in milliseconds. */
  maxWaitMs: number;
  /** Ascending bucket bounds; the last one is the longest length accepted. */
  buckets: number[];
  /** Most items queued (not counting running batches). */
  maxQueue: number;
  /** Longest an item may wait in the queue, in milliseconds. */
  queueTimeoutMs: number;
  /** One executor per instance; each runs one batch at a time. */
  executors: BatchExecutor<I, R>[];
  /** Called after every batch (metrics). */
  onBatch?: (report: BatchReport) => void;
}

/** The queue cannot take the request now (429). */
export class OverloadedError extends NamedError {}

/** An input waited too long in the queue (503). */
export class QueueTimeoutError extends NamedError {}

/** The batcher is closed (shutting down, 503). */
export class ClosedError extends NamedError {}

/** The request was cancelled by its client. */
export class CancelledError extends NamedError {
  /** Creates the error. */
  constructor() {
    super("Request cancelled by the client");
  }
}

interface Group<R> {
  results: R[];
  pending: number;
  done: boolean;
  resolve(results: R[]): void;
  reject(error: Error): void;
}

interface Entry<I, R> {
  item: I;
  length: number;
  enqueuedAt: number;
  group: Group<R>;
  index: number;
}

/** An input and its sequence length in tokens. */
export interface Sized<I> {
  /** The input as the executor wants it. */
  item: I;
  /** Sequence length (decides the bucket). */
  length: number;
}

/** A cross-request batcher over a fixed set of executors. */
export class Batcher<I, R> {
  #options: BatcherOptions<I, R>;
  #queues: Entry<I, R>[][];
  #queued = 0;
  #idle: number[];
  #running = 0;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #timerAt = Infinity;
  #closed = false;
  #drainWaiters: (() => void)[] = [];

  /** Creates a batcher; nothing runs until items are submitted. */
  constructor(options: BatcherOptions<I, R>) {
    if (!Number.isInteger(options.maxBatch) || options.maxBatch < 1) {
      throw new RangeError(`maxBatch must be a positive integer, got ${options.maxBatch}`);
    }
    if (options.buckets.length === 0) throw new RangeError("buckets must not be empty");
    for (let i = 1; i < options.buckets.length; i++) {
      if (!(options.buckets[i] > options.buckets[i - 1])) {
        throw new RangeError(`buckets must ascend, got ${JSON.stringify(options.buckets)}`);
      }
    }
    if (options.executors.length === 0) throw new RangeError("executors must not be empty");
    const budget = options.maxBatchTokens;
    if (budget !== undefined && !(Number.isInteger(budget) && budget >= options.buckets.at(-1)!)) {
      throw new RangeError(
        `maxBatchTokens must be an integer of at least the longest bucket ` +
          `(${options.buckets.at(-1)}), got ${budget}: such an input could never run`,
      );
    }
    this.#options = options;
    this.#queues = options.buckets.map(() => []);
    this.#idle = options.executors.map((_, i) => i);
  }

  /** Inputs waiting in the queue. */
  get depth(): number {
    return this.#queued;
  }

  /** Batches running now. */
  get running(): number {
    return this.#running;
  }

  /** Longest sequence accepted. */
  get maxLength(): number {
    return this.#options.buckets.at(-1)!;
  }

  /** The bucket bound for a sequence length. */
  bucketOf(length: number): number {
    return this.#options.buckets[this.#bucketIndex(length)];
  }

  #bucketIndex(length: number): number {
    const buckets = this.#options.buckets;
    for (let i = 0; i < buckets.length; i++) if (length <= buckets[i]) return i;
    throw new RangeError(`Sequence length ${length} is over the longest bucket ${buckets.at(-1)}`);
  }

  /** Whether `count` more inputs fit in the queue now. */
  hasRoom(count = 1): boolean {
    return !this.#closed && this.#queued + count <= this.#options.maxQueue;
  }

  /**
   * Queues the inputs of one request; resolves to their results in order once every input has
   * run. All or nothing: when the inputs do not fit, nothing is queued.
   *
   * @throws OverloadedError when the queue is full; ClosedError when closed.
   */
  submit(inputs: Sized<I>[], signal?: AbortSignal): Promise<R[]> {
    if (this.#closed) return Promise.reject(new ClosedError("The server is shutting down"));
    if (inputs.length === 0) return Promise.resolve([]);
    if (this.#queued + inputs.length > this.#options.maxQueue) {
      return Promise.reject(
        new OverloadedError(
          `The queue is full (${this.#queued} of ${this.#options.maxQueue} inputs waiting); ` +
            `retry later`,
        ),
      );
    }
    if (signal?.aborted) return Promise.reject(new CancelledError());
    const bucketIndexes = inputs.map((input) => this.#bucketIndex(input.length));
    return new Promise<R[]>((resolve, reject) => {
      const group: Group<R> = {
        results: new Array(inputs.length),
        pending: inputs.length,
        done: false,
        resolve,
        reject,
      };
      const now = performance.now();
      const entries: Entry<I, R>[] = inputs.map((input, index) => ({
        item: input.item,
        length: input.length,
        enqueuedAt: now,
        group,
        index,
      }));
      entries.forEach((entry, i) => this.#queues[bucketIndexes[i]].push(entry));
      this.#queued += entries.length;
      if (signal !== undefined) {
        const onAbort = (): void => this.#cancel(group, new CancelledError());
        signal.addEventListener("abort", onAbort, { once: true });
        const finish = (): void => signal.removeEventListener("abort", onAbort);
        group.resolve = (results) => {
          finish();
          resolve(results);
        };
        group.reject = (error) => {
          finish();
          reject(error);
        };
      }
      this.#pump();
    });
  }

  /** Fails a group and drops its queued entries. */
  #cancel(group: Group<R>, error: Error): void {
    if (group.done) return;
    group.done = true;
    for (const queue of this.#queues) {
      // Bounded by the queue length; removes only this group's entries.
      for (let i = queue.length - 1; i >= 0; i--) {
        if (queue[i].group === group) {
          queue.splice(i, 1);
          this.#queued--;
        }
      }
    }
    group.reject(error);
    this.#notifyDrain();
  }

  #expire(now: number): void {
    const limit = this.#options.queueTimeoutMs;
    for (const queue of this.#queues) {
      // Heads are the oldest; each pass removes at least the head's group or stops.
      while (queue.length > 0 && now - queue[0].enqueuedAt > limit) {
        const waited = Math.round(now - queue[0].enqueuedAt);
        this.#cancel(
          queue[0].group,
          new QueueTimeoutError(
            `An input waited ${waited} ms in the queue, over the limit of ${limit} ms; retry later`,
          ),
        );
      }
    }
  }

  #pump(): void {
    const now = performance.now();
    this.#expire(now);
    let nextDeadline = Infinity;
    // Bounded: each iteration either dispatches (consuming an idle executor) or breaks.
    while (this.#idle.length > 0 && this.#queued > 0) {
      const pick = this.#oldestReady(now);
      if (pick.bucket < 0) {
        nextDeadline = pick.readyAt;
        break;
      }
      const queue = this.#queues[pick.bucket];
      const batch = queue.splice(0, this.#fits(queue));
      this.#queued -= batch.length;
      this.#dispatch(this.#idle.pop()!, batch, this.#options.buckets[pick.bucket]);
    }
    if (this.#queued > 0) {
      const expiry = this.#oldestEnqueue() + this.#options.queueTimeoutMs + 1;
      this.#schedule(Math.min(nextDeadline, expiry));
    }
  }

  /**
   * The ready bucket whose head input has waited longest; when none is ready, bucket -1 and the
   * time the first one will be. A bucket is ready when it holds a full batch (maxBatch or the
   * token budget), when its head has waited maxWaitMs, or when the batcher is closing.
   * Oldest-first across buckets bounds every input's wait under a backlog; serving full buckets
   * first would keep a lone long input behind every full batch of short ones.
   */
  #oldestReady(now: number): { bucket: number; readyAt: number } {
    const { maxBatch, maxWaitMs } = this.#options;
    let bucket = -1;
    let oldest = Infinity;
    let readyAt = Infinity;
    for (let b = 0; b < this.#queues.length; b++) {
      const queue = this.#queues[b];
      if (queue.length === 0) continue;
      const head = queue[0].enqueuedAt;
      const full = queue.length >= maxBatch || this.#fits(queue) < queue.length;
      if (full || this.#closed || now - head >= maxWaitMs) {
        if (head < oldest) {
          oldest = head;
          bucket = b;
        }
      } else {
        readyAt = Math.min(readyAt, head + maxWaitMs);
      }
    }
    return { bucket, readyAt };
  }

  /** How many head entries of `queue` one batch takes: maxBatch, and the token budget. */
  #fits(queue: Entry<I, R>[]): number {
    const { maxBatch, maxBatchTokens = Infinity } = this.#options;
    let longest = 0;
    let n = 0;
    // Bounded by maxBatch; the first entry always fits (the constructor checked the budget).
    while (n < queue.length && n < maxBatch) {
      const next = Math.max(longest, queue[n].length);
      if (n > 0 && next * (n + 1) > maxBatchTokens) break;
      longest = next;
      n++;
    }
    return n;
  }

  #oldestEnqueue(): number {
    let oldest = Infinity;
    for (const queue of this.#queues) {
      if (queue.length > 0 && queue[0].enqueuedAt < oldest) oldest = queue[0].enqueuedAt;
    }
    return oldest;
  }

  #schedule(at: number): void {
    if (at === Infinity || (this.#timer !== undefined && this.#timerAt <= at)) return;
    clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#timerAt = Infinity;
      this.#pump();
    }, Math.max(0, at - performance.now()));
  }

  #dispatch(executor: number, batch: Entry<I, R>[], bucket: number): void {
    this.#running++;
    const started = performance.now();
    const items = batch.map((e) => e.item);
    const tokens = batch.reduce((s, e) => s + e.length, 0);
    let failed = false;
    this.#options.executors[executor](items, bucket).then(
      (results) => {
        if (results.length !== batch.length) {
          throw new Error(`Executor returned ${results.length} results for ${batch.length} items`);
        }
        batch.forEach((entry, i) => {
          const group = entry.group;
          if (group.done) return;
          group.results[entry.index] = results[i];
          if (--group.pending === 0) {
            group.done = true;
            group.resolve(group.results);
          }
        });
      },
    ).catch((error: unknown) => {
      failed = true;
      const err = error instanceof Error ? error : new Error(String(error));
      for (const entry of batch) {
        if (!entry.group.done) {
          entry.group.done = true;
          entry.group.reject(err);
        }
      }
    }).finally(() => {
      this.#running--;
      this.#idle.push(executor);
      this.#options.onBatch?.({
        size: batch.length,
        bucket,
        tokens,
        paddedTokens: batch.length * Math.max(...batch.map((e) => e.length)),
        seconds: (performance.now() - started) / 1000,
        failed,
      });
      this.#pump();
      this.#notifyDrain();
    });
  }

  #notifyDrain(): void {
    if (this.#queued === 0 && this.#running === 0) {
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  /**
   * Stops taking new inputs and resolves once everything queued or running has finished
   * (queued inputs run right away without waiting for their batch to fill).
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#pump();
    if (this.#queued === 0 && this.#running === 0) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** Stops the timer; queued inputs fail with ClosedError. */
  [Symbol.dispose](): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
    for (const queue of this.#queues) {
      while (queue.length > 0) this.#cancel(queue[0].group, new ClosedError("Batcher disposed"));
    }
  }
}

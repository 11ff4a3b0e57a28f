// Unit tests of the cross-request batcher (serve/batcher.ts): the executors here are plain
// functions that record the batches they get, since what is tested is the batching policy.
import assert from "node:assert/strict";
import {
  Batcher,
  type BatcherOptions,
  CancelledError,
  ClosedError,
  OverloadedError,
  QueueTimeoutError,
} from "../serve/batcher.ts";

interface Recorded {
  items: number[];
  bucket: number;
}

function recorder(delayMs = 0): {
  batches: Recorded[];
  executor: (items: number[], bucket: number) => Promise<number[]>;
} {
  const batches: Recorded[] = [];
  return {
    batches,
    executor: async (items, bucket) => {
      batches.push({ items: [...items], bucket });
      if (delayMs > 0) await new Promise((r) => setTimeout(r, delayMs));
      return items.map((x) => x * 10);
    },
  };
}

/** One input per batch, dispatched at once, a queue of 10. */
const ONE_AT_A_TIME = { maxBatch: 1, maxWaitMs: 0, maxQueue: 10 };

const sized = (values: number[], length = 10) => values.map((item) => ({ item, length }));

/** A batcher over `r`'s executor with these tests' defaults, overridden by `options`. */
function testBatcher(
  r: { executor: (items: number[], bucket: number) => Promise<number[]> },
  options: Partial<BatcherOptions<number, number>> = {},
): Batcher<number, number> {
  return new Batcher<number, number>({
    maxBatch: 16,
    maxWaitMs: 5,
    buckets: [16],
    maxQueue: 100,
    queueTimeoutMs: 5000,
    executors: [r.executor],
    ...options,
  });
}

Deno.test("batcher: inputs of concurrent requests are merged into one batch", async () => {
  const r = recorder();
  const b = testBatcher(r, { maxBatch: 8, maxWaitMs: 20, buckets: [16, 64] });
  const results = await Promise.all([
    b.submit(sized([1, 2])),
    b.submit(sized([3])),
    b.submit(sized([4, 5, 6])),
  ]);
  assert.deepEqual(results, [[10, 20], [30], [40, 50, 60]]);
  assert.equal(r.batches.length, 1);
  assert.deepEqual(r.batches[0].items, [1, 2, 3, 4, 5, 6]);
  await b.close();
});

Deno.test("batcher: a full bucket goes at once; batches never exceed maxBatch", async () => {
  const r = recorder();
  const b = testBatcher(r, { maxBatch: 4, maxWaitMs: 10_000, queueTimeoutMs: 60_000 });
  const t0 = performance.now();
  const out = await b.submit(sized([1, 2, 3, 4, 5, 6, 7, 8]));
  assert.ok(performance.now() - t0 < 5000, "full batches must not wait for maxWaitMs");
  assert.deepEqual(out, [10, 20, 30, 40, 50, 60, 70, 80]);
  assert.deepEqual(r.batches.map((x) => x.items.length), [4, 4]);
  await b.close();
});

Deno.test("batcher: inputs are grouped by sequence-length bucket", async () => {
  const r = recorder();
  const b = testBatcher(r, { buckets: [16, 64, 128] });
  await Promise.all([
    b.submit([{ item: 1, length: 5 }, { item: 2, length: 100 }]),
    b.submit([{ item: 3, length: 16 }, { item: 4, length: 17 }]),
  ]);
  const byBucket = new Map(r.batches.map((x) => [x.bucket, x.items.sort()]));
  assert.deepEqual(byBucket.get(16), [1, 3]);
  assert.deepEqual(byBucket.get(64), [4]);
  assert.deepEqual(byBucket.get(128), [2]);
  assert.throws(() => b.bucketOf(129), RangeError);
  await b.close();
});

Deno.test("batcher: under a backlog the bucket whose input waited longest goes first", async () => {
  // The executor is busy with the first input while a long input, then a full bucket of short
  // ones, arrive; the long input has waited longer, so it runs before the full short batch.
  const r = recorder(30);
  const b = testBatcher(r, { maxBatch: 4, maxWaitMs: 1, buckets: [16, 64] });
  const first = b.submit([{ item: 1, length: 8 }]);
  await new Promise((resolve) => setTimeout(resolve, 5));
  const long = b.submit([{ item: 2, length: 50 }]);
  await new Promise((resolve) => setTimeout(resolve, 5));
  const shorts = b.submit(sized([3, 4, 5, 6], 8));
  await Promise.all([first, long, shorts]);
  assert.deepEqual(r.batches.map((x) => x.items), [[1], [2], [3, 4, 5, 6]]);
  await b.close();
});

Deno.test("batcher: the wait for a batch to fill is bounded by maxWaitMs", async () => {
  const r = recorder();
  const b = testBatcher(r, { maxBatch: 64, maxWaitMs: 30 });
  const t0 = performance.now();
  await b.submit(sized([1]));
  const waited = performance.now() - t0;
  assert.ok(waited >= 25, `returned after ${waited} ms, before maxWaitMs`);
  assert.ok(waited < 2000, `waited ${waited} ms, far over maxWaitMs`);
  await b.close();
});

Deno.test("batcher: a full queue refuses whole requests and recovers", async () => {
  const r = recorder(50);
  const b = testBatcher(r, { maxBatch: 2, maxWaitMs: 0, maxQueue: 4 });
  const first = b.submit(sized([1, 2])); // runs at once
  const queued = b.submit(sized([3, 4, 5])); // waits (3 of 4)
  assert.equal(b.depth, 3);
  await assert.rejects(b.submit(sized([6, 7])), OverloadedError);
  assert.equal(b.depth, 3, "a refused request must queue nothing");
  assert.equal(b.hasRoom(1), true);
  assert.deepEqual(await first, [10, 20]);
  assert.deepEqual(await queued, [30, 40, 50]);
  assert.deepEqual(await b.submit(sized([8])), [80]);
  await b.close();
});

Deno.test("batcher: an aborted request leaves the queue", async () => {
  const r = recorder(40);
  const b = testBatcher(r, { maxBatch: 1, maxWaitMs: 0, maxQueue: 10 });
  const running = b.submit(sized([1]));
  const controller = new AbortController();
  const cancelled = b.submit(sized([2, 3]), controller.signal);
  assert.equal(b.depth, 2);
  controller.abort();
  await assert.rejects(cancelled, CancelledError);
  assert.equal(b.depth, 0);
  await running;
  await b.close();
  assert.deepEqual(r.batches.map((x) => x.items), [[1]]);
});

Deno.test("batcher: inputs waiting over queueTimeoutMs fail with QueueTimeoutError", async () => {
  const slow = async (items: number[]) => {
    await new Promise((r) => setTimeout(r, 120));
    return items;
  };
  const b = testBatcher({ executor: slow }, { ...ONE_AT_A_TIME, queueTimeoutMs: 30 });
  const running = b.submit(sized([1]));
  const late = b.submit(sized([2]));
  await assert.rejects(late, QueueTimeoutError);
  assert.deepEqual(await running, [1]);
  await b.close();
});

Deno.test("batcher: executor failures reject only that batch's requests", async () => {
  let calls = 0;
  const failsFirst = (items: number[]) => {
    calls++;
    return calls === 1 ? Promise.reject(new Error("boom")) : Promise.resolve(items);
  };
  const b = testBatcher({ executor: failsFirst }, ONE_AT_A_TIME);
  await assert.rejects(b.submit(sized([1])), /boom/);
  assert.deepEqual(await b.submit(sized([2])), [2]);
  await b.close();
});

Deno.test("batcher: close drains queued inputs at once, then refuses new ones", async () => {
  const r = recorder(10);
  const b = testBatcher(r, {
    maxBatch: 8,
    maxWaitMs: 60_000,
    maxQueue: 10,
    queueTimeoutMs: 120_000,
    executors: [r.executor, r.executor],
  });
  const pending = b.submit(sized([1, 2, 3]));
  const t0 = performance.now();
  await b.close();
  assert.ok(performance.now() - t0 < 5000, "close must not wait for maxWaitMs");
  assert.deepEqual(await pending, [10, 20, 30]);
  await assert.rejects(b.submit(sized([4])), ClosedError);
});

Deno.test("batcher: several executors run batches concurrently", async () => {
  let active = 0;
  let peak = 0;
  const executor = async (items: number[]) => {
    active++;
    peak = Math.max(peak, active);
    await new Promise((r) => setTimeout(r, 30));
    active--;
    return items;
  };
  const b = testBatcher({ executor }, {
    ...ONE_AT_A_TIME,
    executors: [executor, executor, executor],
  });
  await Promise.all([1, 2, 3].map((i) => b.submit(sized([i]))));
  assert.equal(peak, 3);
  await b.close();
});

Deno.test("batcher: batches are bounded by the token budget (padded tokens) under mixed-length load", async () => {
  // The executor is slow so inputs pile up; every batch's padded size must fit the budget.
  const seen: { n: number; padded: number }[] = [];
  const lengths = new Map<number, number>();
  const b = new Batcher<number, number>({
    maxBatch: 64,
    maxBatchTokens: 512,
    maxWaitMs: 1,
    buckets: [32, 128, 256],
    maxQueue: 10_000,
    queueTimeoutMs: 30_000,
    executors: [async (items) => {
      seen.push({
        n: items.length,
        padded: items.length * Math.max(...items.map((i) => lengths.get(i)!)),
      });
      await new Promise((r) => setTimeout(r, 3));
      return items;
    }],
  });
  const next = (() => {
    let s = 7;
    return () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  })();
  const requests = [];
  for (let i = 0; i < 400; i++) {
    const length = 1 + Math.floor(next() * 256);
    lengths.set(i, length);
    requests.push(b.submit([{ item: i, length }]));
  }
  const results = await Promise.all(requests);
  assert.deepEqual(results.map((r) => r[0]), [...lengths.keys()], "every input answered once");
  for (const batch of seen) {
    assert.ok(batch.padded <= 512, `a batch of ${batch.padded} padded tokens`);
  }
  assert.ok(seen.some((batch) => batch.n > 1), "inputs were batched");
  assert.ok(seen.some((batch) => batch.padded > 256), "the budget, not the count, was the limit");
  // A budget that cannot hold one input of the longest bucket is refused up front.
  assert.throws(
    () => new Batcher<number, number>({ ...OPTIONS_FOR_REFUSAL, maxBatchTokens: 100 }),
    /maxBatchTokens must be an integer of at least the longest bucket \(256\), got 100/,
  );
});

const OPTIONS_FOR_REFUSAL = {
  maxBatch: 8,
  maxWaitMs: 1,
  buckets: [64, 256],
  maxQueue: 10,
  queueTimeoutMs: 1000,
  executors: [(items: number[]) => Promise.resolve(items)],
};

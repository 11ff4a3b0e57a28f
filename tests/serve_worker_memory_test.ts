import assert from "node:assert/strict";
import { ExternalMemoryCollector } from "../serve/worker.ts";

/** Drives the collector with a scripted external-memory reading and a counting gc. */
function scripted(slackBytes: number) {
  const state = { external: 0, gcs: 0, deadOnGc: 0 };
  const collector = new ExternalMemoryCollector({
    slackBytes,
    gc: () => {
      state.gcs++;
      state.external -= state.deadOnGc;
    },
  });
  return { state, collector };
}

Deno.test("the worker collects dead batch buffers once they pass the slack, not before", () => {
  const { state, collector } = scripted(100);
  state.external = 1000;
  collector.afterCall(state.external); // the first call reads the floor
  assert.equal(collector.floor, 1000);
  state.external = 1100; // exactly the slack: no collection yet
  collector.afterCall(state.external);
  assert.equal(state.gcs, 0);
  state.external = 1101;
  state.deadOnGc = 101;
  collector.afterCall(state.external);
  assert.equal(state.gcs, 1);
  assert.equal(collector.collections, 1);
  collector.afterCall(state.external); // the next call reads what stayed live: the floor holds
  assert.equal(collector.floor, 1000);
  // A high reading after one collection, then a collection that frees enough: the count starts
  // again and the floor holds.
  state.external = 1200;
  state.deadOnGc = 50;
  collector.afterCall(state.external); // collects: 1150 left
  collector.afterCall(state.external); // high once
  assert.equal(state.gcs, 2);
  state.deadOnGc = 140;
  collector.afterCall(state.external); // 1150 is past the slack: collects, 1010 left
  collector.afterCall(state.external); // low: the count starts again
  assert.equal(state.gcs, 3);
  assert.equal(collector.floor, 1000);
  state.external = 1200;
  state.deadOnGc = 50;
  collector.afterCall(state.external);
  collector.afterCall(state.external); // high once more, but not twice in a row
  assert.equal(collector.floor, 1000);
});

Deno.test("memory a collection does not free becomes the floor, so the worker does not collect every call", () => {
  const { state, collector } = scripted(100);
  state.external = 1000;
  collector.afterCall(state.external);
  state.external = 1300; // a larger workspace, live
  state.deadOnGc = 0;
  collector.afterCall(state.external);
  assert.equal(state.gcs, 1);
  collector.afterCall(state.external); // one high reading after a collection could be buffers not yet swept
  assert.equal(collector.floor, 1000);
  collector.afterCall(state.external);
  assert.equal(state.gcs, 2);
  collector.afterCall(state.external); // the second in a row: live
  assert.equal(collector.floor, 1300);
  for (let i = 0; i < 10; i++) collector.afterCall(state.external);
  assert.equal(state.gcs, 2);
});

Deno.test("without an exposed gc the collector does nothing", () => {
  const collector = new ExternalMemoryCollector({ gc: undefined });
  // `gc: undefined` falls back to globalThis.gc, absent in the test runner.
  collector.afterCall(1e12);
  collector.afterCall(1e12);
  assert.equal(collector.collections, 0);
});

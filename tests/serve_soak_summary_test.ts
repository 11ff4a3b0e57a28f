/**
 * The soak's verdict figures (bench/serve_soak.ts `summarize`) on the RSS series of the fifth
 * 30-minute run (2026-12-07, Zen 4): end-point growth 5.43%, window-median growth 1.46%.
 */
import assert from "node:assert/strict";
import { type SoakMinute, summarize } from "../bench/serve_soak.ts";

const RSS = [
  592.9,
  589.2,
  591.2,
  599.8,
  595,
  602.9,
  595.6,
  600.8,
  601.7,
  600.7,
  600.8,
  601.9,
  602.6,
  614.1,
  615.4,
  611.3,
  610.7,
  609.6,
  609.5,
  610.9,
  609.2,
  609.6,
  609.2,
  609.2,
  612.1,
  609.6,
  611.5,
  609.3,
  609.3,
  627.3,
];
const P99 = [476, 86, 139, 64, 70, 607, 102, 322, 97, 208, 113, 64, 76, 46, 51, 78, 123, 86, 103];

function minutes(rss: number[], p99: number[]): SoakMinute[] {
  return rss.map((rssMiB, i) => ({
    minute: i + 1,
    requests: 12_000,
    errors: i === 3 ? 2 : 0,
    p50Ms: 14,
    p99Ms: p99[i] ?? 80,
    rssMiB,
    serverRssMiB: 0,
    workerHeapMiB: 0,
    workerHeapCommittedMiB: 0,
    workerCollections: 0,
    workerCollectionMs: 0,
    workerExternalMiB: 0,
    slowBatches: 0,
    slowServerRequests: 0,
    clientLagMs: 0,
    stealPercent: 0,
    otherProcesses: [],
    tokensPerCpuSecond: 0,
    cpuPercent: { client: 0, server: 0, workers: 0 },
    slowestSeconds: [],
    slowCalls: [],
  }));
}

Deno.test("soak summary: end-point and window-median RSS growth, p99 against minute 1", () => {
  const s = summarize(minutes(RSS, P99));
  assert.equal(s.warmupMinutes, 5);
  assert.equal(s.rssGrowthAfterWarmupPercent, 5.43); // 627.3 / 595
  assert.equal(s.rssGrowthWindowMedianPercent, 1.46); // median(26-30) 609.6 / median(5-9) 600.8
  assert.equal(s.worstP99OverFirst, 1.28); // 607 / 476
  assert.equal(s.minutesOverP99Bound, 0);
  assert.equal(s.errors, 2);
});

Deno.test("soak summary: a steady climb shows in both growth figures", () => {
  const climbing = Array.from({ length: 30 }, (_, i) => 600 + 2 * i);
  const s = summarize(minutes(climbing, []));
  assert.ok(s.rssGrowthAfterWarmupPercent > 8, String(s.rssGrowthAfterWarmupPercent));
  assert.ok(s.rssGrowthWindowMedianPercent > 6, String(s.rssGrowthWindowMedianPercent));
  assert.equal(s.rssSlopeMiBPer10Minutes, 20);
});

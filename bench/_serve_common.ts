/**
 * Helpers of the server benchmarks (`bench/serve_load.ts`, `bench/serve_soak.ts`): nearest-rank
 * latency percentiles, rounding for reports, reading `/metrics`, and writing the JSON report.
 *
 * @module
 */

/** Nearest-rank percentile of sorted samples (a sample that occurred, unlike `_timing.ts`). */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1));
  return sorted[i];
}

/** `x` rounded to `digits` decimals. */
export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** The server's `/metrics` text. */
export async function metricsText(url: string): Promise<string> {
  const r = await fetch(`${url}/metrics`);
  return await r.text();
}

/** Sum of every sample of metric `name` (any labels), optionally only lines holding `filter`. */
export function metricSum(text: string, name: string, filter = ""): number {
  let total = 0;
  for (const line of text.split("\n")) {
    if (line.startsWith(name) && (line[name.length] === "{" || line[name.length] === " ")) {
      if (filter && !line.includes(filter)) continue;
      total += Number(line.slice(line.lastIndexOf(" ") + 1));
    }
  }
  return total;
}

/**
 * Writes `report` as JSON to `out`, default `bench/results/<kind>-<time>.json`; returns the path.
 */
export async function writeReport(
  kind: string,
  report: Record<string, unknown>,
  out?: string,
): Promise<string> {
  const path = out ?? new URL(
    `./results/${kind}-${new Date().toISOString().replace(/[:.]/g, "-")}.json`,
    import.meta.url,
  ).pathname;
  await Deno.mkdir(path.slice(0, path.lastIndexOf("/")) || ".", { recursive: true });
  await Deno.writeTextFile(path, JSON.stringify(report, null, 2) + "\n");
  return path;
}

/**
 * Helpers shared by the test files (not a test file itself): whether the real models are in the
 * model cache, a temporary folder per test, a command's `main` run with its output captured, and
 * cosine similarity.
 *
 * @module
 */

/**
 * Whether every file of `paths` exists; warns `SKIP: ...` for each one missing (a `null` path, a
 * file the registry entry does not have, counts as missing without a warning).
 */
export async function inModelCache(...paths: (string | null | undefined)[]): Promise<boolean> {
  let all = true;
  for (const path of paths) {
    if (path === null || path === undefined) {
      all = false;
      continue;
    }
    try {
      await Deno.stat(path);
    } catch {
      console.warn(`SKIP: ${path} is not in the model cache; run "deno task models" to fetch it`);
      all = false;
    }
  }
  return all;
}

/** Runs `fn` with a fresh temporary folder (name starting `prefix`), removed afterwards. */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** What {@linkcode runCaptured} saw: the exit code and the lines printed, joined by newlines. */
export interface CapturedRun {
  /** The exit code `main` resolved to. */
  code: number;
  /** Everything printed to `console.log` and `console.error`, in order. */
  output: string;
}

/** Runs a command's `main(args)` in this process with `console.log` and `console.error` captured. */
export async function runCaptured(
  main: (args: string[]) => Promise<number>,
  args: string[],
): Promise<CapturedRun> {
  const { log, error } = console;
  const lines: string[] = [];
  console.log = console.error = (...parts: unknown[]) => lines.push(parts.join(" "));
  try {
    const code = await main(args);
    return { code, output: lines.join("\n") };
  } finally {
    console.log = log;
    console.error = error;
  }
}

/** Cosine similarity of `a` and `b` (same length), accumulated in f64. */
export function cosine(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let dot = 0;
  let na = 0;
  let nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / Math.sqrt(na * nb);
}

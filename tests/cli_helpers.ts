/**
 * Runs `deno task cli` (and other entry points) the way a user does, in a child process, for
 * the command-line tests.
 *
 * @module
 */
import assert from "node:assert/strict";

/** The CLI entry point. */
export const CLI = new URL("../tools/cli.ts", import.meta.url).pathname;

/** What a CLI run printed and its exit status. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A tools/cli.ts ...args` without colours. */
export function cli(...args: string[]): Promise<CliRun> {
  return runScript(CLI, ...args);
}

/** Runs `deno run -A <script> ...args` in a child process without colours. */
export async function runScript(script: string, ...args: string[]): Promise<CliRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

/**
 * Asserts that a run failed (with exit status `code`, or any but 0) printing one line on
 * stderr, `error: ...` matching `pattern`.
 */
export function assertOneErrorLine(
  r: { code: number; stderr: string },
  pattern: RegExp,
  code?: number,
): void {
  if (code === undefined) assert.notEqual(r.code, 0, "exit status");
  else assert.equal(r.code, code, `exit status; stderr:\n${r.stderr}`);
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one error line, got:\n${r.stderr}`);
  assert.match(lines[0], /^error: /);
  assert.match(lines[0], pattern);
}

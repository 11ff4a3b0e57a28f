/**
 * Runs `deno task cli` the way a user does, in a child process, for the CLI tests.
 *
 * @module
 */

/** The CLI entry point. */
export const CLI = new URL("../tools/cli.ts", import.meta.url).pathname;

/** What a CLI run printed and its exit status. */
export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs `deno run -A tools/cli.ts ...args` without colours. */
export async function cli(...args: string[]): Promise<CliRun> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", CLI, ...args],
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decode = (b: Uint8Array) => new TextDecoder().decode(b);
  return { code: out.code, stdout: decode(out.stdout), stderr: decode(out.stderr) };
}

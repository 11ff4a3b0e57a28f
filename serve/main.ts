/**
 * `deno task serve`: the sparsebert inference server.
 *
 *   deno run -A serve/main.ts [--config serve.json|serve.yaml] [--host H] [--port P]
 *
 * With no options it serves all-MiniLM-L6-v2 (int8 when it loads, else fp32) on
 * 127.0.0.1:5543. SIGTERM and SIGINT shut it down gracefully.
 *
 * @module
 */
import { parseArgs } from "node:util";
import {
  ConfigError,
  defaultConfig,
  loadConfigFile,
  parseConfig,
  type ServeConfig,
} from "./config.ts";
import { startServer } from "./server.ts";
import {
  flagOptions,
  type ParsedCommand,
  runCommand,
  stringOptions,
  UsageError,
} from "../tools/_command.ts";

/** Help text. */
export const HELP = `Usage: deno task serve [options]
       deno run -A serve/main.ts [options]

Serves BERT-family models over HTTP with cross-request batching:
  KServe v2 / Open Inference Protocol   /v2/health/{live,ready}, /v2/models/{name}[/ready|/infer]
  OpenAI-compatible                     POST /v1/embeddings, GET /v1/models
  Tasks                                 POST /v1/{text-classification,question-answering,
                                             token-classification}
  Docs, metrics                         GET /docs, /openapi.json, /metrics

With no configuration it serves all-minilm-l6-v2 (the int8 file when it loads, else fp32) on
127.0.0.1:5543.

Options:
  --config FILE   JSON or YAML configuration (models, limits, batching; see serve/config.ts)
  --host HOST     listen address (default 127.0.0.1; overrides the file)
  --port PORT     listen port (default 5543; 0 picks a free one; overrides the file)
  --threads N     kernel threads per worker process (default: physical cores split
                  between the instances)
  --model NAME    serve this registry model or .onnx file instead of the default
  --quiet         no per-request log lines
  --max-batch-tokens N
                  bound every model's batches to N padded tokens (TEI's option; default
                  maxBatch x maxLength); refused when one maxLength input cannot fit
  --auto-truncate cut over-long inputs unless a request says "truncate": false (default:
                  such an input is a 422 error)
  -h, --help      show this help

Environment:
  SPARSEBERT_API_KEY   require "Authorization: Bearer <key>" on all but health/docs routes
  SPARSEBERT_THREADS   kernel threads when --threads and the file do not say

Signals: SIGTERM/SIGINT stop accepting, finish in-flight requests, then exit.`;

/** The options `HELP` describes, as `parseArgs` takes them (`--help` aside). */
const OPTIONS = {
  ...stringOptions("config", "host", "port", "threads", "model", "max-batch-tokens"),
  ...flagOptions("quiet", "auto-truncate"),
} as const;

/** Builds the configuration from the command line; `null` for `--help`. */
export async function configFromArgs(args: string[]): Promise<ServeConfig | null> {
  const { values } = parseArgs({
    args,
    options: { ...OPTIONS, help: { type: "boolean", short: "h", default: false } },
  });
  return values.help ? null : await configFromValues(values);
}

/** The configuration the parsed options give: the file's or the default, overridden. */
async function configFromValues(
  values: ParsedCommand<{ options: typeof OPTIONS }>["values"],
): Promise<ServeConfig> {
  const config = values.config !== undefined
    ? await loadConfigFile(values.config)
    : defaultConfig();
  const overrides: Record<string, unknown> = {};
  if (values.host !== undefined) overrides.host = values.host;
  for (const key of ["port", "threads"] as const) {
    const text = values[key];
    if (text === undefined) continue;
    const n = Number(text);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(n)) {
      throw new ConfigError(`--${key} must be a non-negative integer, got "${text}"`);
    }
    overrides[key] = n;
  }
  if (values.quiet) overrides.log = false;
  if (values["auto-truncate"]) overrides.autoTruncate = true;
  const merged: Record<string, unknown> = { ...config, ...overrides };
  if (values.model !== undefined) {
    merged.models = [{
      name: values.model.split("/").at(-1)!.replace(/\.onnx$/, ""),
      model: values.model,
    }];
  }
  const tokens = values["max-batch-tokens"];
  if (tokens !== undefined) {
    if (!/^\d+$/.test(tokens)) {
      throw new ConfigError(`--max-batch-tokens must be a positive integer, got "${tokens}"`);
    }
    const models = merged.models as Record<string, unknown>[];
    merged.models = models.map((m) => ({ ...m, maxBatchTokens: Number(tokens) }));
  }
  return parseConfig(merged);
}

function main(): Promise<number> {
  return runCommand(Deno.args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
    let config: ServeConfig;
    try {
      config = await configFromValues(values);
    } catch (err) {
      throw new UsageError((err as Error).message); // a bad option or configuration file: 2
    }
    const server = await startServer(config);
    const stop = (): void => {
      server.shutdown();
    };
    Deno.addSignalListener("SIGTERM", stop);
    Deno.addSignalListener("SIGINT", stop);
    await server.finished;
    return 0;
  });
}

if (import.meta.main) {
  Deno.exit(await main());
}

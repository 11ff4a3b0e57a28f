/**
 * A one-shot smoke check of a running sparsebert server (a container, a Pod behind a port
 * forward, or a KServe InferenceService): waits for `GET /v2/health/ready`, then sends one
 * OpenAI `/v1/embeddings` request and one KServe v2 `/infer` request and checks the shapes.
 *
 *   deno run -A deploy/smoke.ts [URL] [--model NAME] [--wait SECONDS]
 *
 * The image build runs it against the server it just set up, so an image that cannot serve
 * fails to build. Exits 0 when every check passes, 1 otherwise.
 *
 * @module
 */
import { runCommand, stringOptions, UsageError } from "../tools/_command.ts";

const HELP = `Usage: deno run -A deploy/smoke.ts [URL] [options]

Checks a running server: /v2/health/ready, one /v1/embeddings and one /v2/models/NAME/infer.

Arguments:
  URL             server base URL (default http://127.0.0.1:8080)

Options:
  --model NAME    served model name (default all-minilm-l6-v2)
  --wait SECONDS  how long to wait for readiness (default 120)
  -h, --help      show this help

Environment:
  SPARSEBERT_API_KEY   sent as "Authorization: Bearer <key>" when set`;

/** What one smoke run found. */
export interface SmokeResult {
  /** Seconds until /v2/health/ready answered 200. */
  readySeconds: number;
  /** Embedding width from /v1/embeddings. */
  dimensions: number;
  /** Output tensor shape from the KServe v2 infer route. */
  v2Shape: number[];
}

/**
 * Waits for readiness, then checks one embeddings and one v2 infer request.
 *
 * @throws Error naming the route and quoting the response when a check fails.
 */
export async function smoke(
  base: string,
  options: { model?: string; waitSeconds?: number; apiKey?: string | null } = {},
): Promise<SmokeResult> {
  const model = options.model ?? "all-minilm-l6-v2";
  const waitMs = (options.waitSeconds ?? 120) * 1000;
  const url = base.replace(/\/$/, "");
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (options.apiKey) headers.authorization = `Bearer ${options.apiKey}`;
  const start = performance.now();
  let last = "no answer";
  for (;;) {
    try {
      const res = await fetch(`${url}/v2/health/ready`, { signal: AbortSignal.timeout(5000) });
      last = `HTTP ${res.status} ${(await res.text()).slice(0, 200)}`;
      if (res.status === 200) break;
    } catch (error) {
      last = (error as Error).message;
    }
    if (performance.now() - start > waitMs) {
      throw new Error(`"${url}/v2/health/ready" not ready after ${waitMs / 1000} s: ${last}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  const readySeconds = (performance.now() - start) / 1000;

  const texts = ["sparsebert runs on Kubernetes.", "KServe speaks the v2 protocol."];
  const embeddings = await post(`${url}/v1/embeddings`, headers, { model, input: texts });
  const data = (embeddings as { data?: { embedding?: number[] }[] }).data;
  const dimensions = data?.[0]?.embedding?.length ?? 0;
  if (data?.length !== texts.length || dimensions === 0) {
    throw new Error(`"/v1/embeddings" returned an unexpected body: ${quote(embeddings)}`);
  }

  const infer = await post(`${url}/v2/models/${model}/infer`, headers, {
    inputs: [{ name: "text", datatype: "BYTES", shape: [texts.length], data: texts }],
  });
  const outputs = (infer as { outputs?: { shape?: number[] }[] }).outputs;
  const v2Shape = outputs?.[0]?.shape ?? [];
  if (v2Shape[0] !== texts.length || v2Shape[1] !== dimensions) {
    throw new Error(`"/v2/models/${model}/infer" returned an unexpected body: ${quote(infer)}`);
  }
  return { readySeconds, dimensions, v2Shape };
}

async function post(
  url: string,
  headers: Record<string, string>,
  body: unknown,
): Promise<unknown> {
  const res = await fetch(url, {
    method: "POST",
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(60_000),
  });
  const text = await res.text();
  if (res.status !== 200) throw new Error(`"${url}" answered HTTP ${res.status}: ${text}`);
  return JSON.parse(text);
}

function quote(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

/** Runs the command line; resolves to the exit code. */
export function main(args: string[]): Promise<number> {
  const options = { ...stringOptions("model"), wait: { type: "string", default: "120" } } as const;
  const spec = { help: HELP, parse: { allowPositionals: true, options } };
  return runCommand(args, spec, async ({ values, positionals }) => {
    const waitSeconds = Number(values.wait);
    if (!(waitSeconds > 0)) {
      throw new UsageError(`--wait must be a positive number of seconds, got "${values.wait}"`);
    }
    const base = positionals[0] ?? "http://127.0.0.1:8080";
    const result = await smoke(base, {
      model: values.model,
      waitSeconds,
      apiKey: Deno.env.get("SPARSEBERT_API_KEY") ?? null,
    });
    console.log(`smoke ok: ${base} ${JSON.stringify(result)}`);
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

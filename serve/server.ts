/**
 * The sparsebert HTTP server: routing, optional bearer auth, request ids, one JSON log line
 * per request, metrics, the concurrency limit, model start-up and graceful shutdown.
 *
 * ```ts
 * const server = await startServer(defaultConfig());
 * // ... later
 * await server.shutdown(); // finishes in-flight requests first
 * ```
 *
 * @module
 */
import denoJson from "../deno.json" with { type: "json" };
import { isLoopback, type ServeConfig } from "./config.ts";
import { errorResponse, type ErrorStyle, HttpError, jsonResponse } from "./http.ts";
import { Metrics } from "./metrics.ts";
import { ServedModel } from "./models.ts";
import { docsRoutes } from "./routes/docs.ts";
import { OPENAI_ROUTES } from "./routes/openai.ts";
import { TASK_ROUTES } from "./routes/tasks.ts";
import { TEI_ROUTES } from "./routes/tei.ts";
import { V2_ROUTES } from "./routes/v2.ts";
import type { LogFields, Route, RouteContext, ServerState } from "./state.ts";

/** Options of {@linkcode startServer}. */
export interface StartServerOptions {
  /** Bearer token required on protected routes; default `SPARSEBERT_API_KEY` or none. */
  apiKey?: string | null;
  /** Sink for log lines (one JSON object per line; per-request lines only when `config.log`). */
  log?: (line: string) => void;
  /** Called once the server listens, before the models are loaded. */
  onListen?: (address: { host: string; port: number }) => void;
}

interface CompiledRoute {
  route: Route;
  segments: string[];
}

/** A running server. */
export interface SparsebertServer {
  /** Address it listens on. */
  readonly address: { host: string; port: number };
  /** Base URL, e.g. `http://127.0.0.1:5543`. */
  readonly url: string;
  /** The server state seen by routes. */
  readonly state: ServerState;
  /** Stops accepting, finishes in-flight requests and queued batches, stops the workers. */
  shutdown(): Promise<void>;
  /** Resolves once the server has shut down (requests finished, workers stopped). */
  readonly finished: Promise<void>;
}

function compile(routes: Route[]): CompiledRoute[] {
  return routes.map((route) => ({ route, segments: route.path.split("/").filter(Boolean) }));
}

function match(
  table: CompiledRoute[],
  method: string,
  path: string,
): { route: Route; params: Record<string, string> } | { allowed: string[] } | null {
  const parts = path.split("/").filter(Boolean);
  const allowed: string[] = [];
  for (const { route, segments } of table) {
    if (segments.length !== parts.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < segments.length; i++) {
      const s = segments[i];
      if (s.startsWith("{")) {
        try {
          params[s.slice(1, -1)] = decodeURIComponent(parts[i]);
        } catch {
          ok = false;
          break;
        }
      } else if (s !== parts[i]) {
        ok = false;
        break;
      }
    }
    if (!ok) continue;
    if (route.method === method || (method === "HEAD" && route.method === "GET")) {
      return { route, params };
    }
    allowed.push(route.method);
  }
  return allowed.length > 0 ? { allowed } : null;
}

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  if (x.length !== y.length) return false;
  let diff = 0;
  for (let i = 0; i < x.length; i++) diff |= x[i] ^ y[i];
  return diff === 0;
}

function checkAuth(request: Request, apiKey: string): void {
  const header = request.headers.get("authorization");
  const token = header?.match(/^Bearer\s+(.+)$/i)?.[1]?.trim();
  if (token === undefined || !timingSafeEqual(token, apiKey)) {
    throw new HttpError(
      401,
      header === null
        ? "Missing Authorization header; send Authorization: Bearer <SPARSEBERT_API_KEY>"
        : "Invalid bearer token",
      { code: "invalid_api_key", headers: { "www-authenticate": 'Bearer realm="sparsebert"' } },
    );
  }
}

function envApiKey(): string | null {
  try {
    return Deno.env.get("SPARSEBERT_API_KEY") || null;
  } catch {
    return null;
  }
}

/**
 * Starts the HTTP server (health answers at once, readiness once the models are loaded),
 * then loads every configured model into its workers.
 *
 * @throws Error naming the model when one cannot be loaded (the server is shut down first).
 */
export async function startServer(
  config: ServeConfig,
  options: StartServerOptions = {},
): Promise<SparsebertServer> {
  const apiKey = options.apiKey === undefined ? envApiKey() : options.apiKey;
  const write = options.log ?? ((line: string) => console.log(line));
  const event = (fields: Record<string, unknown>): void =>
    write(JSON.stringify({ time: new Date().toISOString(), ...fields }));
  const metrics = new Metrics();
  const models = new Map<string, ServedModel>();
  let ready = false;
  let draining = false;
  const accepting = (): boolean => ready && !draining;
  const state: ServerState = {
    config,
    models,
    metrics,
    version: denoJson.version,
    ready: () => accepting() && [...models.values()].every((m) => m.live),
    accepting,
    draining: () => draining,
  };
  const routes: Route[] = [];
  routes.push(
    ...V2_ROUTES,
    ...OPENAI_ROUTES,
    ...TASK_ROUTES,
    ...TEI_ROUTES,
    ...docsRoutes(() => routes),
  );
  const table = compile(routes);

  const handler = async (request: Request): Promise<Response> => {
    const started = performance.now();
    const incoming = request.headers.get("x-request-id");
    const requestId = incoming !== null && REQUEST_ID.test(incoming)
      ? incoming
      : crypto.randomUUID();
    let path = "/";
    try {
      path = new URL(request.url).pathname;
    } catch { /* keep "/" */ }
    const found = match(table, request.method, path);
    const routeLabel = found !== null && "route" in found ? found.route.path : "unmatched";
    const style: ErrorStyle = path.startsWith("/v2") ? "v2" : "openai";
    const log: LogFields = {};
    metrics.requestStarted();
    let response: Response;
    let error: HttpError | null = null;
    try {
      if (found === null) {
        throw new HttpError(404, `No route for ${request.method} ${path}; see /docs`, {
          code: "not_found",
        });
      }
      if (!("route" in found)) {
        throw new HttpError(
          405,
          `Method ${request.method} is not allowed on ${path}; use ${found.allowed.join(", ")}`,
          { code: "method_not_allowed", headers: { allow: found.allowed.join(", ") } },
        );
      }
      if (metrics.inflight > config.limits.maxConcurrentRequests) {
        metrics.rejected("too_many_requests");
        throw new HttpError(
          503,
          `Over ${config.limits.maxConcurrentRequests} requests in flight; retry later`,
          { code: "overloaded", headers: { "retry-after": String(config.retryAfterS) } },
        );
      }
      if (found.route.auth && apiKey !== null) checkAuth(request, apiKey);
      const context: RouteContext = {
        request,
        params: found.params,
        state,
        requestId,
        signal: request.signal,
        log,
      };
      response = await found.route.handler(context);
    } catch (err) {
      error = err instanceof HttpError
        ? err
        : new HttpError(500, `Internal error: ${(err as Error)?.message ?? String(err)}`, {
          code: "internal_error",
          cause: err,
        });
      response = errorResponse(
        error,
        found !== null && "route" in found ? found.route.style : style,
      );
    }
    response.headers.set("x-request-id", requestId);
    const seconds = (performance.now() - started) / 1000;
    metrics.requestFinished(routeLabel, request.method, response.status, seconds);
    if (!config.log) return response;
    event({
      level: response.status >= 500 ? "error" : response.status >= 400 ? "warn" : "info",
      id: requestId,
      method: request.method,
      path,
      route: routeLabel,
      status: response.status,
      ms: Math.round(seconds * 10000) / 10,
      ...log,
      ...(error !== null ? { error: error.message } : {}),
    });
    return response;
  };

  let resolveListen: (address: { host: string; port: number }) => void;
  const listening = new Promise<{ host: string; port: number }>((r) => resolveListen = r);
  const http = Deno.serve({
    hostname: config.host,
    port: config.port,
    onListen: ({ hostname, port }) => resolveListen({ host: hostname, port }),
    onError: (err) => {
      event({ level: "error", event: "handler_error", error: (err as Error)?.message });
      return jsonResponse({ error: { message: "Internal error", type: "server_error" } }, 500);
    },
  }, handler);
  const address = await listening;
  const url = `http://${
    address.host.includes(":") ? `[${address.host}]` : address.host
  }:${address.port}`;
  event({ level: "info", event: "listening", url, models: config.models.map((m) => m.name) });
  if (!isLoopback(config.host)) {
    event({
      level: "warn",
      event: "not_loopback",
      message: `Listening on ${config.host}, reachable from other machines` +
        (apiKey === null ? "; set SPARSEBERT_API_KEY to require a token" : ""),
    });
  }
  options.onListen?.(address);

  let shutdownPromise: Promise<void> | null = null;
  let resolveFinished!: () => void;
  const finished = new Promise<void>((resolve) => resolveFinished = resolve);
  // The HTTP server only ends on its own through shutdown(); if it ever does, say so.
  http.finished.then(() => {
    if (shutdownPromise === null) resolveFinished();
  });
  const shutdown = (): Promise<void> => {
    if (shutdownPromise !== null) return shutdownPromise;
    draining = true;
    event({ level: "info", event: "shutdown", inflight: metrics.inflight });
    shutdownPromise = (async () => {
      const limit = config.shutdownTimeoutMs;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<"timeout">((r) => timer = setTimeout(() => r("timeout"), limit));
      // In-flight requests finish (their batches still run); then the queues drain.
      const drained = (async () => {
        await http.shutdown();
        await Promise.all([...models.values()].map((m) => m.drain()));
      })();
      const outcome = await Promise.race([drained.then(() => "done" as const), timeout]);
      clearTimeout(timer);
      for (const model of models.values()) model.close();
      event({ level: "info", event: "stopped", outcome });
      resolveFinished();
    })();
    return shutdownPromise;
  };

  try {
    if (config.threads > 0) event({ level: "info", event: "threads", threads: config.threads });
    // Every instance is a process with its own thread pool; by default they split the cores.
    const share = config.models.reduce((n, m) => n + m.instances, 0);
    for (const modelConfig of config.models) {
      const t0 = performance.now();
      const model = await ServedModel.start(modelConfig, {
        threads: config.threads,
        share,
        queueTimeoutMs: config.limits.queueTimeoutMs,
        maxTextChars: config.limits.maxTextChars,
        retryAfterS: config.retryAfterS,
        metrics,
        log: (fields) => event({ level: "warn", ...fields }),
      });
      models.set(modelConfig.name, model);
      event({
        level: model.info.fallbackReason ? "warn" : "info",
        event: "model_loaded",
        name: modelConfig.name,
        task: modelConfig.task,
        loaded: model.info.loaded,
        ...(model.info.fallbackReason ? { fallback_reason: model.info.fallbackReason } : {}),
        instances: modelConfig.instances,
        pids: model.workerPids,
        threads: model.info.threads,
        hidden: model.info.hiddenSize,
        reserved_batch: `${model.info.reserved.batch}x${model.info.reserved.seq}`,
        workspace_mib: Math.round(model.info.reserved.workspaceBytes / 2 ** 20),
        seconds: Math.round((performance.now() - t0) / 100) / 10,
      });
    }
  } catch (err) {
    await shutdown();
    throw new Error(`Cannot start the server: ${(err as Error).message}`, { cause: err });
  }
  ready = true;
  event({ level: "info", event: "ready", url });
  return {
    address,
    url,
    state,
    shutdown,
    finished,
  };
}

/**
 * Types shared by the server and its routes: the server state a handler sees, the request
 * context, and the route table entry.
 *
 * @module
 */
import type { ServeConfig, ServeTask } from "./config.ts";
import { type ErrorStyle, HttpError, quote } from "./http.ts";
import type { Metrics } from "./metrics.ts";
import type { ServedModel } from "./models.ts";

/** The server as the routes see it. */
export interface ServerState {
  /** Effective configuration. */
  readonly config: ServeConfig;
  /** Served models by name. */
  readonly models: ReadonlyMap<string, ServedModel>;
  /** Metrics registry. */
  readonly metrics: Metrics;
  /** The server version reported by metadata routes. */
  readonly version: string;
  /**
   * True once every model is loaded, while each has a live worker, until shutdown starts
   * (readiness; false while a model's only worker restarts after a fault).
   */
  ready(): boolean;
  /**
   * True once every model is loaded and until shutdown starts: inference requests are taken
   * (while a worker restarts they wait in the queue for it).
   */
  accepting(): boolean;
  /** True once shutdown has started. */
  draining(): boolean;
}

/** Fields a handler adds to the request's log line. */
export interface LogFields {
  /** Model used. */
  model?: string;
  /** Inputs in the request. */
  inputs?: number;
  /** Tokens run. */
  tokens?: number;
}

/** What a route handler gets. */
export interface RouteContext {
  /** The request. */
  request: Request;
  /** Path parameters, e.g. `{ name: "minilm" }`. */
  params: Record<string, string>;
  /** The server. */
  state: ServerState;
  /** The request id (also in the `x-request-id` response header). */
  requestId: string;
  /** Aborted when the client disconnects. */
  signal: AbortSignal;
  /** Extra log fields. */
  log: LogFields;
}

/** One route. */
export interface Route {
  /** HTTP method. */
  method: "GET" | "POST";
  /** Path template with `{param}` segments, e.g. `/v2/models/{name}/infer`. */
  path: string;
  /** Error body style. */
  style: ErrorStyle;
  /** Whether the bearer token is required when one is configured. */
  auth: boolean;
  /** One-line description (for the docs page). */
  summary: string;
  /** The handler. */
  handler(context: RouteContext): Promise<Response> | Response;
}

/**
 * Finds a served model by name or alias.
 *
 * @throws HttpError 404 naming the model and listing the served ones.
 */
export function findModel(
  state: ServerState,
  name: string,
  param: string | null,
): ServedModel {
  const direct = state.models.get(name);
  if (direct !== undefined) return direct;
  for (const model of state.models.values()) {
    if (model.config.aliases.includes(name)) return model;
  }
  throw new HttpError(
    404,
    `Model ${quote(name)} is not served; served models: ${[...state.models.keys()].join(", ")}`,
    { param, code: "model_not_found" },
  );
}

/**
 * The model a task request names (`model` field), or the only/first model of that task when
 * the field is absent.
 *
 * @throws HttpError 400 for a wrong type, 404 for an unknown model or one of another task.
 */
export function modelForTask(
  state: ServerState,
  name: unknown,
  task: ServeTask,
): ServedModel {
  if (name !== undefined && typeof name !== "string") {
    throw new HttpError(400, `"model" must be a string, got ${quote(name)}`, { param: "model" });
  }
  if (name === undefined) {
    for (const model of state.models.values()) if (model.config.task === task) return model;
    throw new HttpError(404, `No ${task} model is served; served models: ${describe(state)}`, {
      param: "model",
      code: "model_not_found",
    });
  }
  const model = findModel(state, name, "model");
  if (model.config.task !== task) {
    throw new HttpError(
      404,
      `Model ${quote(name)} is a ${model.config.task} model, not ${task}; ${task} models: ${
        [...state.models.values()].filter((m) => m.config.task === task).map((m) => m.config.name)
          .join(", ") || "none"
      }`,
      { param: "model", code: "model_not_found" },
    );
  }
  return model;
}

function describe(state: ServerState): string {
  return [...state.models.values()].map((m) => `${m.config.name} (${m.config.task})`).join(", ");
}

/**
 * Refuses an inference request while the server is not ready or is shutting down.
 *
 * @throws HttpError 503 with `Retry-After`.
 */
export function requireServing(state: ServerState): void {
  if (state.draining()) {
    throw new HttpError(503, "The server is shutting down", {
      code: "shutting_down",
      headers: { "retry-after": String(state.config.retryAfterS) },
    });
  }
  if (!state.accepting()) {
    throw new HttpError(503, "The server is still loading its models", {
      code: "not_ready",
      headers: { "retry-after": String(state.config.retryAfterS) },
    });
  }
}

/**
 * Refuses a request early when the model's queue is already full (before its body is read).
 *
 * @throws HttpError 429 with `Retry-After`.
 */
export function requireRoom(state: ServerState, model: ServedModel): void {
  if (!model.hasRoom(1)) {
    state.metrics.rejected("queue_full");
    throw new HttpError(
      429,
      `Model "${model.config.name}" is overloaded: its queue is full (${model.queueDepth} inputs); retry later`,
      { code: "queue_full", headers: { "retry-after": String(state.config.retryAfterS) } },
    );
  }
}

/**
 * Request-body helpers shared by the JSON routes: reading a JSON object body under the
 * server's limits (and the model it names), and checking text inputs and flags with errors
 * naming the field.
 *
 * @module
 */
import {
  HttpError,
  parseJson,
  quote,
  readBody,
  rejectUnknownKeys,
  requireJsonContentType,
  requireObject,
  typeName,
} from "../http.ts";
import type { ServeTask } from "../config.ts";
import type { ServedModel } from "../models.ts";
import { modelForTask, requireRoom, requireServing, type RouteContext } from "../state.ts";

/**
 * Reads the request's JSON object body under the configured limits and rejects unknown keys.
 *
 * @throws HttpError 400, 408, 413 or 415.
 */
export async function readJsonObject(
  context: RouteContext,
  allowed: readonly string[],
): Promise<Record<string, unknown>> {
  requireJsonContentType(context.request);
  const limits = context.state.config.limits;
  const bytes = await readBody(context.request, {
    maxBytes: limits.maxBodyBytes,
    timeoutMs: limits.bodyTimeoutMs,
  });
  const body = requireObject(parseJson(bytes), "Request body");
  rejectUnknownKeys(body, allowed);
  return body;
}

/**
 * The start of a JSON route that runs a model: the server is serving, the body is read
 * ({@linkcode readJsonObject} with `allowed` keys), its `"model"` names one serving `task`
 * (logged), and that model's queue has room.
 *
 * @throws HttpError as those checks do (400, 404, 408, 413, 415, 429, 503).
 */
export async function readModelRequest(
  context: RouteContext,
  task: ServeTask,
  allowed: readonly string[],
): Promise<{ body: Record<string, unknown>; model: ServedModel }> {
  const { state } = context;
  requireServing(state);
  const body = await readJsonObject(context, allowed);
  const model = modelForTask(state, body.model, task);
  context.log.model = model.config.name;
  requireRoom(state, model);
  return { body, model };
}

/**
 * A string or a non-empty array of strings, as a list; `single` tells which it was.
 *
 * @throws HttpError 400 naming the field or element; 422 over the input limit.
 */
export function textList(
  value: unknown,
  param: string,
  maxInputs: number,
): { texts: string[]; single: boolean } {
  if (typeof value === "string") return { texts: [value], single: true };
  if (!Array.isArray(value)) {
    throw new HttpError(
      400,
      `"${param}" must be a string or an array of strings, got ${typeName(value)}`,
      { param },
    );
  }
  if (value.length === 0) {
    throw new HttpError(400, `"${param}" is an empty array; send at least one text`, { param });
  }
  checkCount(value.length, param, maxInputs);
  value.forEach((text, i) => {
    if (typeof text !== "string") {
      throw new HttpError(
        400,
        `"${param}[${i}]" must be a string, got ${typeName(text)} ${quote(text)}`,
        { param: `${param}[${i}]` },
      );
    }
  });
  return { texts: value as string[], single: false };
}

/**
 * Refuses more than `maxInputs` inputs.
 *
 * @throws HttpError 422 quoting the limit.
 */
export function checkCount(count: number, param: string, maxInputs: number): void {
  if (count > maxInputs) {
    throw new HttpError(
      422,
      `"${param}" has ${count} inputs, over the limit of ${maxInputs} per request`,
      { param, code: "too_many_inputs" },
    );
  }
}

/**
 * An optional boolean field.
 *
 * @throws HttpError 400 naming the field for another type.
 */
export function optionalBool(body: Record<string, unknown>, key: string, dflt: boolean): boolean {
  const value = body[key];
  if (value === undefined) return dflt;
  if (typeof value !== "boolean") {
    throw new HttpError(400, `"${key}" must be true or false, got ${quote(value)}`, {
      param: key,
    });
  }
  return value;
}

/** A request's truncation: whether to cut over-long inputs, and from which end. */
export interface Truncation {
  /** Cut instead of refusing with 422. */
  truncate: boolean;
  /** `"right"` keeps the start (default), `"left"` keeps the end. */
  direction: "left" | "right";
}

/**
 * `truncate` (default: the server's `autoTruncate`) and TEI's `truncation_direction`
 * (`"left"`/`"right"`, either case).
 *
 * @throws HttpError 400 naming the field.
 */
export function truncationOf(context: RouteContext, body: Record<string, unknown>): Truncation {
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  const raw = body.truncation_direction ?? "right";
  const direction = typeof raw === "string" ? raw.toLowerCase() : raw;
  if (direction !== "left" && direction !== "right") {
    throw new HttpError(
      400,
      `"truncation_direction" must be "left" or "right", got ${quote(raw)}`,
      { param: "truncation_direction" },
    );
  }
  return { truncate, direction };
}

/**
 * An optional integer field in `min..max`.
 *
 * @throws HttpError 400 naming the field.
 */
export function optionalInt(
  body: Record<string, unknown>,
  key: string,
  range: { min: number; max: number; dflt: number },
): number {
  const value = body[key];
  if (value === undefined) return range.dflt;
  if (
    typeof value !== "number" || !Number.isSafeInteger(value) || value < range.min ||
    value > range.max
  ) {
    throw new HttpError(
      400,
      `"${key}" must be an integer in ${range.min}..${range.max}, got ${quote(value)}`,
      { param: key },
    );
  }
  return value;
}

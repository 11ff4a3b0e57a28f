/**
 * OpenAI-compatible routes: `POST /v1/embeddings` (input: a string, an array of strings, an
 * array of token ids or an array of such arrays; `encoding_format` `float` or `base64`;
 * `dimensions` shortens Matryoshka-style: truncate, then renormalise) and `GET /v1/models`.
 *
 * @module
 */
import { l2NormalizeRows } from "../../ops/pooling.ts";
import { HttpError, jsonResponse, quote, typeName } from "../http.ts";
import type { TokenRow } from "../models.ts";
import type { Route, RouteContext } from "../state.ts";
import { checkCount, optionalInt, readModelRequest, truncationOf } from "./_input.ts";

const EMBEDDING_KEYS = [
  "input",
  "model",
  "encoding_format",
  "dimensions",
  "user",
  "truncate",
  "truncation_direction",
];

function base64(values: Float32Array): string {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return (bytes as Uint8Array & { toBase64(): string }).toBase64();
}

/**
 * Matryoshka shortening, as OpenAI's `dimensions`: the first `dimensions` components, scaled
 * back to unit length. The full width is returned as it is.
 */
export function shorten(embedding: Float32Array, dimensions: number): Float32Array {
  if (dimensions === embedding.length) return embedding;
  const head = embedding.slice(0, dimensions);
  l2NormalizeRows(head, 1, dimensions);
  return head;
}

function tokenArray(value: unknown[], param: string): Int32Array {
  const ids = new Int32Array(value.length);
  value.forEach((id, i) => {
    if (typeof id !== "number" || !Number.isSafeInteger(id)) {
      throw new HttpError(
        400,
        `"${param}[${i}]" must be an integer token id, got ${typeName(id)} ${quote(id)}`,
        { param: `${param}[${i}]` },
      );
    }
    if (id < 0 || id > 0x7fffffff) {
      throw new HttpError(400, `"${param}[${i}]" is token id ${id}, outside the vocabulary`, {
        param: `${param}[${i}]`,
      });
    }
    ids[i] = id;
  });
  return ids;
}

/** Texts, or token id rows, of an embedding request. */
export type ParsedInput =
  | { kind: "texts"; texts: string[]; single: boolean }
  | { kind: "tokens"; rows: TokenRow[]; single: boolean };

/**
 * An embedding request's `input`: a string, strings, token ids or token id arrays.
 *
 * @throws HttpError 400 naming the field.
 */
export function parseInput(value: unknown, maxInputs: number, param = "input"): ParsedInput {
  if (value === undefined) {
    throw new HttpError(400, `"${param}" is required`, { param });
  }
  if (typeof value === "string") return { kind: "texts", texts: [value], single: true };
  if (!Array.isArray(value)) {
    throw new HttpError(
      400,
      `"${param}" must be a string, an array of strings, or token id arrays; got ${
        typeName(value)
      }`,
      { param },
    );
  }
  if (value.length === 0) {
    throw new HttpError(400, `"${param}" is an empty array; send at least one input`, {
      param,
    });
  }
  if (typeof value[0] === "number") {
    // One sequence of token ids.
    checkCount(1, param, maxInputs);
    const ids = tokenArray(value, param);
    return {
      kind: "tokens",
      rows: [{ ids, typeIds: new Int32Array(ids.length), mask: null }],
      single: true,
    };
  }
  checkCount(value.length, param, maxInputs);
  if (Array.isArray(value[0])) {
    const rows = value.map((row, i) => {
      if (!Array.isArray(row)) {
        throw new HttpError(
          400,
          `"${param}[${i}]" must be an array of token ids like ${param}[0], got ${typeName(row)}`,
          { param: `${param}[${i}]` },
        );
      }
      const ids = tokenArray(row, `${param}[${i}]`);
      return { ids, typeIds: new Int32Array(ids.length), mask: null };
    });
    return { kind: "tokens", rows, single: false };
  }
  value.forEach((text, i) => {
    if (typeof text !== "string") {
      throw new HttpError(
        400,
        `"${param}[${i}]" must be a string like ${param}[0], got ${typeName(text)} ${quote(text)}`,
        { param: `${param}[${i}]` },
      );
    }
  });
  return { kind: "texts", texts: value as string[], single: false };
}

async function embeddings(context: RouteContext): Promise<Response> {
  const { body, model } = await readModelRequest(context, "feature-extraction", EMBEDDING_KEYS);
  const format = body.encoding_format ?? "float";
  if (format !== "float" && format !== "base64") {
    throw new HttpError(
      400,
      `"encoding_format" must be "float" or "base64", got ${quote(format)}`,
      { param: "encoding_format" },
    );
  }
  const width = model.info.hiddenSize;
  const dimensions = optionalInt(body, "dimensions", { min: 1, max: width, dflt: width });
  if (body.user !== undefined && typeof body.user !== "string") {
    throw new HttpError(400, `"user" must be a string, got ${typeName(body.user)}`, {
      param: "user",
    });
  }
  const { truncate, direction } = truncationOf(context, body);
  const input = parseInput(body.input, context.state.config.limits.maxInputs);
  let rows: TokenRow[];
  if (input.kind === "texts") {
    rows = await model.tokenize(input.texts, {
      truncate,
      direction,
      param: "input",
      single: input.single,
    });
  } else {
    rows = input.rows;
    model.checkTokenRows(rows, "input", input.single);
  }
  context.log.inputs = rows.length;
  const result = await model.embedRows(rows, context.signal);
  context.log.tokens = result.tokens;
  return jsonResponse({
    object: "list",
    data: result.embeddings.map((embedding, index) => ({
      object: "embedding",
      index,
      embedding: format === "base64"
        ? base64(shorten(embedding, dimensions))
        : Array.from(shorten(embedding, dimensions)),
    })),
    model: model.config.name,
    usage: { prompt_tokens: result.tokens, total_tokens: result.tokens },
  });
}

function models(context: RouteContext): Response {
  const created = Math.floor(Date.now() / 1000);
  const data = [];
  for (const model of context.state.models.values()) {
    for (const id of [model.config.name, ...model.config.aliases]) {
      data.push({
        id,
        object: "model",
        created,
        owned_by: "sparsebert",
        task: model.config.task,
      });
    }
  }
  return jsonResponse({ object: "list", data });
}

/** The OpenAI-compatible routes. */
export const OPENAI_ROUTES: Route[] = [
  {
    method: "POST",
    path: "/v1/embeddings",
    style: "openai",
    auth: true,
    summary: "OpenAI-compatible embeddings (input string, array, or token ids; float or base64)",
    handler: embeddings,
  },
  {
    method: "GET",
    path: "/v1/models",
    style: "openai",
    auth: true,
    summary: "OpenAI-compatible list of served models",
    handler: models,
  },
];

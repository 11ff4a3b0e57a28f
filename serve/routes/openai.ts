/**
 * OpenAI-compatible routes: `POST /v1/embeddings` (input: a string, an array of strings, an
 * array of token ids or an array of such arrays; `encoding_format` `float` or `base64`) and
 * `GET /v1/models`.
 *
 * @module
 */
import { HttpError, jsonResponse, quote, typeName } from "../http.ts";
import type { TokenRow } from "../models.ts";
import {
  modelForTask,
  requireRoom,
  requireServing,
  type Route,
  type RouteContext,
} from "../state.ts";
import { checkCount, optionalBool, readJsonObject } from "./_input.ts";

const EMBEDDING_KEYS = ["input", "model", "encoding_format", "dimensions", "user", "truncate"];

function base64(values: Float32Array): string {
  const bytes = new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
  return (bytes as Uint8Array & { toBase64(): string }).toBase64();
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

type ParsedInput =
  | { kind: "texts"; texts: string[]; single: boolean }
  | { kind: "tokens"; rows: TokenRow[]; single: boolean };

function parseInput(value: unknown, maxInputs: number): ParsedInput {
  if (value === undefined) {
    throw new HttpError(400, `"input" is required`, { param: "input" });
  }
  if (typeof value === "string") return { kind: "texts", texts: [value], single: true };
  if (!Array.isArray(value)) {
    throw new HttpError(
      400,
      `"input" must be a string, an array of strings, or token id arrays; got ${typeName(value)}`,
      { param: "input" },
    );
  }
  if (value.length === 0) {
    throw new HttpError(400, `"input" is an empty array; send at least one input`, {
      param: "input",
    });
  }
  if (typeof value[0] === "number") {
    // One sequence of token ids.
    checkCount(1, "input", maxInputs);
    const ids = tokenArray(value, "input");
    return {
      kind: "tokens",
      rows: [{ ids, typeIds: new Int32Array(ids.length), mask: null }],
      single: true,
    };
  }
  checkCount(value.length, "input", maxInputs);
  if (Array.isArray(value[0])) {
    const rows = value.map((row, i) => {
      if (!Array.isArray(row)) {
        throw new HttpError(
          400,
          `"input[${i}]" must be an array of token ids like input[0], got ${typeName(row)}`,
          { param: `input[${i}]` },
        );
      }
      const ids = tokenArray(row, `input[${i}]`);
      return { ids, typeIds: new Int32Array(ids.length), mask: null };
    });
    return { kind: "tokens", rows, single: false };
  }
  value.forEach((text, i) => {
    if (typeof text !== "string") {
      throw new HttpError(
        400,
        `"input[${i}]" must be a string like input[0], got ${typeName(text)} ${quote(text)}`,
        { param: `input[${i}]` },
      );
    }
  });
  return { kind: "texts", texts: value as string[], single: false };
}

async function embeddings(context: RouteContext): Promise<Response> {
  const { state } = context;
  requireServing(state);
  const body = await readJsonObject(context, EMBEDDING_KEYS);
  const model = modelForTask(state, body.model, "feature-extraction");
  context.log.model = model.config.name;
  requireRoom(state, model);
  const format = body.encoding_format ?? "float";
  if (format !== "float" && format !== "base64") {
    throw new HttpError(
      400,
      `"encoding_format" must be "float" or "base64", got ${quote(format)}`,
      { param: "encoding_format" },
    );
  }
  if (body.dimensions !== undefined && body.dimensions !== model.info.hiddenSize) {
    throw new HttpError(
      400,
      `"dimensions" must be ${model.info.hiddenSize} for model "${model.config.name}" ` +
        `(it cannot shorten embeddings), got ${quote(body.dimensions)}`,
      { param: "dimensions" },
    );
  }
  if (body.user !== undefined && typeof body.user !== "string") {
    throw new HttpError(400, `"user" must be a string, got ${typeName(body.user)}`, {
      param: "user",
    });
  }
  const truncate = optionalBool(body, "truncate", false);
  const input = parseInput(body.input, state.config.limits.maxInputs);
  let rows: TokenRow[];
  if (input.kind === "texts") {
    rows = await model.tokenize(input.texts, {
      truncate,
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
      embedding: format === "base64" ? base64(embedding) : Array.from(embedding),
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

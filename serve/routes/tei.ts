/**
 * text-embeddings-inference (TEI) compatible routes, so TEI clients work unchanged:
 * `POST /embed`, `/embed_all`, `/tokenize`, `/decode`, `/predict`, `/rerank`, `GET /info` and
 * `/health`, with TEI's request and response shapes and its `{error, error_type}` errors.
 * TEI serves one model; here `/embed`, `/embed_all` use the first feature-extraction model,
 * `/predict` and `/rerank` the first text-classification model, `/tokenize`, `/decode` and
 * `/info` the first model served.
 *
 * `/tokenize` gives each word piece's UTF-16 offsets in the input (`start`/`stop`, null for
 * special tokens) and `text` as the input's own characters.
 *
 * @module
 */
import { RELEASE_VERSION } from "../../ffi/checksums.ts";
import type { TextInput } from "../../pipelines/tokenizer.ts";
import type { LabelScore } from "../backend.ts";
import type { ServeTask } from "../config.ts";
import { HttpError, jsonResponse, quote, typeName } from "../http.ts";
import type { ServedModel, TokenRow } from "../models.ts";
import {
  modelForTask,
  requireRoom,
  requireServing,
  type Route,
  type RouteContext,
  type ServerState,
} from "../state.ts";
import {
  checkCount,
  optionalBool,
  optionalInt,
  readJsonObject,
  textList,
  type Truncation,
  truncationOf,
} from "./_input.ts";
import { parseInput, shorten } from "./openai.ts";

const TRUNCATION_KEYS = ["truncate", "truncation_direction"];

function firstModel(state: ServerState): ServedModel {
  const first = state.models.values().next();
  if (first.done) throw new HttpError(503, "No model is served");
  return first.value;
}

/** Tokenized rows of an embedding request's `inputs`, prompts prepended to texts. */
async function embeddingRows(
  context: RouteContext,
  model: ServedModel,
  body: Record<string, unknown>,
  truncation: Truncation,
): Promise<TokenRow[]> {
  const input = parseInput(body.inputs, context.state.config.limits.maxInputs, "inputs");
  if (input.kind === "tokens") {
    model.checkTokenRows(input.rows, "inputs", input.single);
    return input.rows;
  }
  return await model.tokenize(input.texts, {
    ...truncation,
    prompt: model.prompt(body.prompt_name),
    param: "inputs",
    single: input.single,
  });
}

/** The first served model of `task`, after the readiness and queue-room checks. */
function servingModel(context: RouteContext, task: ServeTask): ServedModel {
  requireServing(context.state);
  const model = modelForTask(context.state, undefined, task);
  context.log.model = model.config.name;
  requireRoom(context.state, model);
  return model;
}

/** The body fields of the routes that take more than a few. */
const EMBED_KEYS = ["inputs", "normalize", "prompt_name", "dimensions", ...TRUNCATION_KEYS];
const EMBED_ALL_KEYS = ["inputs", "prompt_name", "normalize", ...TRUNCATION_KEYS];
const RERANK_KEYS = ["query", "texts", "raw_scores", "return_text", ...TRUNCATION_KEYS];

async function embed(context: RouteContext): Promise<Response> {
  const model = servingModel(context, "feature-extraction");
  const body = await readJsonObject(context, EMBED_KEYS);
  const normalize = optionalBool(body, "normalize", true);
  const width = model.info.hiddenSize;
  const dimensions = optionalInt(body, "dimensions", { min: 1, max: width, dflt: width });
  const rows = await embeddingRows(context, model, body, truncationOf(context, body));
  context.log.inputs = rows.length;
  const result = await model.embedRows(rows, context.signal, { normalize });
  context.log.tokens = result.tokens;
  return jsonResponse(result.embeddings.map((e) => Array.from(shorten(e, dimensions))));
}

async function embedAll(context: RouteContext): Promise<Response> {
  const model = servingModel(context, "feature-extraction");
  // `normalize` is accepted and ignored, as TEI does (clients send it; token vectors are raw).
  const body = await readJsonObject(context, EMBED_ALL_KEYS);
  const rows = await embeddingRows(context, model, body, truncationOf(context, body));
  context.log.inputs = rows.length;
  const result = await model.embedRows(
    rows.map((r) => ({ ...r, tokenVectors: true })),
    context.signal,
    { normalize: false },
  );
  context.log.tokens = result.tokens;
  const width = model.info.tokenWidth;
  return jsonResponse(
    result.embeddings.map((e) =>
      Array.from(
        { length: e.length / width },
        (_, t) => Array.from(e.subarray(t * width, (t + 1) * width)),
      )
    ),
  );
}

async function tokenize(context: RouteContext): Promise<Response> {
  const model = firstModel(context.state);
  const body = await readJsonObject(context, ["inputs", "add_special_tokens", "prompt_name"]);
  const addSpecial = optionalBool(body, "add_special_tokens", true);
  if (body.inputs === undefined) {
    throw new HttpError(400, `"inputs" is required`, { param: "inputs" });
  }
  const { texts } = textList(body.inputs, "inputs", context.state.config.limits.maxInputs);
  const prompt = model.config.task === "feature-extraction" ? model.prompt(body.prompt_name) : "";
  const tokenizer = model.tokenizer;
  const leading = addSpecial ? tokenizer.leadingSpecialTokens : 0;
  return jsonResponse(texts.map((text) => {
    const input = prompt + text;
    const { ids } = tokenizer.encode(input, {
      addSpecialTokens: addSpecial,
      maxLength: Number.MAX_SAFE_INTEGER,
    });
    const offsets = tokenizer.offsets(input);
    return ids.map((id, k) => {
      const special = tokenizer.isSpecial(id) && (k < leading || k >= leading + offsets.length);
      const at = special ? null : offsets[k - leading] ?? null;
      return {
        id,
        text: at === null ? tokenizer.tokenOf(id) ?? "" : input.slice(at[0], at[1]),
        special,
        start: at?.[0] ?? null,
        stop: at?.[1] ?? null,
      };
    });
  }));
}

function idList(value: unknown, param: string): number[] {
  if (!Array.isArray(value) || value.some((id) => !Number.isSafeInteger(id) || id < 0)) {
    throw new HttpError(400, `"${param}" must be an array of token ids, got ${quote(value)}`, {
      param,
    });
  }
  return value as number[];
}

async function decode(context: RouteContext): Promise<Response> {
  const model = firstModel(context.state);
  const body = await readJsonObject(context, ["ids", "skip_special_tokens"]);
  const skip = optionalBool(body, "skip_special_tokens", true);
  const rows = Array.isArray(body.ids) && Array.isArray(body.ids[0])
    ? (body.ids as unknown[]).map((row, i) => idList(row, `ids[${i}]`))
    : [idList(body.ids, "ids")];
  checkCount(rows.length, "ids", context.state.config.limits.maxInputs);
  return jsonResponse(rows.map((ids) => model.tokenizer.decode(ids, skip)));
}

/** `/predict`'s inputs: a text, a pair, or a batch of either (`[[text]]`, `[[a, b]]`). */
function predictInputs(
  value: unknown,
  maxInputs: number,
): { inputs: TextInput[]; single: boolean } {
  const one = (v: unknown, param: string): TextInput => {
    if (typeof v === "string") return v;
    if (
      Array.isArray(v) && (v.length === 1 || v.length === 2) &&
      v.every((t) => typeof t === "string")
    ) {
      return v.length === 1 ? v[0] : [v[0], v[1]];
    }
    throw new HttpError(400, `"${param}" must be a text or a [text, text] pair, got ${quote(v)}`, {
      param,
    });
  };
  if (Array.isArray(value) && value.length > 0 && Array.isArray(value[0])) {
    checkCount(value.length, "inputs", maxInputs);
    return { inputs: value.map((v, i) => one(v, `inputs[${i}]`)), single: false };
  }
  if (value === undefined) throw new HttpError(400, `"inputs" is required`, { param: "inputs" });
  return { inputs: [one(value, "inputs")], single: true };
}

async function classifyInputs(
  context: RouteContext,
  model: ServedModel,
  inputs: TextInput[],
  truncation: Truncation,
): Promise<LabelScore[][]> {
  const lengths = await model.checkTexts(inputs, { ...truncation, param: "inputs", single: false });
  context.log.inputs = inputs.length;
  context.log.tokens = lengths.reduce((s, n) => s + n, 0);
  return await model.classify(inputs, lengths, context.signal);
}

async function predict(context: RouteContext): Promise<Response> {
  const model = servingModel(context, "text-classification");
  const body = await readJsonObject(context, ["inputs", "raw_scores", ...TRUNCATION_KEYS]);
  const raw = optionalBool(body, "raw_scores", false);
  const { inputs, single } = predictInputs(body.inputs, context.state.config.limits.maxInputs);
  const results = await classifyInputs(context, model, inputs, truncationOf(context, body));
  const shaped = results.map((all) =>
    all.map((s) => ({ score: raw ? s.logit : s.score, label: s.label }))
      .sort((a, b) => b.score - a.score)
  );
  return jsonResponse(single ? shaped[0] : shaped);
}

async function rerank(context: RouteContext): Promise<Response> {
  const model = servingModel(context, "text-classification");
  const body = await readJsonObject(context, RERANK_KEYS);
  if ((model.info.labels?.length ?? 0) !== 1) {
    throw new HttpError(
      400,
      `Model "${model.config.name}" has ${model.info.labels?.length ?? 0} labels; /rerank needs ` +
        "a cross-encoder with one score",
    );
  }
  if (typeof body.query !== "string") {
    throw new HttpError(400, `"query" must be a string, got ${typeName(body.query)}`, {
      param: "query",
    });
  }
  const { texts } = textList(body.texts, "texts", context.state.config.limits.maxInputs);
  const raw = optionalBool(body, "raw_scores", false);
  const withText = optionalBool(body, "return_text", false);
  const query = body.query;
  const pairs = texts.map((t): TextInput => [query, t]);
  const results = await classifyInputs(context, model, pairs, truncationOf(context, body));
  const ranks = results.map(([s], index) => ({
    index,
    score: raw ? s.logit : s.score,
    ...(withText ? { text: texts[index] } : {}),
  }));
  return jsonResponse(ranks.sort((a, b) => b.score - a.score));
}

function info(context: RouteContext): Response {
  const { state } = context;
  const model = firstModel(state);
  const labels = model.info.labels ?? [];
  const classes = {
    id2label: Object.fromEntries(labels.map((l, i) => [String(i), l])),
    label2id: Object.fromEntries(labels.map((l, i) => [l, i])),
  };
  const modelType = model.config.task === "feature-extraction"
    ? { embedding: { pooling: teiPooling(model.info.embedding?.pooling ?? "mean") } }
    : model.config.task === "text-classification" && labels.length === 1
    ? { reranker: classes }
    : { classifier: classes };
  const int8 = Object.keys(model.info.kernels).some((k) => k.includes("i8"));
  return jsonResponse({
    model_id: model.info.loaded,
    model_sha: null,
    model_dtype: int8 ? "int8" : "float32",
    model_type: modelType,
    max_concurrent_requests: state.config.limits.maxConcurrentRequests,
    max_input_length: model.config.maxLength,
    max_batch_tokens: model.config.maxBatchTokens,
    max_batch_requests: model.config.maxBatch,
    max_client_batch_size: state.config.limits.maxInputs,
    auto_truncate: state.config.autoTruncate,
    tokenization_workers: 1,
    version: RELEASE_VERSION,
    sha: null,
    docker_label: null,
  });
}

/** TEI's name of a pooling mode (it spells the last token `last_token`). */
function teiPooling(mode: string): string {
  return mode === "lasttoken" ? "last_token" : mode;
}

function health(context: RouteContext): Response {
  const ok = context.state.ready() && !context.state.draining();
  return new Response(null, { status: ok ? 200 : 503 });
}

const post = (path: string, summary: string, handler: Route["handler"]): Route => ({
  method: "POST",
  path,
  style: "tei",
  auth: true,
  summary,
  handler,
});

/** The TEI-compatible routes. */
export const TEI_ROUTES: Route[] = [
  post("/embed", "TEI: pooled embeddings (normalize, truncate, prompt_name, dimensions)", embed),
  post("/embed_all", "TEI: every token's vector", embedAll),
  post("/tokenize", "TEI: token ids, texts and special flags", tokenize),
  post("/decode", "TEI: token ids back to text", decode),
  post("/predict", "TEI: classification of texts or text pairs", predict),
  post("/rerank", "TEI: cross-encoder scores of a query against texts, best first", rerank),
  {
    method: "GET",
    path: "/info",
    style: "tei",
    auth: true,
    summary: "TEI: model info",
    handler: info,
  },
  {
    method: "GET",
    path: "/health",
    style: "tei",
    auth: false,
    summary: "TEI: 200 when the model serves, 503 otherwise",
    handler: health,
  },
];

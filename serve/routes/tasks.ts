/**
 * Task routes in the library's pipeline shapes: `POST /v1/text-classification`,
 * `POST /v1/question-answering` and `POST /v1/token-classification`.
 *
 * @module
 */
import type { QaPair } from "../backend.ts";
import { HttpError, jsonResponse, typeName } from "../http.ts";
import type { ServedModel } from "../models.ts";
import type { Route, RouteContext } from "../state.ts";
import { checkCount, optionalBool, optionalInt, readModelRequest, textList } from "./_input.ts";

/** The body fields each task route takes. */
const CLASSIFY_KEYS = ["model", "input", "top_k", "truncate"];
const QA_KEYS = ["model", "question", "context", "inputs", "truncate"];
const TOKEN_KEYS = ["model", "input", "truncate"];

/**
 * The `"input"` texts of a text route (one string or an array), checked against the model's
 * limits under the body's `"truncate"`; their token counts logged.
 */
async function inputTexts(
  context: RouteContext,
  body: Record<string, unknown>,
  model: ServedModel,
): Promise<{ texts: string[]; lengths: number[] }> {
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  if (body.input === undefined) throw new HttpError(400, `"input" is required`, { param: "input" });
  const maxInputs = context.state.config.limits.maxInputs;
  const { texts, single } = textList(body.input, "input", maxInputs);
  const lengths = await model.checkTexts(texts, { truncate, param: "input", single });
  logTokens(context, lengths);
  return { texts, lengths };
}

/** Logs the inputs of a request and their tokens. */
function logTokens(context: RouteContext, lengths: number[]): void {
  context.log.inputs = lengths.length;
  context.log.tokens = lengths.reduce((s, n) => s + n, 0);
}

async function textClassification(context: RouteContext): Promise<Response> {
  const { body, model } = await readModelRequest(context, "text-classification", CLASSIFY_KEYS);
  const classes = model.info.labels?.length ?? model.info.hiddenSize;
  const topK = optionalInt(body, "top_k", { min: 1, max: classes, dflt: 1 });
  const { texts, lengths } = await inputTexts(context, body, model);
  const results = await model.classify(texts, lengths, context.signal);
  return jsonResponse({
    object: "list",
    model: model.config.name,
    data: results.map((all, index) => ({
      index,
      label: all[0].label,
      score: all[0].score,
      labels: all.slice(0, topK),
    })),
  });
}

function qaPairs(body: Record<string, unknown>, maxInputs: number): QaPair[] {
  const single = body.question !== undefined || body.context !== undefined;
  if (single && body.inputs !== undefined) {
    throw new HttpError(400, `Send either "question" and "context", or "inputs", not both`, {
      param: "inputs",
    });
  }
  const check = (value: unknown, param: string): string => {
    if (typeof value !== "string") {
      throw new HttpError(400, `"${param}" must be a string, got ${typeName(value)}`, { param });
    }
    return value;
  };
  if (single) {
    return [{
      question: check(body.question, "question"),
      context: check(body.context, "context"),
    }];
  }
  if (!Array.isArray(body.inputs) || body.inputs.length === 0) {
    throw new HttpError(
      400,
      `Send "question" and "context", or "inputs" as a non-empty array of {question, context}; ` +
        `"inputs" is ${typeName(body.inputs)}`,
      { param: "inputs" },
    );
  }
  checkCount(body.inputs.length, "inputs", maxInputs);
  return body.inputs.map((pair, i) => {
    if (typeof pair !== "object" || pair === null || Array.isArray(pair)) {
      throw new HttpError(400, `"inputs[${i}]" must be an object, got ${typeName(pair)}`, {
        param: `inputs[${i}]`,
      });
    }
    const p = pair as Record<string, unknown>;
    for (const key of Object.keys(p)) {
      if (key !== "question" && key !== "context") {
        throw new HttpError(400, `Unknown field "inputs[${i}].${key}"`, {
          param: `inputs[${i}].${key}`,
        });
      }
    }
    return {
      question: check(p.question, `inputs[${i}].question`),
      context: check(p.context, `inputs[${i}].context`),
    };
  });
}

async function questionAnswering(context: RouteContext): Promise<Response> {
  const { body, model } = await readModelRequest(context, "question-answering", QA_KEYS);
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  const pairs = qaPairs(body, context.state.config.limits.maxInputs);
  const single = body.inputs === undefined;
  const lengths = await model.checkPairs(pairs, { truncate, param: "inputs", single });
  logTokens(context, lengths);
  const answers = await model.answer(pairs, lengths, context.signal);
  return jsonResponse({
    object: "list",
    model: model.config.name,
    data: answers.map((a, index) => ({ index, ...a })),
  });
}

async function tokenClassification(context: RouteContext): Promise<Response> {
  const { body, model } = await readModelRequest(context, "token-classification", TOKEN_KEYS);
  const { texts, lengths } = await inputTexts(context, body, model);
  const results = await model.classifyTokens(texts, lengths, context.signal);
  return jsonResponse({
    object: "list",
    model: model.config.name,
    data: results.map((entities, index) => ({ index, entities })),
  });
}

/** The task routes. */
export const TASK_ROUTES: Route[] = [
  {
    method: "POST",
    path: "/v1/text-classification",
    style: "openai",
    auth: true,
    summary: "Classify texts: best label and score, plus the top_k labels",
    handler: textClassification,
  },
  {
    method: "POST",
    path: "/v1/question-answering",
    style: "openai",
    auth: true,
    summary: "Extractive question answering: answer span, score, word-piece span",
    handler: questionAnswering,
  },
  {
    method: "POST",
    path: "/v1/token-classification",
    style: "openai",
    auth: true,
    summary: "Token classification (NER): entity, score, index, word per word piece",
    handler: tokenClassification,
  },
];

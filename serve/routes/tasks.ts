/**
 * Task routes in the library's pipeline shapes: `POST /v1/text-classification`,
 * `POST /v1/question-answering` and `POST /v1/token-classification`.
 *
 * @module
 */
import type { QaPair } from "../backend.ts";
import { HttpError, jsonResponse, typeName } from "../http.ts";
import {
  modelForTask,
  requireRoom,
  requireServing,
  type Route,
  type RouteContext,
} from "../state.ts";
import { checkCount, optionalBool, optionalInt, readJsonObject, textList } from "./_input.ts";

async function textClassification(context: RouteContext): Promise<Response> {
  const { state } = context;
  requireServing(state);
  const body = await readJsonObject(context, ["model", "input", "top_k", "truncate"]);
  const model = modelForTask(state, body.model, "text-classification");
  context.log.model = model.config.name;
  requireRoom(state, model);
  const classes = model.info.labels?.length ?? model.info.hiddenSize;
  const topK = optionalInt(body, "top_k", { min: 1, max: classes, dflt: 1 });
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  if (body.input === undefined) throw new HttpError(400, `"input" is required`, { param: "input" });
  const { texts, single } = textList(body.input, "input", state.config.limits.maxInputs);
  const lengths = await model.checkTexts(texts, { truncate, param: "input", single });
  context.log.inputs = texts.length;
  context.log.tokens = lengths.reduce((s, n) => s + n, 0);
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
  const { state } = context;
  requireServing(state);
  const body = await readJsonObject(context, [
    "model",
    "question",
    "context",
    "inputs",
    "truncate",
  ]);
  const model = modelForTask(state, body.model, "question-answering");
  context.log.model = model.config.name;
  requireRoom(state, model);
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  const pairs = qaPairs(body, state.config.limits.maxInputs);
  const single = body.inputs === undefined;
  const lengths = await model.checkPairs(pairs, { truncate, param: "inputs", single });
  context.log.inputs = pairs.length;
  context.log.tokens = lengths.reduce((s, n) => s + n, 0);
  const answers = await model.answer(pairs, lengths, context.signal);
  return jsonResponse({
    object: "list",
    model: model.config.name,
    data: answers.map((a, index) => ({ index, ...a })),
  });
}

async function tokenClassification(context: RouteContext): Promise<Response> {
  const { state } = context;
  requireServing(state);
  const body = await readJsonObject(context, ["model", "input", "truncate"]);
  const model = modelForTask(state, body.model, "token-classification");
  context.log.model = model.config.name;
  requireRoom(state, model);
  const truncate = optionalBool(body, "truncate", context.state.config.autoTruncate);
  if (body.input === undefined) throw new HttpError(400, `"input" is required`, { param: "input" });
  const { texts, single } = textList(body.input, "input", state.config.limits.maxInputs);
  const lengths = await model.checkTexts(texts, { truncate, param: "input", single });
  context.log.inputs = texts.length;
  context.log.tokens = lengths.reduce((s, n) => s + n, 0);
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

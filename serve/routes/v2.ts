/**
 * KServe v2 / Open Inference Protocol routes, with Triton's binary tensor data extension
 * (`Inference-Header-Content-Length`), as `tritonclient[http]` speaks it:
 *
 * - `GET /v2`, `/v2/health/live`, `/v2/health/ready`
 * - `GET /v2/models/{name}[/versions/1]`, `.../ready`, `.../config`
 * - `POST /v2/models/{name}[/versions/1]/infer`
 *
 * Inputs per task: feature-extraction takes `text` (BYTES `[N]` or `[N,1]`) or `input_ids`
 * (INT64/INT32 `[N,S]`, with optional `attention_mask` and `token_type_ids`) and returns
 * `embedding` (FP32 `[N,H]`); text-classification takes `text` and returns `label` (BYTES),
 * `score` (FP32) and `probabilities` (FP32 `[N,C]`, in label order); question-answering takes
 * `question` and `context` (BYTES `[N]`) and returns `answer`, `score`, `token_start` and
 * `token_end` (context word pieces, inclusive), `char_start` and `char_end` (the answer's
 * UTF-16 offsets in the context, -1 where unknown);
 * token-classification takes `text` and returns `entities` (BYTES, one JSON array per text).
 *
 * @module
 */
import type { ServeTask } from "../config.ts";
import { HttpError, jsonResponse, quote } from "../http.ts";
import type { ServedModel, TokenRow } from "../models.ts";
import {
  findModel,
  requireRoom,
  requireServing,
  type Route,
  type RouteContext,
  type ServerState,
} from "../state.ts";
import { checkCount } from "./_input.ts";
import {
  type Datatype,
  type InferRequest,
  inferResponse,
  type InputTensor,
  type OutputTensor,
  readInferRequest,
  VERSION,
} from "./v2_codec.ts";

interface TensorSpec {
  name: string;
  datatype: Datatype;
  shape: number[];
}

/** Input and output tensors of a task (metadata). */
function tensorSpecs(model: ServedModel): { inputs: TensorSpec[]; outputs: TensorSpec[] } {
  const hidden = model.info.hiddenSize;
  const classes = model.info.labels?.length ?? hidden;
  switch (model.config.task) {
    case "feature-extraction":
      return {
        inputs: [
          { name: "text", datatype: "BYTES", shape: [-1] },
          { name: "input_ids", datatype: "INT64", shape: [-1, -1] },
          { name: "attention_mask", datatype: "INT64", shape: [-1, -1] },
          { name: "token_type_ids", datatype: "INT64", shape: [-1, -1] },
        ],
        outputs: [{ name: "embedding", datatype: "FP32", shape: [-1, hidden] }],
      };
    case "text-classification":
      return {
        inputs: [{ name: "text", datatype: "BYTES", shape: [-1] }],
        outputs: [
          { name: "label", datatype: "BYTES", shape: [-1] },
          { name: "score", datatype: "FP32", shape: [-1] },
          { name: "probabilities", datatype: "FP32", shape: [-1, classes] },
        ],
      };
    case "question-answering":
      return {
        inputs: [
          { name: "question", datatype: "BYTES", shape: [-1] },
          { name: "context", datatype: "BYTES", shape: [-1] },
        ],
        outputs: [
          { name: "answer", datatype: "BYTES", shape: [-1] },
          { name: "score", datatype: "FP32", shape: [-1] },
          { name: "token_start", datatype: "INT64", shape: [-1] },
          { name: "token_end", datatype: "INT64", shape: [-1] },
          { name: "char_start", datatype: "INT64", shape: [-1] },
          { name: "char_end", datatype: "INT64", shape: [-1] },
        ],
      };
    case "token-classification":
      return {
        inputs: [{ name: "text", datatype: "BYTES", shape: [-1] }],
        outputs: [{ name: "entities", datatype: "BYTES", shape: [-1] }],
      };
  }
}

/** A decoded input tensor. */
function inputByName(
  model: ServedModel,
  request: InferRequest,
  allowed: string[],
): Map<string, InputTensor> {
  const map = new Map<string, InputTensor>();
  for (const input of request.inputs) {
    if (!allowed.includes(input.name)) {
      throw new HttpError(
        400,
        `Unknown input ${
          quote(input.name)
        } for ${model.config.task} model "${model.config.name}"; ` +
          `inputs are ${allowed.join(", ")}`,
        { param: input.name },
      );
    }
    map.set(input.name, input);
  }
  return map;
}

function textInput(input: InputTensor | undefined, name: string, maxInputs: number): string[] {
  if (input === undefined) {
    throw new HttpError(400, `Input "${name}" is required`, { param: name });
  }
  if (input.datatype !== "BYTES") {
    throw new HttpError(400, `Input "${name}" must have datatype BYTES, got ${input.datatype}`, {
      param: `${name}.datatype`,
    });
  }
  const shape = input.shape;
  if (!(shape.length === 1 || (shape.length === 2 && shape[1] === 1)) || shape[0] === 0) {
    throw new HttpError(
      400,
      `Input "${name}" must have shape [N] or [N, 1] with N >= 1, got ${JSON.stringify(shape)}`,
      { param: `${name}.shape` },
    );
  }
  checkCount(shape[0], name, maxInputs);
  return input.strings!;
}

function tokenRows(inputs: Map<string, InputTensor>, maxInputs: number): TokenRow[] {
  const ids = inputs.get("input_ids")!;
  if (ids.datatype === "BYTES") {
    throw new HttpError(400, `Input "input_ids" must have datatype INT64 or INT32, got BYTES`, {
      param: "input_ids.datatype",
    });
  }
  if (ids.shape.length !== 2 || ids.shape[0] === 0 || ids.shape[1] === 0) {
    throw new HttpError(
      400,
      `Input "input_ids" must have shape [N, S] with N, S >= 1, got ${JSON.stringify(ids.shape)}`,
      { param: "input_ids.shape" },
    );
  }
  const [n, s] = ids.shape;
  checkCount(n, "input_ids", maxInputs);
  const companion = (name: string): number[] | null => {
    const t = inputs.get(name);
    if (t === undefined) return null;
    if (t.datatype === "BYTES") {
      throw new HttpError(400, `Input "${name}" must have datatype INT64 or INT32, got BYTES`, {
        param: `${name}.datatype`,
      });
    }
    if (JSON.stringify(t.shape) !== JSON.stringify(ids.shape)) {
      throw new HttpError(
        400,
        `Input "${name}" has shape ${JSON.stringify(t.shape)}, unlike input_ids ${
          JSON.stringify(ids.shape)
        }`,
        { param: `${name}.shape` },
      );
    }
    return t.numbers!;
  };
  const mask = companion("attention_mask");
  const types = companion("token_type_ids");
  const rows: TokenRow[] = [];
  for (let r = 0; r < n; r++) {
    let length = s;
    if (mask !== null) {
      // Trailing padding is dropped; the batcher pads again to the batch's longest row.
      while (length > 1 && mask[r * s + length - 1] === 0) length--;
    }
    const slice = (values: number[], name: string): Int32Array => {
      const out = new Int32Array(length);
      for (let i = 0; i < length; i++) {
        const v = values[r * s + i];
        if (v < -0x80000000 || v > 0x7fffffff) {
          throw new HttpError(400, `${name}[${r}][${i}] is ${v}, outside the int32 range`, {
            param: `${name}[${r}][${i}]`,
          });
        }
        out[i] = v;
      }
      return out;
    };
    rows.push({
      ids: slice(ids.numbers!, "input_ids"),
      typeIds: types === null ? new Int32Array(length) : slice(types, "token_type_ids"),
      mask: mask === null ? null : slice(mask, "attention_mask"),
    });
  }
  return rows;
}

async function infer(context: RouteContext): Promise<Response> {
  const { state } = context;
  requireServing(state);
  const model = modelFromPath(state, context.params);
  context.log.model = model.config.name;
  requireRoom(state, model);
  const request = await readInferRequest(context);
  const truncate = request.parameters.truncate ?? context.state.config.autoTruncate;
  if (typeof truncate !== "boolean") {
    throw new HttpError(
      400,
      `"parameters.truncate" must be true or false, got ${quote(truncate)}`,
      {
        param: "parameters.truncate",
      },
    );
  }
  const maxInputs = state.config.limits.maxInputs;
  const tensors = await runTask(context, model, request, { truncate, maxInputs });
  return inferResponse(model, request, tensors);
}

async function runTask(
  context: RouteContext,
  model: ServedModel,
  request: InferRequest,
  options: { truncate: boolean; maxInputs: number },
): Promise<OutputTensor[]> {
  const { truncate, maxInputs } = options;
  const signal = context.signal;
  const task: ServeTask = model.config.task;
  /** The `"text"` input of the text tasks, checked against the model's limits. */
  const textTensor = async (): Promise<{ texts: string[]; lengths: number[] }> => {
    const inputs = inputByName(model, request, ["text"]);
    const texts = textInput(inputs.get("text"), "text", maxInputs);
    const lengths = await model.checkTexts(texts, { truncate, param: "text", single: false });
    context.log.inputs = texts.length;
    return { texts, lengths };
  };
  switch (task) {
    case "feature-extraction": {
      const inputs = inputByName(
        model,
        request,
        ["text", "input_ids", "attention_mask", "token_type_ids"],
      );
      let rows: TokenRow[];
      if (inputs.has("input_ids")) {
        if (inputs.has("text")) {
          throw new HttpError(400, `Send either "text" or "input_ids", not both`, {
            param: "text",
          });
        }
        rows = tokenRows(inputs, maxInputs);
        model.checkTokenRows(rows, "input_ids");
      } else {
        if (inputs.has("attention_mask") || inputs.has("token_type_ids")) {
          throw new HttpError(400, `"attention_mask" and "token_type_ids" need "input_ids"`, {
            param: inputs.has("attention_mask") ? "attention_mask" : "token_type_ids",
          });
        }
        const texts = textInput(inputs.get("text"), "text", maxInputs);
        rows = await model.tokenize(texts, { truncate, param: "text", single: false });
      }
      context.log.inputs = rows.length;
      const result = await model.embedRows(rows, signal);
      context.log.tokens = result.tokens;
      const hidden = model.info.hiddenSize;
      const data = new Float32Array(rows.length * hidden);
      result.embeddings.forEach((e, i) => data.set(e, i * hidden));
      return [{ name: "embedding", datatype: "FP32", shape: [rows.length, hidden], data }];
    }
    case "text-classification": {
      const { texts, lengths } = await textTensor();
      const results = await model.classify(texts, lengths, signal);
      const labels = model.info.labels ?? results[0].map((r) => r.label);
      const probabilities = new Float32Array(texts.length * labels.length);
      results.forEach((all, i) => {
        for (const { label, score } of all) {
          const k = labels.indexOf(label);
          if (k >= 0) probabilities[i * labels.length + k] = score;
        }
      });
      return [
        {
          name: "label",
          datatype: "BYTES",
          shape: [texts.length],
          data: results.map((r) => r[0].label),
        },
        {
          name: "score",
          datatype: "FP32",
          shape: [texts.length],
          data: results.map((r) => r[0].score),
        },
        {
          name: "probabilities",
          datatype: "FP32",
          shape: [texts.length, labels.length],
          data: probabilities,
        },
      ];
    }
    case "question-answering": {
      const inputs = inputByName(model, request, ["question", "context"]);
      const questions = textInput(inputs.get("question"), "question", maxInputs);
      const contexts = textInput(inputs.get("context"), "context", maxInputs);
      if (questions.length !== contexts.length) {
        throw new HttpError(
          400,
          `Inputs "question" (${questions.length}) and "context" (${contexts.length}) must have the same length`,
          { param: "context.shape" },
        );
      }
      const pairs = questions.map((question, i) => ({ question, context: contexts[i] }));
      const lengths = await model.checkPairs(pairs, { truncate, param: "question", single: false });
      context.log.inputs = pairs.length;
      const answers = await model.answer(pairs, lengths, signal);
      const n = answers.length;
      return [
        { name: "answer", datatype: "BYTES", shape: [n], data: answers.map((a) => a.answer) },
        { name: "score", datatype: "FP32", shape: [n], data: answers.map((a) => a.score) },
        {
          name: "token_start",
          datatype: "INT64",
          shape: [n],
          data: answers.map((a) => a.tokenStart),
        },
        { name: "token_end", datatype: "INT64", shape: [n], data: answers.map((a) => a.tokenEnd) },
        {
          name: "char_start",
          datatype: "INT64",
          shape: [n],
          data: answers.map((a) => a.start ?? -1),
        },
        { name: "char_end", datatype: "INT64", shape: [n], data: answers.map((a) => a.end ?? -1) },
      ];
    }
    case "token-classification": {
      const { texts, lengths } = await textTensor();
      const results = await model.classifyTokens(texts, lengths, signal);
      return [{
        name: "entities",
        datatype: "BYTES",
        shape: [texts.length],
        data: results.map((r) => JSON.stringify(r)),
      }];
    }
  }
}

function modelFromPath(state: ServerState, params: Record<string, string>): ServedModel {
  const model = findModel(state, params.name, "name");
  if (params.version !== undefined && params.version !== VERSION) {
    throw new HttpError(
      404,
      `Model "${params.name}" has no version ${quote(params.version)}; versions: ${VERSION}`,
      { param: "version", code: "model_not_found" },
    );
  }
  return model;
}

function modelMetadata(context: RouteContext): Response {
  const model = modelFromPath(context.state, context.params);
  const { inputs, outputs } = tensorSpecs(model);
  return jsonResponse({
    name: model.config.name,
    versions: [VERSION],
    platform: "sparsebert",
    inputs,
    outputs,
    parameters: {
      task: model.config.task,
      model: model.info.loaded,
      ...(model.info.fallbackReason ? { fallback_reason: model.info.fallbackReason } : {}),
      kernel: model.config.kernel,
      max_length: model.config.maxLength,
      ...(model.info.labels ? { labels: model.info.labels } : {}),
    },
  });
}

function modelConfig(context: RouteContext): Response {
  const model = modelFromPath(context.state, context.params);
  const { inputs, outputs } = tensorSpecs(model);
  const dims = (shape: number[]): number[] => shape.slice(1);
  return jsonResponse({
    name: model.config.name,
    platform: "sparsebert",
    max_batch_size: model.config.maxBatch,
    input: inputs.map((t) => ({
      name: t.name,
      data_type: `TYPE_${t.datatype === "BYTES" ? "STRING" : t.datatype}`,
      dims: dims(t.shape),
    })),
    output: outputs.map((t) => ({
      name: t.name,
      data_type: `TYPE_${t.datatype === "BYTES" ? "STRING" : t.datatype}`,
      dims: dims(t.shape),
    })),
    dynamic_batching: {
      max_queue_delay_microseconds: model.config.maxWaitMs * 1000,
      preferred_batch_size: [model.config.maxBatch],
    },
    instance_group: [{ count: model.config.instances, kind: "KIND_CPU" }],
    parameters: {
      buckets: model.config.buckets,
      max_queue: model.config.maxQueue,
      threads: model.info.threads,
    },
  });
}

function modelReady(context: RouteContext): Response {
  const model = modelFromPath(context.state, context.params);
  const ready = context.state.accepting() && model.live;
  return jsonResponse({ name: model.config.name, ready }, ready ? 200 : 503);
}

/** The KServe v2 routes. */
export const V2_ROUTES: Route[] = [
  {
    method: "GET",
    path: "/v2",
    style: "v2",
    auth: true,
    summary: "Server metadata",
    handler: (c) =>
      jsonResponse({
        name: "sparsebert",
        version: c.state.version,
        extensions: ["binary_tensor_data", "model_configuration"],
      }),
  },
  {
    method: "GET",
    path: "/v2/health/live",
    style: "v2",
    auth: false,
    summary: "Liveness: 200 while the process runs",
    handler: () => jsonResponse({ live: true }),
  },
  {
    method: "GET",
    path: "/v2/health/ready",
    style: "v2",
    auth: false,
    summary: "Readiness: 200 once models are loaded, 503 while loading or shutting down",
    handler: (c) => {
      const ready = c.state.ready();
      return jsonResponse({ ready }, ready ? 200 : 503);
    },
  },
  ...["", "/versions/{version}"].flatMap((v): Route[] => [
    {
      method: "GET",
      path: `/v2/models/{name}${v}`,
      style: "v2",
      auth: true,
      summary: "Model metadata: inputs, outputs, task, loaded file",
      handler: modelMetadata,
    },
    {
      method: "GET",
      path: `/v2/models/{name}${v}/ready`,
      style: "v2",
      auth: true,
      summary: "Model readiness",
      handler: modelReady,
    },
    {
      method: "GET",
      path: `/v2/models/{name}${v}/config`,
      style: "v2",
      auth: true,
      summary: "Model configuration (Triton extension): batching, instances, buckets",
      handler: modelConfig,
    },
    {
      method: "POST",
      path: `/v2/models/{name}${v}/infer`,
      style: "v2",
      auth: true,
      summary: "Inference (JSON or binary tensor data)",
      handler: infer,
    },
  ]),
];

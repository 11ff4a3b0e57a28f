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
import {
  decodeUtf8,
  HttpError,
  jsonResponse,
  quote,
  readBody,
  requireObject,
  typeName,
} from "../http.ts";
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

/** The only model version served. */
const VERSION = "1";
const HEADER_LENGTH = "inference-header-content-length";

type Datatype = "BYTES" | "INT64" | "INT32" | "FP32";

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
interface InputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  strings: string[] | null;
  numbers: number[] | null;
}

interface RequestedOutput {
  name: string;
  binary: boolean;
}

interface InferRequest {
  id: string | null;
  parameters: Record<string, unknown>;
  inputs: InputTensor[];
  outputs: RequestedOutput[] | null;
  binaryDefault: boolean;
}

function flatten(data: unknown, depth: number, out: unknown[], limit: number, name: string): void {
  if (!Array.isArray(data)) {
    out.push(data);
  } else if (depth > 8) {
    throw new HttpError(400, `"data" of input "${name}" is nested too deeply`, { param: name });
  } else {
    for (const item of data) {
      if (out.length > limit) break;
      flatten(item, depth + 1, out, limit, name);
    }
  }
}

class BinaryCursor {
  #bytes: Uint8Array;
  #offset = 0;

  constructor(bytes: Uint8Array) {
    this.#bytes = bytes;
  }

  take(size: number, name: string): Uint8Array {
    if (this.#offset + size > this.#bytes.length) {
      throw new HttpError(
        400,
        `Input "${name}" declares binary_data_size ${size} but only ${
          this.#bytes.length - this.#offset
        } binary bytes are left in the body`,
        { param: name, code: "body_incomplete" },
      );
    }
    const out = this.#bytes.subarray(this.#offset, this.#offset + size);
    this.#offset += size;
    return out;
  }

  get left(): number {
    return this.#bytes.length - this.#offset;
  }
}

function decodeBinaryStrings(bytes: Uint8Array, count: number, name: string): string[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: string[] = [];
  let p = 0;
  // Bounded: each element advances p by at least 4 bytes.
  while (p < bytes.length) {
    if (p + 4 > bytes.length) {
      throw new HttpError(400, `Binary BYTES data of input "${name}" ends inside a length prefix`, {
        param: name,
      });
    }
    const n = view.getUint32(p, true);
    p += 4;
    if (p + n > bytes.length) {
      throw new HttpError(
        400,
        `Binary BYTES element ${out.length} of input "${name}" declares ${n} bytes, past the end of its data`,
        { param: name },
      );
    }
    out.push(decodeUtf8(bytes.subarray(p, p + n), `Element ${out.length} of input "${name}"`));
    p += n;
    if (out.length > count) break;
  }
  return out;
}

function decodeBinaryInts(bytes: Uint8Array, datatype: "INT64" | "INT32", name: string): number[] {
  const width = datatype === "INT64" ? 8 : 4;
  if (bytes.length % width !== 0) {
    throw new HttpError(
      400,
      `Binary ${datatype} data of input "${name}" has ${bytes.length} bytes, not a multiple of ${width}`,
      { param: name },
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = new Array(bytes.length / width);
  for (let i = 0; i < out.length; i++) {
    out[i] = width === 8 ? Number(view.getBigInt64(i * 8, true)) : view.getInt32(i * 4, true);
  }
  return out;
}

function parseShape(value: unknown, name: string): number[] {
  if (
    !Array.isArray(value) || value.length === 0 || value.length > 3 ||
    value.some((d) => typeof d !== "number" || !Number.isSafeInteger(d) || d < 0)
  ) {
    throw new HttpError(
      400,
      `"shape" of input "${name}" must be 1 to 3 non-negative integers, got ${quote(value)}`,
      { param: `${name}.shape` },
    );
  }
  return value as number[];
}

function parseInput(
  raw: unknown,
  index: number,
  binary: BinaryCursor | null,
  maxElements: number,
): InputTensor {
  const where = `inputs[${index}]`;
  const input = requireObject(raw, where);
  for (const key of Object.keys(input)) {
    if (!["name", "shape", "datatype", "parameters", "data"].includes(key)) {
      throw new HttpError(400, `Unknown field "${where}.${key}"`, { param: `${where}.${key}` });
    }
  }
  if (typeof input.name !== "string" || input.name === "") {
    throw new HttpError(
      400,
      `"${where}.name" must be a non-empty string, got ${quote(input.name)}`,
      {
        param: `${where}.name`,
      },
    );
  }
  const name = input.name;
  const datatype = input.datatype;
  if (datatype !== "BYTES" && datatype !== "INT64" && datatype !== "INT32") {
    throw new HttpError(
      400,
      `"datatype" of input "${name}" must be BYTES, INT64 or INT32, got ${quote(datatype)}`,
      { param: `${name}.datatype` },
    );
  }
  const shape = parseShape(input.shape, name);
  const count = shape.reduce((a, b) => a * b, 1);
  if (count > maxElements) {
    throw new HttpError(
      422,
      `Input "${name}" has shape ${
        JSON.stringify(shape)
      } (${count} elements), over the limit of ${maxElements}`,
      { param: `${name}.shape`, code: "too_many_inputs" },
    );
  }
  const parameters = input.parameters === undefined
    ? {}
    : requireObject(input.parameters, `${name}.parameters`);
  const binarySize = parameters.binary_data_size;
  let values: unknown[];
  if (binarySize !== undefined) {
    if (typeof binarySize !== "number" || !Number.isSafeInteger(binarySize) || binarySize < 0) {
      throw new HttpError(
        400,
        `"binary_data_size" of input "${name}" must be a non-negative integer, got ${
          quote(binarySize)
        }`,
        { param: `${name}.parameters.binary_data_size` },
      );
    }
    if (binary === null) {
      throw new HttpError(
        400,
        `Input "${name}" has binary_data_size but the request has no ${HEADER_LENGTH} header`,
        { param: `${name}.parameters.binary_data_size` },
      );
    }
    if (input.data !== undefined) {
      throw new HttpError(400, `Input "${name}" has both "data" and binary_data_size`, {
        param: `${name}.data`,
      });
    }
    const bytes = binary.take(binarySize, name);
    values = datatype === "BYTES"
      ? decodeBinaryStrings(bytes, count, name)
      : decodeBinaryInts(bytes, datatype, name);
  } else {
    if (input.data === undefined) {
      throw new HttpError(400, `Input "${name}" has no "data"`, { param: `${name}.data` });
    }
    values = [];
    flatten(input.data, 0, values, count, name);
  }
  if (values.length !== count) {
    throw new HttpError(
      400,
      `Input "${name}" has ${values.length > count ? "more than " : ""}${values.length} elements ` +
        `but its shape ${JSON.stringify(shape)} needs ${count}`,
      { param: `${name}.data` },
    );
  }
  if (datatype === "BYTES") {
    values.forEach((v, i) => {
      if (typeof v !== "string") {
        throw new HttpError(
          400,
          `Element ${i} of BYTES input "${name}" must be a string, got ${typeName(v)}`,
          { param: `${name}.data` },
        );
      }
    });
    return { name, datatype, shape, strings: values as string[], numbers: null };
  }
  values.forEach((v, i) => {
    if (typeof v !== "number" || !Number.isSafeInteger(v)) {
      throw new HttpError(
        400,
        `Element ${i} of ${datatype} input "${name}" must be an integer, got ${quote(v)}`,
        { param: `${name}.data` },
      );
    }
  });
  return { name, datatype, shape, strings: null, numbers: values as number[] };
}

function parseOutputs(raw: unknown, binaryDefault: boolean): RequestedOutput[] | null {
  if (raw === undefined) return null;
  if (!Array.isArray(raw)) {
    throw new HttpError(400, `"outputs" must be an array, got ${typeName(raw)}`, {
      param: "outputs",
    });
  }
  return raw.map((o, i) => {
    const out = requireObject(o, `outputs[${i}]`);
    if (typeof out.name !== "string") {
      throw new HttpError(400, `"outputs[${i}].name" must be a string, got ${quote(out.name)}`, {
        param: `outputs[${i}].name`,
      });
    }
    const params = out.parameters === undefined
      ? {}
      : requireObject(out.parameters, `outputs[${i}].parameters`);
    const binary = params.binary_data ?? binaryDefault;
    if (typeof binary !== "boolean") {
      throw new HttpError(
        400,
        `"outputs[${i}].parameters.binary_data" must be true or false, got ${quote(binary)}`,
        { param: `outputs[${i}].parameters.binary_data` },
      );
    }
    return { name: out.name, binary };
  });
}

async function readInferRequest(context: RouteContext): Promise<InferRequest> {
  const { request, state } = context;
  const limits = state.config.limits;
  const headerLength = request.headers.get(HEADER_LENGTH);
  const type = request.headers.get("content-type")?.split(";")[0].trim().toLowerCase();
  if (
    headerLength === null && type !== undefined && type !== "application/json"
  ) {
    throw new HttpError(
      415,
      `Content-Type ${quote(type)} is not supported; send application/json, or the binary ` +
        `tensor extension with an ${HEADER_LENGTH} header`,
      { param: "content-type", code: "unsupported_media_type" },
    );
  }
  const bytes = await readBody(request, {
    maxBytes: limits.maxBodyBytes,
    timeoutMs: limits.bodyTimeoutMs,
  });
  let jsonBytes = bytes;
  let binary: BinaryCursor | null = null;
  if (headerLength !== null) {
    const n = Number(headerLength);
    if (!Number.isSafeInteger(n) || n < 0 || n > bytes.length) {
      throw new HttpError(
        400,
        `${HEADER_LENGTH} ${
          quote(headerLength)
        } must be an integer in 0..${bytes.length} (the body size)`,
        { param: HEADER_LENGTH },
      );
    }
    jsonBytes = bytes.subarray(0, n);
    binary = new BinaryCursor(bytes.subarray(n));
  }
  const text = decodeUtf8(jsonBytes, "Request JSON");
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `Request body is not valid JSON: ${(err as Error).message}`, {
      code: "invalid_json",
    });
  }
  const body = requireObject(parsed, "Request body");
  for (const key of Object.keys(body)) {
    if (!["id", "parameters", "inputs", "outputs"].includes(key)) {
      throw new HttpError(400, `Unknown field "${key}"; expected id, parameters, inputs, outputs`, {
        param: key,
      });
    }
  }
  if (body.id !== undefined && typeof body.id !== "string") {
    throw new HttpError(400, `"id" must be a string, got ${typeName(body.id)}`, { param: "id" });
  }
  const parameters = body.parameters === undefined
    ? {}
    : requireObject(body.parameters, "parameters");
  const binaryDefault = parameters.binary_data_output ?? false;
  if (typeof binaryDefault !== "boolean") {
    throw new HttpError(
      400,
      `"parameters.binary_data_output" must be true or false, got ${quote(binaryDefault)}`,
      { param: "parameters.binary_data_output" },
    );
  }
  if (!Array.isArray(body.inputs) || body.inputs.length === 0) {
    throw new HttpError(400, `"inputs" must be a non-empty array, got ${typeName(body.inputs)}`, {
      param: "inputs",
    });
  }
  const maxElements = limits.maxInputs * 8192;
  const inputs = body.inputs.map((raw, i) => parseInput(raw, i, binary, maxElements));
  if (binary !== null && binary.left !== 0) {
    throw new HttpError(
      400,
      `The body has ${binary.left} binary bytes that no input claims (binary_data_size)`,
      { param: "inputs" },
    );
  }
  const names = new Set<string>();
  for (const input of inputs) {
    if (names.has(input.name)) {
      throw new HttpError(400, `Input "${input.name}" is given twice`, { param: input.name });
    }
    names.add(input.name);
  }
  return {
    id: (body.id as string | undefined) ?? null,
    parameters,
    inputs,
    outputs: parseOutputs(body.outputs, binaryDefault),
    binaryDefault,
  };
}

/** An output tensor before encoding. */
interface OutputTensor {
  name: string;
  datatype: Datatype;
  shape: number[];
  data: Float32Array | number[] | string[];
}

const encoder = new TextEncoder();

function encodeBinary(tensor: OutputTensor): Uint8Array {
  switch (tensor.datatype) {
    case "FP32": {
      const f = tensor.data instanceof Float32Array
        ? tensor.data
        : Float32Array.from(tensor.data as number[]);
      return new Uint8Array(f.buffer, f.byteOffset, f.byteLength);
    }
    case "INT64": {
      const a = BigInt64Array.from((tensor.data as number[]).map((n) => BigInt(n)));
      return new Uint8Array(a.buffer);
    }
    case "INT32": {
      const a = Int32Array.from(tensor.data as number[]);
      return new Uint8Array(a.buffer);
    }
    case "BYTES": {
      const parts = (tensor.data as string[]).map((s) => encoder.encode(s));
      const out = new Uint8Array(parts.reduce((s, p) => s + 4 + p.length, 0));
      const view = new DataView(out.buffer);
      let p = 0;
      for (const part of parts) {
        view.setUint32(p, part.length, true);
        out.set(part, p + 4);
        p += 4 + part.length;
      }
      return out;
    }
  }
}

function inferResponse(
  model: ServedModel,
  request: InferRequest,
  tensors: OutputTensor[],
): Response {
  let selected: { tensor: OutputTensor; binary: boolean }[];
  if (request.outputs === null) {
    selected = tensors.map((tensor) => ({ tensor, binary: request.binaryDefault }));
  } else {
    selected = request.outputs.map((o) => {
      const tensor = tensors.find((t) => t.name === o.name);
      if (tensor === undefined) {
        throw new HttpError(
          400,
          `Unknown output ${quote(o.name)} for model "${model.config.name}"; outputs are ${
            tensors.map((t) => t.name).join(", ")
          }`,
          { param: "outputs" },
        );
      }
      return { tensor, binary: o.binary };
    });
  }
  const blobs: Uint8Array[] = [];
  const outputs = selected.map(({ tensor, binary }) => {
    const base = { name: tensor.name, datatype: tensor.datatype, shape: tensor.shape };
    if (binary) {
      const blob = encodeBinary(tensor);
      blobs.push(blob);
      return { ...base, parameters: { binary_data_size: blob.length } };
    }
    return { ...base, data: Array.from(tensor.data as ArrayLike<number | string>) };
  });
  const header = {
    model_name: model.config.name,
    model_version: VERSION,
    ...(request.id !== null ? { id: request.id } : {}),
    outputs,
  };
  if (blobs.length === 0) return jsonResponse(header);
  const json = encoder.encode(JSON.stringify(header));
  const body = new Uint8Array(json.length + blobs.reduce((s, b) => s + b.length, 0));
  body.set(json, 0);
  let p = json.length;
  for (const blob of blobs) {
    body.set(blob, p);
    p += blob.length;
  }
  return new Response(body, {
    headers: {
      "content-type": "application/octet-stream",
      [HEADER_LENGTH]: String(json.length),
    },
  });
}

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
      const inputs = inputByName(model, request, ["text"]);
      const texts = textInput(inputs.get("text"), "text", maxInputs);
      const lengths = await model.checkTexts(texts, { truncate, param: "text", single: false });
      context.log.inputs = texts.length;
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
      const inputs = inputByName(model, request, ["text"]);
      const texts = textInput(inputs.get("text"), "text", maxInputs);
      const lengths = await model.checkTexts(texts, { truncate, param: "text", single: false });
      context.log.inputs = texts.length;
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

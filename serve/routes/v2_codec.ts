/**
 * The KServe v2 / Open Inference Protocol wire format of `v2.ts`: reading an inference
 * request (JSON tensors, or Triton's binary tensor data extension after a JSON header of
 * `Inference-Header-Content-Length` bytes) into checked tensors, and writing the response
 * (JSON, or binary outputs where asked).
 *
 * @module
 */
import {
  decodeUtf8,
  HttpError,
  jsonResponse,
  quote,
  readBody,
  requireObject,
  typeName,
} from "../http.ts";
import type { ServedModel } from "../models.ts";
import type { RouteContext } from "../state.ts";

/** The only model version served. */
export const VERSION = "1";
export const HEADER_LENGTH = "inference-header-content-length";

export type Datatype = "BYTES" | "INT64" | "INT32" | "FP32";

export interface InputTensor {
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

export interface InferRequest {
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

export async function readInferRequest(context: RouteContext): Promise<InferRequest> {
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
export interface OutputTensor {
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

export function inferResponse(
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

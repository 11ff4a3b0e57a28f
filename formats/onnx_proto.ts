/**
 * ONNX `ModelProto` decoding: the generated schema (`onnx_pb.ts`, from the official `onnx.proto`)
 * parses the bytes, and this module turns its messages into the plain objects of
 * `onnx_types.ts` that the importers read.
 *
 * Decoding keeps tensor `raw_data` as views into the file buffer: nothing copies the whole
 * file. External data is read from files next to the model, never outside its folder.
 *
 * @module
 */
// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { fromBinary, isFieldSet } from "npm:@bufbuild/protobuf@2.17.0";
import {
  AttributeProto_AttributeType,
  AttributeProtoSchema,
  type GraphProto,
  type ModelProto,
  ModelProtoSchema,
  type NodeProto,
  type StringStringEntryProto,
  type TensorProto,
  TensorProto_DataLocation,
  TensorProtoSchema,
  type ValueInfoProto,
} from "./onnx_pb.ts";
import {
  AttributeType,
  DataType,
  dataTypeName,
  elementSize,
  type OnnxAttribute,
  type OnnxGraph,
  type OnnxModel,
  type OnnxNode,
  type OnnxTensor,
  type OnnxValueInfo,
} from "./onnx_types.ts";
import { emptyAttribute, rawTensor } from "./onnx_tensors.ts";

/** An int64 field as a JS number (sizes and versions; `validateTensors` refuses unsafe dims). */
const num = (v: bigint): number => Number(v);

function entries(list: StringStringEntryProto[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const e of list) out[e.key] = e.value;
  return out;
}

function toModel(m: ModelProto): OnnxModel {
  if (m.graph === undefined) throw new RangeError("the model has no graph (is this an ONNX file?)");
  return {
    irVersion: num(m.irVersion),
    opsetImport: m.opsetImport.map((o) => ({ domain: o.domain, version: num(o.version) })),
    producerName: m.producerName,
    producerVersion: m.producerVersion,
    domain: m.domain,
    modelVersion: num(m.modelVersion),
    metadata: entries(m.metadataProps),
    graph: toGraph(m.graph),
  };
}

function toGraph(g: GraphProto): OnnxGraph {
  return {
    name: g.name,
    nodes: g.node.map(toNode),
    initializers: g.initializer.map(toTensor),
    inputs: g.input.map(toValueInfo),
    outputs: g.output.map(toValueInfo),
    valueInfo: g.valueInfo.map(toValueInfo),
  };
}

function toNode(n: NodeProto): OnnxNode {
  return {
    name: n.name,
    opType: n.opType,
    domain: n.domain,
    inputs: n.input,
    outputs: n.output,
    attributes: n.attribute.map((p) => {
      const a: OnnxAttribute = emptyAttribute(p.name);
      a.type = p.type;
      a.f = p.f;
      a.i = num(p.i);
      a.s = isFieldSet(p, AttributeProtoSchema.field.s) ? p.s : null;
      a.t = p.t === undefined ? null : toTensor(p.t);
      a.g = p.g === undefined ? null : toGraph(p.g);
      a.floats = p.floats;
      a.ints = p.ints.map(num);
      a.strings = p.strings;
      a.tensors = p.tensors.map(toTensor);
      a.graphs = p.graphs.map(toGraph);
      if (a.type === AttributeProto_AttributeType.UNDEFINED) a.type = inferAttributeType(a);
      return a;
    }),
  };
}

/** Very old exporters leave an attribute's `type` unset: the field present tells it. */
function inferAttributeType(a: OnnxAttribute): number {
  if (a.t) return AttributeType.TENSOR;
  if (a.g) return AttributeType.GRAPH;
  if (a.s) return AttributeType.STRING;
  if (a.ints.length) return AttributeType.INTS;
  if (a.floats.length) return AttributeType.FLOATS;
  return AttributeType.UNDEFINED;
}

function toTensor(p: TensorProto): OnnxTensor {
  const t: OnnxTensor = rawTensor(p.name, p.dataType, p.dims.map(num), null);
  // Presence, not length: an empty tensor's raw_data is present and empty. The bytes are a view
  // into the file buffer (protobuf-es reads bytes fields as subarrays).
  if (isFieldSet(p, TensorProtoSchema.field.rawData)) t.rawData = p.rawData;
  if (p.floatData.length) t.floatData = Float32Array.from(p.floatData);
  if (p.int32Data.length) t.int32Data = Int32Array.from(p.int32Data);
  if (p.int64Data.length) t.int64Data = BigInt64Array.from(p.int64Data);
  if (p.doubleData.length) t.doubleData = Float64Array.from(p.doubleData);
  if (p.uint64Data.length) t.uint64Data = BigUint64Array.from(p.uint64Data);
  if (p.stringData.length) t.stringData = p.stringData;
  if (p.dataLocation === TensorProto_DataLocation.EXTERNAL) {
    t.externalData = externalData(t.name, entries(p.externalData));
  }
  return t;
}

function externalData(name: string, external: Record<string, string>): OnnxTensor["externalData"] {
  if (!external.location) {
    throw new RangeError(`tensor "${name}" has external data without a location`);
  }
  const offset = external.offset === undefined ? 0 : Number(external.offset);
  const length = external.length === undefined ? null : Number(external.length);
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(`tensor "${name}" has external data offset "${external.offset}"`);
  }
  if (length !== null && (!Number.isSafeInteger(length) || length < 0)) {
    throw new RangeError(`tensor "${name}" has external data length "${external.length}"`);
  }
  return { location: external.location, offset, length };
}

function toValueInfo(p: ValueInfoProto): OnnxValueInfo {
  const v: OnnxValueInfo = { name: p.name, elemType: 0, shape: null };
  if (p.type?.value.case !== "tensorType") return v;
  const tensor = p.type.value.value;
  v.elemType = tensor.elemType;
  if (tensor.shape !== undefined) {
    v.shape = tensor.shape.dim.map((d) =>
      d.value.case === "dimValue"
        ? num(d.value.value)
        : d.value.case === "dimParam"
        ? d.value.value
        : null
    );
  }
  return v;
}

/**
 * Decodes an ONNX `ModelProto` with the schema generated from the official `onnx.proto`
 * (`onnx_pb.ts`). Tensor `rawData` fields are views into `bytes`; external data is not resolved
 * (see {@linkcode readOnnxModel}).
 *
 * @param bytes The serialized model.
 * @param label How the model is named in error messages (a file path, usually).
 * @throws Error naming `label` when the data is truncated or corrupt.
 */
export function decodeOnnxModel(bytes: Uint8Array, label = "<buffer>"): OnnxModel {
  let model: OnnxModel;
  try {
    // Unknown fields (training info, newer additions) are skipped, not kept: nothing reads them.
    model = toModel(fromBinary(ModelProtoSchema, bytes, { readUnknownFields: false }));
  } catch (err) {
    const what = err instanceof Error ? err.message : String(err);
    throw new Error(
      `Cannot parse ONNX model "${label}": the file is truncated or corrupt (${what}; ${bytes.byteLength} bytes)`,
      { cause: err },
    );
  }
  validateTensors(model.graph, label);
  return model;
}

function validateTensors(graph: OnnxGraph, label: string): void {
  const check = (t: OnnxTensor, where: string): void => {
    const size = elementSize(t.dataType);
    if (t.dataType === 0 || (size === 0 && t.dataType !== DataType.STRING)) {
      throw new Error(
        `Invalid ONNX model "${label}": ${where} "${t.name}" has unsupported data type ${t.dataType}`,
      );
    }
    let count = 1;
    for (const dim of t.dims) {
      if (!Number.isSafeInteger(dim) || dim < 0) {
        throw new Error(
          `Invalid ONNX model "${label}": ${where} "${t.name}" has dims [${t.dims.join(", ")}]`,
        );
      }
      count *= dim;
    }
    if (t.rawData !== null && t.rawData.byteLength !== count * size) {
      throw new Error(
        `Invalid ONNX model "${label}": ${where} "${t.name}" has ${t.rawData.byteLength} bytes of raw_data, expected ${
          count * size
        } for ${dataTypeName(t.dataType)}[${t.dims.join(", ")}]`,
      );
    }
  };
  for (const t of graph.initializers) check(t, "initializer");
  for (const n of graph.nodes) {
    for (const a of n.attributes) {
      if (a.t) check(a.t, `attribute "${a.name}" of node "${n.name}" (${n.opType})`);
      if (a.g) validateTensors(a.g, label);
    }
  }
}

/** Options of {@linkcode readOnnxModel}. */
export interface ReadOnnxOptions {
  /** Resolve external data into `rawData` views (default `true`). */
  loadExternalData?: boolean;
}

/**
 * Reads and decodes an ONNX file. External-data files referenced by tensors are read once
 * each, and every external tensor's `rawData` becomes a view into that file's buffer.
 *
 * @throws Error naming the file when it is missing, truncated, corrupt, or references external
 *   data outside its folder or past the end of the data file.
 */
export async function readOnnxModel(
  path: string,
  options: ReadOnnxOptions = {},
): Promise<OnnxModel> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new Error(`Cannot read ONNX model "${path}": ${(err as Error).message}`, { cause: err });
  }
  const model = decodeOnnxModel(bytes, path);
  if (options.loadExternalData ?? true) await resolveExternalData(model.graph, path);
  return model;
}

/** The folder part of a path ("." for a bare file name). */
export function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/** Refuses external data that a symbolic link takes outside the model's folder. */
async function checkInside(
  dir: string,
  loc: string,
  modelPath: string,
  tensor: string,
): Promise<void> {
  let real: string;
  let root: string;
  try {
    [real, root] = [await Deno.realPath(`${dir}/${loc}`), await Deno.realPath(dir)];
  } catch {
    return; // missing: the read below reports it
  }
  if (!real.startsWith(root.endsWith("/") ? root : `${root}/`)) {
    throw new Error(
      `Invalid ONNX model "${modelPath}": tensor "${tensor}" points to external data "${loc}", ` +
        `a link to "${real}" outside the model's folder`,
    );
  }
}

async function resolveExternalData(graph: OnnxGraph, modelPath: string): Promise<void> {
  const dir = dirname(modelPath);
  const files = new Map<string, Uint8Array>();
  for (const t of graph.initializers) {
    const ext = t.externalData;
    if (ext === null) continue;
    const loc = ext.location;
    if (loc.startsWith("/") || loc.split(/[\\/]/).includes("..")) {
      throw new Error(
        `Invalid ONNX model "${modelPath}": tensor "${t.name}" points to external data "${loc}" outside the model's folder`,
      );
    }
    let data = files.get(loc);
    if (data === undefined) {
      await checkInside(dir, loc, modelPath, t.name);
      try {
        data = await Deno.readFile(`${dir}/${loc}`);
      } catch (err) {
        throw new Error(
          `Cannot read external data "${dir}/${loc}" of ONNX model "${modelPath}" (tensor "${t.name}"): ${
            (err as Error).message
          }`,
          { cause: err },
        );
      }
      files.set(loc, data);
    }
    const count = t.dims.reduce((a, b) => a * b, 1);
    const expected = count * elementSize(t.dataType);
    const length = ext.length ?? data.byteLength - ext.offset;
    if (length !== expected || ext.offset + length > data.byteLength) {
      throw new Error(
        `Invalid ONNX model "${modelPath}": external data of tensor "${t.name}" (offset ${ext.offset}, length ${length}) ` +
          `does not fit: expected ${expected} bytes within "${loc}" of ${data.byteLength} bytes`,
      );
    }
    t.rawData = data.subarray(ext.offset, ext.offset + length);
  }
}

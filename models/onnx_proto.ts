/**
 * ONNX `ModelProto` decoding and encoding on the protobuf wire format, with a small
 * hand-written schema walk over the fields BERT-family graphs use (see `onnx.proto` in the
 * ONNX repository for the field numbers).
 *
 * Decoding keeps tensor `raw_data` as views into the file buffer: nothing copies the whole
 * file. Encoding streams: {@linkcode writeOnnxModel} computes every length up front and writes
 * tensor payloads one at a time, optionally into an external-data file, so a BERT-Large graph
 * never needs more memory than its largest tensor.
 *
 * @module
 */

// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { BinaryReader, BinaryWriter, WireType } from "npm:@bufbuild/protobuf@2.17.0/wire";
import { bfloat16ToFloat32, float16ToFloat32 } from "./weights.ts";

/** ONNX `TensorProto.DataType` values. */
export const DataType = Object.freeze(
  {
    UNDEFINED: 0,
    FLOAT: 1,
    UINT8: 2,
    INT8: 3,
    UINT16: 4,
    INT16: 5,
    INT32: 6,
    INT64: 7,
    STRING: 8,
    BOOL: 9,
    FLOAT16: 10,
    DOUBLE: 11,
    UINT32: 12,
    UINT64: 13,
    COMPLEX64: 14,
    COMPLEX128: 15,
    BFLOAT16: 16,
  } as const,
);

const DATA_TYPE_NAMES: Record<number, string> = Object.fromEntries(
  Object.entries(DataType).map(([k, v]) => [v, k]),
);

const ELEMENT_SIZE: Record<number, number> = {
  1: 4,
  2: 1,
  3: 1,
  4: 2,
  5: 2,
  6: 4,
  7: 8,
  9: 1,
  10: 2,
  11: 8,
  12: 4,
  13: 8,
  14: 8,
  15: 16,
  16: 2,
};

/** Name of an ONNX data type, e.g. `FLOAT` for 1. */
export function dataTypeName(dataType: number): string {
  return DATA_TYPE_NAMES[dataType] ?? `data type ${dataType}`;
}

/** Bytes per element of a fixed-size ONNX data type, or 0 (STRING, unknown). */
export function elementSize(dataType: number): number {
  return ELEMENT_SIZE[dataType] ?? 0;
}

/** ONNX `AttributeProto.AttributeType` values. */
export const AttributeType = Object.freeze(
  {
    UNDEFINED: 0,
    FLOAT: 1,
    INT: 2,
    STRING: 3,
    TENSOR: 4,
    GRAPH: 5,
    FLOATS: 6,
    INTS: 7,
    STRINGS: 8,
    TENSORS: 9,
    GRAPHS: 10,
  } as const,
);

/** Where a tensor's bytes live when `data_location` is EXTERNAL. */
export interface OnnxExternalData {
  /** File path relative to the model's folder. */
  location: string;
  /** Byte offset in that file. */
  offset: number;
  /** Byte length, or `null` when the entry is absent (rest of the file). */
  length: number | null;
}

/** A decoded `TensorProto` (initializer or constant). */
export interface OnnxTensor {
  /** Tensor name. */
  name: string;
  /** ONNX data type ({@linkcode DataType}). */
  dataType: number;
  /** Shape. */
  dims: number[];
  /**
   * Little-endian element bytes: a view into the model file buffer (or the external data file
   * buffer once {@linkcode readOnnxModel} has resolved it), or `null` when the tensor uses one
   * of the typed fields below.
   */
  rawData: Uint8Array | null;
  /** `float_data` (FLOAT, and COMPLEX64 pairs). */
  floatData: Float32Array | null;
  /** `int32_data` (INT32 and all narrower integer types, BOOL, FLOAT16/BFLOAT16 bits). */
  int32Data: Int32Array | null;
  /** `int64_data`. */
  int64Data: BigInt64Array | null;
  /** `double_data`. */
  doubleData: Float64Array | null;
  /** `uint64_data` (UINT32, UINT64). */
  uint64Data: BigUint64Array | null;
  /** `string_data`. */
  stringData: Uint8Array[] | null;
  /** External data reference, when `data_location` is EXTERNAL. */
  externalData: OnnxExternalData | null;
}

/** A decoded `AttributeProto`. Only the field matching `type` is meaningful. */
export interface OnnxAttribute {
  /** Attribute name. */
  name: string;
  /** {@linkcode AttributeType}. */
  type: number;
  /** FLOAT. */
  f: number;
  /** INT (int64 read as a JS number). */
  i: number;
  /** STRING (raw bytes). */
  s: Uint8Array | null;
  /** TENSOR. */
  t: OnnxTensor | null;
  /** GRAPH. */
  g: OnnxGraph | null;
  /** FLOATS. */
  floats: number[];
  /** INTS. */
  ints: number[];
  /** STRINGS. */
  strings: Uint8Array[];
  /** TENSORS. */
  tensors: OnnxTensor[];
  /** GRAPHS. */
  graphs: OnnxGraph[];
}

/** A decoded `NodeProto`. */
export interface OnnxNode {
  /** Node name (may be empty). */
  name: string;
  /** Operator, e.g. `MatMul`. */
  opType: string;
  /** Operator domain; `""` is the default ONNX domain, `com.microsoft` ORT contrib ops. */
  domain: string;
  /** Input value names; `""` marks an omitted optional input. */
  inputs: string[];
  /** Output value names. */
  outputs: string[];
  /** Attributes. */
  attributes: OnnxAttribute[];
}

/** A decoded `ValueInfoProto` (tensor types only). */
export interface OnnxValueInfo {
  /** Value name. */
  name: string;
  /** Element type ({@linkcode DataType}); 0 when not a tensor type. */
  elemType: number;
  /** Dimensions: a number, a symbolic name, or `null` for an unknown dim; `null` = no shape. */
  shape: (number | string | null)[] | null;
}

/** A decoded `GraphProto`. */
export interface OnnxGraph {
  /** Graph name. */
  name: string;
  /** Nodes in file order (topologically sorted in valid models). */
  nodes: OnnxNode[];
  /** Initializers. */
  initializers: OnnxTensor[];
  /** Graph inputs. */
  inputs: OnnxValueInfo[];
  /** Graph outputs. */
  outputs: OnnxValueInfo[];
  /** Intermediate value infos. */
  valueInfo: OnnxValueInfo[];
}

/** One `opset_import` entry. */
export interface OnnxOpset {
  /** `""` for the default domain. */
  domain: string;
  /** Opset version. */
  version: number;
}

/** A decoded `ModelProto`. */
export interface OnnxModel {
  /** IR version. */
  irVersion: number;
  /** Imported opsets. */
  opsetImport: OnnxOpset[];
  /** Producer name. */
  producerName: string;
  /** Producer version. */
  producerVersion: string;
  /** Model domain. */
  domain: string;
  /** Model version. */
  modelVersion: number;
  /** `metadata_props` key/value pairs. */
  metadata: Record<string, string>;
  /** The main graph. */
  graph: OnnxGraph;
}

// ---------------------------------------------------------------------------------------------
// Decoding

class Decoder {
  readonly r: BinaryReader;
  readonly path: string[] = [];
  constructor(readonly buf: Uint8Array) {
    this.r = new BinaryReader(buf);
  }

  /** Reads the length prefix of a nested message and returns its end offset. */
  messageEnd(): number {
    const len = this.r.uint32();
    const end = this.r.pos + len;
    if (end > this.r.len) {
      throw new RangeError(
        `a ${len}-byte field runs past the end of the data (${this.r.len - this.r.pos} bytes left)`,
      );
    }
    return end;
  }

  checkEnd(end: number): void {
    if (this.r.pos !== end) {
      throw new RangeError(`message overruns its length by ${this.r.pos - end} bytes`);
    }
  }

  string(): string {
    return this.r.string();
  }

  int64(): number {
    return Number(this.r.int64());
  }

  /** Reads a repeated scalar field that may be packed or not. */
  repeated(wireType: WireType, readOne: () => void): void {
    if (wireType === WireType.LengthDelimited) {
      const end = this.messageEnd();
      while (this.r.pos < end) readOne();
      this.checkEnd(end);
    } else {
      readOne();
    }
  }
}

function decodeModelProto(d: Decoder): OnnxModel {
  const r = d.r;
  const model: OnnxModel = {
    irVersion: 0,
    opsetImport: [],
    producerName: "",
    producerVersion: "",
    domain: "",
    modelVersion: 0,
    metadata: {},
    graph: emptyGraph(),
  };
  let sawGraph = false;
  while (r.pos < r.len) {
    const [field, wt] = r.tag();
    switch (field) {
      case 1:
        model.irVersion = d.int64();
        break;
      case 2:
        model.producerName = d.string();
        break;
      case 3:
        model.producerVersion = d.string();
        break;
      case 4:
        model.domain = d.string();
        break;
      case 5:
        model.modelVersion = d.int64();
        break;
      case 7:
        d.path.push("graph");
        model.graph = decodeGraph(d, d.messageEnd());
        d.path.pop();
        sawGraph = true;
        break;
      case 8: {
        const end = d.messageEnd();
        const opset: OnnxOpset = { domain: "", version: 0 };
        while (r.pos < end) {
          const [f, w] = r.tag();
          if (f === 1) opset.domain = d.string();
          else if (f === 2) opset.version = d.int64();
          else r.skip(w, f);
        }
        d.checkEnd(end);
        model.opsetImport.push(opset);
        break;
      }
      case 14: {
        const [k, v] = decodeStringPair(d);
        model.metadata[k] = v;
        break;
      }
      default:
        r.skip(wt, field);
    }
  }
  if (!sawGraph) throw new RangeError("the model has no graph (is this an ONNX file?)");
  return model;
}

function emptyGraph(): OnnxGraph {
  return { name: "", nodes: [], initializers: [], inputs: [], outputs: [], valueInfo: [] };
}

function decodeStringPair(d: Decoder): [string, string] {
  const r = d.r;
  const end = d.messageEnd();
  let key = "";
  let value = "";
  while (r.pos < end) {
    const [f, w] = r.tag();
    if (f === 1) key = d.string();
    else if (f === 2) value = d.string();
    else r.skip(w, f);
  }
  d.checkEnd(end);
  return [key, value];
}

function decodeGraph(d: Decoder, end: number): OnnxGraph {
  const r = d.r;
  const g = emptyGraph();
  while (r.pos < end) {
    const [field, wt] = r.tag();
    switch (field) {
      case 1:
        d.path.push(`node[${g.nodes.length}]`);
        g.nodes.push(decodeNode(d, d.messageEnd()));
        d.path.pop();
        break;
      case 2:
        g.name = d.string();
        break;
      case 5:
        d.path.push(`initializer[${g.initializers.length}]`);
        g.initializers.push(decodeTensor(d, d.messageEnd()));
        d.path.pop();
        break;
      case 11:
        g.inputs.push(decodeValueInfo(d, d.messageEnd()));
        break;
      case 12:
        g.outputs.push(decodeValueInfo(d, d.messageEnd()));
        break;
      case 13:
        g.valueInfo.push(decodeValueInfo(d, d.messageEnd()));
        break;
      default:
        r.skip(wt, field);
    }
  }
  d.checkEnd(end);
  return g;
}

function decodeNode(d: Decoder, end: number): OnnxNode {
  const r = d.r;
  const n: OnnxNode = { name: "", opType: "", domain: "", inputs: [], outputs: [], attributes: [] };
  while (r.pos < end) {
    const [field, wt] = r.tag();
    switch (field) {
      case 1:
        n.inputs.push(d.string());
        break;
      case 2:
        n.outputs.push(d.string());
        break;
      case 3:
        n.name = d.string();
        break;
      case 4:
        n.opType = d.string();
        break;
      case 5:
        d.path.push(`attribute[${n.attributes.length}]`);
        n.attributes.push(decodeAttribute(d, d.messageEnd()));
        d.path.pop();
        break;
      case 7:
        n.domain = d.string();
        break;
      default:
        r.skip(wt, field);
    }
  }
  d.checkEnd(end);
  return n;
}

function decodeAttribute(d: Decoder, end: number): OnnxAttribute {
  const r = d.r;
  const a: OnnxAttribute = {
    name: "",
    type: 0,
    f: 0,
    i: 0,
    s: null,
    t: null,
    g: null,
    floats: [],
    ints: [],
    strings: [],
    tensors: [],
    graphs: [],
  };
  while (r.pos < end) {
    const [field, wt] = r.tag();
    switch (field) {
      case 1:
        a.name = d.string();
        break;
      case 2:
        a.f = r.float();
        break;
      case 3:
        a.i = d.int64();
        break;
      case 4:
        a.s = r.bytes();
        break;
      case 5:
        a.t = decodeTensor(d, d.messageEnd());
        break;
      case 6:
        a.g = decodeGraph(d, d.messageEnd());
        break;
      case 7:
        d.repeated(wt, () => a.floats.push(r.float()));
        break;
      case 8:
        d.repeated(wt, () => a.ints.push(d.int64()));
        break;
      case 9:
        a.strings.push(r.bytes());
        break;
      case 10:
        a.tensors.push(decodeTensor(d, d.messageEnd()));
        break;
      case 11:
        a.graphs.push(decodeGraph(d, d.messageEnd()));
        break;
      case 20:
        a.type = r.int32();
        break;
      default:
        r.skip(wt, field);
    }
  }
  d.checkEnd(end);
  if (a.type === 0) {
    // Very old exporters leave `type` unset; infer it from the field present.
    if (a.t) a.type = AttributeType.TENSOR;
    else if (a.g) a.type = AttributeType.GRAPH;
    else if (a.s) a.type = AttributeType.STRING;
    else if (a.ints.length) a.type = AttributeType.INTS;
    else if (a.floats.length) a.type = AttributeType.FLOATS;
  }
  return a;
}

function decodeTensor(d: Decoder, end: number): OnnxTensor {
  const r = d.r;
  const t: OnnxTensor = {
    name: "",
    dataType: 0,
    dims: [],
    rawData: null,
    floatData: null,
    int32Data: null,
    int64Data: null,
    doubleData: null,
    uint64Data: null,
    stringData: null,
    externalData: null,
  };
  const floats: number[] = [];
  const int32s: number[] = [];
  const int64s: bigint[] = [];
  const doubles: number[] = [];
  const uint64s: bigint[] = [];
  const strings: Uint8Array[] = [];
  const external: Record<string, string> = {};
  let location = 0;
  while (r.pos < end) {
    const [field, wt] = r.tag();
    switch (field) {
      case 1:
        d.repeated(wt, () => t.dims.push(d.int64()));
        break;
      case 2:
        t.dataType = r.int32();
        break;
      case 4:
        d.repeated(wt, () => floats.push(r.float()));
        break;
      case 5:
        d.repeated(wt, () => int32s.push(r.int32()));
        break;
      case 6:
        strings.push(r.bytes());
        break;
      case 7:
        d.repeated(wt, () => int64s.push(BigInt(r.int64())));
        break;
      case 8:
        t.name = d.string();
        break;
      case 9:
        t.rawData = r.bytes();
        break;
      case 10:
        d.repeated(wt, () => doubles.push(r.double()));
        break;
      case 11:
        d.repeated(wt, () => uint64s.push(BigInt(r.uint64())));
        break;
      case 13: {
        const [k, v] = decodeStringPair(d);
        external[k] = v;
        break;
      }
      case 14:
        location = r.int32();
        break;
      default:
        r.skip(wt, field);
    }
  }
  d.checkEnd(end);
  if (floats.length) t.floatData = Float32Array.from(floats);
  if (int32s.length) t.int32Data = Int32Array.from(int32s);
  if (int64s.length) t.int64Data = BigInt64Array.from(int64s);
  if (doubles.length) t.doubleData = Float64Array.from(doubles);
  if (uint64s.length) t.uint64Data = BigUint64Array.from(uint64s);
  if (strings.length) t.stringData = strings;
  if (location === 1) {
    if (!external.location) {
      throw new RangeError(`tensor "${t.name}" has external data without a location`);
    }
    const offset = external.offset === undefined ? 0 : Number(external.offset);
    const length = external.length === undefined ? null : Number(external.length);
    if (!Number.isSafeInteger(offset) || offset < 0) {
      throw new RangeError(`tensor "${t.name}" has external data offset "${external.offset}"`);
    }
    if (length !== null && (!Number.isSafeInteger(length) || length < 0)) {
      throw new RangeError(`tensor "${t.name}" has external data length "${external.length}"`);
    }
    t.externalData = { location: external.location, offset, length };
  }
  return t;
}

function decodeValueInfo(d: Decoder, end: number): OnnxValueInfo {
  const r = d.r;
  const v: OnnxValueInfo = { name: "", elemType: 0, shape: null };
  while (r.pos < end) {
    const [field, wt] = r.tag();
    if (field === 1) {
      v.name = d.string();
    } else if (field === 2) {
      const typeEnd = d.messageEnd();
      while (r.pos < typeEnd) {
        const [tf, tw] = r.tag();
        if (tf !== 1) {
          r.skip(tw, tf);
          continue;
        }
        const tensorEnd = d.messageEnd();
        while (r.pos < tensorEnd) {
          const [f, w] = r.tag();
          if (f === 1) {
            v.elemType = r.int32();
          } else if (f === 2) {
            v.shape = [];
            const shapeEnd = d.messageEnd();
            while (r.pos < shapeEnd) {
              const [sf, sw] = r.tag();
              if (sf !== 1) {
                r.skip(sw, sf);
                continue;
              }
              const dimEnd = d.messageEnd();
              let dim: number | string | null = null;
              while (r.pos < dimEnd) {
                const [df, dw] = r.tag();
                if (df === 1) dim = d.int64();
                else if (df === 2) dim = d.string();
                else r.skip(dw, df);
              }
              d.checkEnd(dimEnd);
              v.shape.push(dim);
            }
            d.checkEnd(shapeEnd);
          } else {
            r.skip(w, f);
          }
        }
        d.checkEnd(tensorEnd);
      }
      d.checkEnd(typeEnd);
    } else {
      r.skip(wt, field);
    }
  }
  d.checkEnd(end);
  return v;
}

/**
 * Decodes an ONNX `ModelProto`. Tensor `rawData` fields are views into `bytes`; external data
 * is not resolved (see {@linkcode readOnnxModel}).
 *
 * @param bytes The serialized model.
 * @param label How the model is named in error messages (a file path, usually).
 * @throws Error naming `label` and the field being read when the data is truncated or corrupt.
 */
export function decodeOnnxModel(bytes: Uint8Array, label = "<buffer>"): OnnxModel {
  const d = new Decoder(bytes);
  let model: OnnxModel;
  try {
    model = decodeModelProto(d);
  } catch (err) {
    const where = d.path.length ? ` while reading ${d.path.join(".")}` : "";
    const what = err instanceof Error ? err.message : String(err);
    throw new Error(
      `Cannot parse ONNX model "${label}": the file is truncated or corrupt (${what} at byte ${d.r.pos} of ${bytes.byteLength}${where})`,
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

function dirname(path: string): string {
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

// ---------------------------------------------------------------------------------------------
// Tensor data access

/** Number of elements of a tensor (product of dims; 1 for a scalar). */
export function tensorSize(t: OnnxTensor): number {
  return t.dims.reduce((a, b) => a * b, 1);
}

function rawOrThrow(t: OnnxTensor): Uint8Array | null {
  if (t.rawData === null && t.externalData !== null) {
    throw new Error(
      `Tensor "${t.name}" has external data "${t.externalData.location}" that was not loaded`,
    );
  }
  return t.rawData;
}

function checkCount(t: OnnxTensor, n: number): void {
  const expected = tensorSize(t);
  if (n !== expected) {
    throw new Error(
      `Tensor "${t.name}" holds ${n} values, expected ${expected} for dims [${t.dims.join(", ")}]`,
    );
  }
}

/**
 * The tensor's values as a new fp32 array (FLOAT, FLOAT16, BFLOAT16 and DOUBLE are
 * converted). The result never aliases the file buffer.
 */
export function tensorToFloat32(t: OnnxTensor): Float32Array {
  const raw = rawOrThrow(t);
  const n = tensorSize(t);
  switch (t.dataType) {
    case DataType.FLOAT: {
      if (raw !== null) return new Float32Array(copyBytes(raw).buffer);
      const out = t.floatData ?? new Float32Array(0);
      checkCount(t, out.length);
      return Float32Array.from(out);
    }
    case DataType.DOUBLE: {
      const src = raw !== null ? new Float64Array(copyBytes(raw).buffer) : t.doubleData;
      checkCount(t, src?.length ?? 0);
      return Float32Array.from(src ?? []);
    }
    case DataType.FLOAT16:
    case DataType.BFLOAT16: {
      const bits = raw !== null
        ? new Uint16Array(copyBytes(raw).buffer)
        : Uint16Array.from(t.int32Data ?? []);
      checkCount(t, bits.length);
      return t.dataType === DataType.FLOAT16 ? float16ToFloat32(bits) : bfloat16ToFloat32(bits);
    }
    default:
      throw new Error(
        `Tensor "${t.name}" is ${dataTypeName(t.dataType)}[${
          t.dims.join(", ")
        }], expected a float tensor (${n} values)`,
      );
  }
}

/**
 * The tensor's values as JS numbers, for small integer or float tensors (shapes, axes,
 * scalars). INT64 values beyond 2^53 lose precision (e.g. INT64_MAX in Slice ends).
 */
export function tensorToNumbers(t: OnnxTensor): number[] {
  const raw = rawOrThrow(t);
  let out: number[];
  if (raw !== null) {
    const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
    const size = elementSize(t.dataType);
    const n = size ? raw.byteLength / size : 0;
    out = new Array(n);
    for (let i = 0; i < n; i++) {
      const o = i * size;
      switch (t.dataType) {
        case DataType.FLOAT:
          out[i] = view.getFloat32(o, true);
          break;
        case DataType.DOUBLE:
          out[i] = view.getFloat64(o, true);
          break;
        case DataType.INT64:
          out[i] = Number(view.getBigInt64(o, true));
          break;
        case DataType.UINT64:
          out[i] = Number(view.getBigUint64(o, true));
          break;
        case DataType.INT32:
          out[i] = view.getInt32(o, true);
          break;
        case DataType.UINT32:
          out[i] = view.getUint32(o, true);
          break;
        case DataType.INT16:
          out[i] = view.getInt16(o, true);
          break;
        case DataType.UINT16:
          out[i] = view.getUint16(o, true);
          break;
        case DataType.INT8:
          out[i] = view.getInt8(o);
          break;
        case DataType.UINT8:
        case DataType.BOOL:
          out[i] = view.getUint8(o);
          break;
        case DataType.FLOAT16:
        case DataType.BFLOAT16:
          return Array.from(tensorToFloat32(t));
        default:
          throw new Error(`Tensor "${t.name}" has unsupported ${dataTypeName(t.dataType)} data`);
      }
    }
  } else if (t.dataType === DataType.FLOAT16 || t.dataType === DataType.BFLOAT16) {
    return Array.from(tensorToFloat32(t));
  } else {
    const typed = t.floatData ?? t.int32Data ?? t.doubleData;
    const big = t.int64Data ?? t.uint64Data;
    out = typed ? Array.from(typed) : big ? Array.from(big, Number) : [];
  }
  checkCount(t, out.length);
  return out;
}

function copyBytes(src: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(src.byteLength);
  out.set(src);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** A tensor whose bytes are produced only when written (keeps writer memory bounded). */
export interface LazyTensor {
  /** Tensor name. */
  name: string;
  /** Fixed-size {@linkcode DataType}. */
  dataType: number;
  /** Shape. */
  dims: number[];
  /** Returns exactly `product(dims) * elementSize(dataType)` little-endian bytes. */
  produce: () => Uint8Array;
}

/** A graph to encode: like {@linkcode OnnxGraph}, but initializers may be lazy. */
export interface OnnxGraphInit extends Omit<OnnxGraph, "initializers"> {
  /** Initializers, decoded or lazy. */
  initializers: (OnnxTensor | LazyTensor)[];
}

/** A model to encode: like {@linkcode OnnxModel}, but initializers may be lazy. */
export interface OnnxModelInit extends Omit<OnnxModel, "graph"> {
  /** The main graph. */
  graph: OnnxGraphInit;
}

/** A piece of output: bytes now, or bytes produced when they are written. */
type Piece = Uint8Array | { length: number; produce: () => Uint8Array; name: string };

class Pieces {
  readonly list: Piece[] = [];
  length = 0;
  /** Encodes small fields immediately. */
  small(fn: (w: BinaryWriter) => void): void {
    const w = new BinaryWriter();
    fn(w);
    this.push(w.finish());
  }
  push(p: Piece): void {
    this.list.push(p);
    this.length += p.length;
  }
  /** Appends a length-delimited field holding `sub`. */
  field(fieldNo: number, sub: Pieces): void {
    this.small((w) => w.tag(fieldNo, WireType.LengthDelimited).uint32(sub.length));
    for (const p of sub.list) this.list.push(p);
    this.length += sub.length;
  }
}

interface ExternalSink {
  location: string;
  threshold: number;
  align: number;
  pieces: Piece[];
  length: number;
}

function isLazy(t: OnnxTensor | LazyTensor): t is LazyTensor {
  return typeof (t as LazyTensor).produce === "function";
}

function encodeTensor(t: OnnxTensor | LazyTensor, sink: ExternalSink | null): Pieces {
  const out = new Pieces();
  out.small((w) => {
    for (const d of t.dims) w.tag(1, WireType.Varint).int64(d);
    w.tag(2, WireType.Varint).int32(t.dataType);
  });
  let payload: Piece | null = null;
  if (isLazy(t)) {
    const length = t.dims.reduce((a, b) => a * b, 1) * elementSize(t.dataType);
    payload = { length, produce: t.produce, name: t.name };
  } else if (t.rawData !== null) {
    payload = t.rawData;
  } else {
    out.small((w) => {
      const packed = <T>(field: number, values: ArrayLike<T> | null, put: (v: T) => void) => {
        if (!values || values.length === 0) return;
        w.tag(field, WireType.LengthDelimited).fork();
        for (let i = 0; i < values.length; i++) put(values[i]);
        w.join();
      };
      packed(4, t.floatData, (v) => w.float(v));
      packed(5, t.int32Data, (v) => w.int32(v));
      for (const s of t.stringData ?? []) w.tag(6, WireType.LengthDelimited).bytes(s);
      packed(7, t.int64Data, (v) => w.int64(v));
      packed(10, t.doubleData, (v) => w.double(v));
      packed(11, t.uint64Data, (v) => w.uint64(v));
    });
  }
  out.small((w) => w.tag(8, WireType.LengthDelimited).string(t.name));
  if (payload !== null) {
    if (sink !== null && payload.length >= sink.threshold) {
      const pad = (sink.align - (sink.length % sink.align)) % sink.align;
      if (pad) {
        sink.pieces.push(new Uint8Array(pad));
        sink.length += pad;
      }
      const offset = sink.length;
      sink.pieces.push(payload);
      sink.length += payload.length;
      out.small((w) => {
        const entry = (k: string, v: string) =>
          w.tag(13, WireType.LengthDelimited).fork()
            .tag(1, WireType.LengthDelimited).string(k)
            .tag(2, WireType.LengthDelimited).string(v)
            .join();
        entry("location", sink.location);
        entry("offset", String(offset));
        entry("length", String(payload.length));
        w.tag(14, WireType.Varint).int32(1);
      });
    } else {
      out.small((w) => w.tag(9, WireType.LengthDelimited).uint32(payload.length));
      out.push(payload);
    }
  }
  return out;
}

function encodeValueInfo(v: OnnxValueInfo): Pieces {
  const out = new Pieces();
  out.small((w) => {
    w.tag(1, WireType.LengthDelimited).string(v.name);
    w.tag(2, WireType.LengthDelimited).fork(); // TypeProto
    w.tag(1, WireType.LengthDelimited).fork(); // TypeProto.Tensor
    w.tag(1, WireType.Varint).int32(v.elemType);
    if (v.shape !== null) {
      w.tag(2, WireType.LengthDelimited).fork(); // TensorShapeProto
      for (const dim of v.shape) {
        w.tag(1, WireType.LengthDelimited).fork();
        if (typeof dim === "number") w.tag(1, WireType.Varint).int64(dim);
        else if (typeof dim === "string") w.tag(2, WireType.LengthDelimited).string(dim);
        w.join();
      }
      w.join();
    }
    w.join().join();
  });
  return out;
}

function encodeAttribute(a: OnnxAttribute): Pieces {
  const out = new Pieces();
  out.small((w) => {
    w.tag(1, WireType.LengthDelimited).string(a.name);
    w.tag(20, WireType.Varint).int32(a.type);
    switch (a.type) {
      case AttributeType.FLOAT:
        w.tag(2, WireType.Bit32).float(a.f);
        break;
      case AttributeType.INT:
        w.tag(3, WireType.Varint).int64(a.i);
        break;
      case AttributeType.STRING:
        w.tag(4, WireType.LengthDelimited).bytes(a.s ?? new Uint8Array(0));
        break;
      case AttributeType.FLOATS:
        for (const f of a.floats) w.tag(7, WireType.Bit32).float(f);
        break;
      case AttributeType.INTS:
        for (const i of a.ints) w.tag(8, WireType.Varint).int64(i);
        break;
      case AttributeType.STRINGS:
        for (const s of a.strings) w.tag(9, WireType.LengthDelimited).bytes(s);
        break;
    }
  });
  if (a.type === AttributeType.TENSOR && a.t) out.field(5, encodeTensor(a.t, null));
  if (a.type === AttributeType.GRAPH && a.g) out.field(6, encodeGraph(a.g, null));
  if (a.type === AttributeType.TENSORS) {
    for (const t of a.tensors) out.field(10, encodeTensor(t, null));
  }
  if (a.type === AttributeType.GRAPHS) {
    for (const g of a.graphs) out.field(11, encodeGraph(g, null));
  }
  return out;
}

function encodeNode(n: OnnxNode): Pieces {
  const out = new Pieces();
  out.small((w) => {
    for (const i of n.inputs) w.tag(1, WireType.LengthDelimited).string(i);
    for (const o of n.outputs) w.tag(2, WireType.LengthDelimited).string(o);
    if (n.name) w.tag(3, WireType.LengthDelimited).string(n.name);
    w.tag(4, WireType.LengthDelimited).string(n.opType);
    if (n.domain) w.tag(7, WireType.LengthDelimited).string(n.domain);
  });
  for (const a of n.attributes) out.field(5, encodeAttribute(a));
  return out;
}

function encodeGraph(g: OnnxGraphInit, sink: ExternalSink | null): Pieces {
  const out = new Pieces();
  for (const n of g.nodes) out.field(1, encodeNode(n));
  out.small((w) => w.tag(2, WireType.LengthDelimited).string(g.name));
  for (const t of g.initializers) out.field(5, encodeTensor(t, sink));
  for (const v of g.inputs) out.field(11, encodeValueInfo(v));
  for (const v of g.outputs) out.field(12, encodeValueInfo(v));
  for (const v of g.valueInfo) out.field(13, encodeValueInfo(v));
  return out;
}

function encodeModelPieces(m: OnnxModelInit, sink: ExternalSink | null): Pieces {
  const out = new Pieces();
  out.small((w) => {
    w.tag(1, WireType.Varint).int64(m.irVersion);
    if (m.producerName) w.tag(2, WireType.LengthDelimited).string(m.producerName);
    if (m.producerVersion) w.tag(3, WireType.LengthDelimited).string(m.producerVersion);
    if (m.domain) w.tag(4, WireType.LengthDelimited).string(m.domain);
    if (m.modelVersion) w.tag(5, WireType.Varint).int64(m.modelVersion);
  });
  out.field(7, encodeGraph(m.graph, sink));
  out.small((w) => {
    for (const o of m.opsetImport) {
      w.tag(8, WireType.LengthDelimited).fork();
      if (o.domain) w.tag(1, WireType.LengthDelimited).string(o.domain);
      w.tag(2, WireType.Varint).int64(o.version);
      w.join();
    }
    for (const [k, v] of Object.entries(m.metadata)) {
      w.tag(14, WireType.LengthDelimited).fork()
        .tag(1, WireType.LengthDelimited).string(k)
        .tag(2, WireType.LengthDelimited).string(v)
        .join();
    }
  });
  return out;
}

function materialize(p: Piece): Uint8Array {
  if (p instanceof Uint8Array) return p;
  const bytes = p.produce();
  if (bytes.byteLength !== p.length) {
    throw new Error(`Tensor "${p.name}" produced ${bytes.byteLength} bytes, expected ${p.length}`);
  }
  return bytes;
}

/** Encodes a whole model into one buffer (small models; see {@linkcode writeOnnxModel}). */
export function encodeOnnxModel(model: OnnxModelInit): Uint8Array {
  const pieces = encodeModelPieces(model, null);
  if (pieces.length > 0x7fffffff) {
    throw new Error(
      `ONNX model is ${pieces.length} bytes, over the 2 GiB protobuf limit: use external data`,
    );
  }
  const out = new Uint8Array(pieces.length);
  let offset = 0;
  for (const p of pieces.list) {
    out.set(materialize(p), offset);
    offset += p.length;
  }
  return out;
}

/** Options of {@linkcode writeOnnxModel}. */
export interface WriteOnnxOptions {
  /**
   * Put initializers of at least `threshold` bytes (default 1024) into the file `location`
   * (relative to the model's folder), each aligned to `align` bytes (default 64).
   */
  externalData?: { location: string; threshold?: number; align?: number };
}

/** Sizes written by {@linkcode writeOnnxModel}. */
export interface WriteOnnxResult {
  /** Bytes of the `.onnx` file. */
  bytes: number;
  /** Bytes of the external data file (0 when none). */
  externalBytes: number;
}

async function writePieces(path: string, pieces: Piece[]): Promise<number> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  let total = 0;
  try {
    const buffer = new Uint8Array(1 << 20);
    let used = 0;
    const flush = async (): Promise<void> => {
      let off = 0;
      while (off < used) off += await file.write(buffer.subarray(off, used));
      used = 0;
    };
    for (const p of pieces) {
      const bytes = materialize(p);
      total += bytes.byteLength;
      if (bytes.byteLength > buffer.byteLength - used) {
        await flush();
        if (bytes.byteLength >= buffer.byteLength) {
          let off = 0;
          while (off < bytes.byteLength) off += await file.write(bytes.subarray(off));
          continue;
        }
      }
      buffer.set(bytes, used);
      used += bytes.byteLength;
    }
    await flush();
    file.close();
    await Deno.rename(tmp, path);
  } catch (err) {
    try {
      file.close();
    } catch { /* already closed */ }
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
  return total;
}

/**
 * Writes a model to `path` (through a temporary file and a rename), streaming lazy tensors one
 * at a time, optionally with external data next to it.
 */
export async function writeOnnxModel(
  path: string,
  model: OnnxModelInit,
  options: WriteOnnxOptions = {},
): Promise<WriteOnnxResult> {
  let sink: ExternalSink | null = null;
  if (options.externalData) {
    const { location, threshold = 1024, align = 64 } = options.externalData;
    if (location.startsWith("/") || location.split("/").includes("..") || location === "") {
      throw new Error(`External data location "${location}" must be a plain relative file name`);
    }
    sink = { location, threshold, align, pieces: [], length: 0 };
  }
  const pieces = encodeModelPieces(model, sink);
  if (pieces.length > 0x7fffffff) {
    throw new Error(
      `ONNX model "${path}" would be ${pieces.length} bytes, over the 2 GiB protobuf limit: use external data`,
    );
  }
  let externalBytes = 0;
  if (sink !== null) {
    externalBytes = await writePieces(`${dirname(path)}/${sink.location}`, sink.pieces);
  }
  const bytes = await writePieces(path, pieces.list);
  return { bytes, externalBytes };
}

// ---------------------------------------------------------------------------------------------
// Builders (used by the test-model writer and tests)

/** A fresh attribute of the given type with every other field empty. */
export function makeAttribute(
  name: string,
  value: number | number[] | string | OnnxTensor,
  kind?: "float" | "int" | "floats" | "ints",
): OnnxAttribute {
  const a: OnnxAttribute = {
    name,
    type: 0,
    f: 0,
    i: 0,
    s: null,
    t: null,
    g: null,
    floats: [],
    ints: [],
    strings: [],
    tensors: [],
    graphs: [],
  };
  if (typeof value === "string") {
    a.type = AttributeType.STRING;
    a.s = new TextEncoder().encode(value);
  } else if (typeof value === "number") {
    if (kind === "float" || (kind === undefined && !Number.isInteger(value))) {
      a.type = AttributeType.FLOAT;
      a.f = value;
    } else {
      a.type = AttributeType.INT;
      a.i = value;
    }
  } else if (Array.isArray(value)) {
    if (kind === "floats") {
      a.type = AttributeType.FLOATS;
      a.floats = value;
    } else {
      a.type = AttributeType.INTS;
      a.ints = value;
    }
  } else {
    a.type = AttributeType.TENSOR;
    a.t = value;
  }
  return a;
}

/** A tensor holding `values` of the given type as raw little-endian bytes. */
export function makeTensor(
  name: string,
  dataType: number,
  dims: number[],
  values: ArrayLike<number> | ArrayLike<bigint>,
): OnnxTensor {
  let raw: Uint8Array;
  switch (dataType) {
    case DataType.FLOAT:
      raw = new Uint8Array(Float32Array.from(values as ArrayLike<number>).buffer);
      break;
    case DataType.INT64:
      raw = new Uint8Array(
        BigInt64Array.from(Array.from(values as ArrayLike<number | bigint>, (v) => BigInt(v)))
          .buffer,
      );
      break;
    case DataType.INT32:
      raw = new Uint8Array(Int32Array.from(values as ArrayLike<number>).buffer);
      break;
    case DataType.BOOL:
    case DataType.UINT8:
      raw = Uint8Array.from(values as ArrayLike<number>);
      break;
    default:
      throw new Error(`makeTensor does not support ${dataTypeName(dataType)}`);
  }
  const count = dims.reduce((a, b) => a * b, 1);
  if (raw.byteLength !== count * elementSize(dataType)) {
    throw new Error(`Tensor "${name}" got ${values.length} values for dims [${dims.join(", ")}]`);
  }
  return {
    name,
    dataType,
    dims,
    rawData: raw,
    floatData: null,
    int32Data: null,
    int64Data: null,
    doubleData: null,
    uint64Data: null,
    stringData: null,
    externalData: null,
  };
}

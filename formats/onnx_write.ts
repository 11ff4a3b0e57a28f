/**
 * ONNX `ModelProto` encoding that streams: {@linkcode writeOnnxModel} computes every length up
 * front and writes tensor payloads one at a time, optionally into an external-data file, so a
 * BERT-Large graph never needs more memory than its largest tensor. Every message is built and
 * encoded with the generated schema (`onnx_pb.ts`); only the main graph's initializers and their
 * raw data are framed here, with field numbers taken from that schema, so that they stream.
 *
 * @module
 */
// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { create, toBinary } from "npm:@bufbuild/protobuf@2.17.0";
// deno-lint-ignore no-import-prefix
import { BinaryWriter, WireType } from "npm:@bufbuild/protobuf@2.17.0/wire";
import {
  type AttributeProto,
  AttributeProtoSchema,
  type GraphProto,
  GraphProtoSchema,
  ModelProtoSchema,
  type NodeProto,
  NodeProtoSchema,
  StringStringEntryProtoSchema,
  type TensorProto,
  TensorProto_DataLocation,
  TensorProtoSchema,
  type ValueInfoProto,
  ValueInfoProtoSchema,
} from "./onnx_pb.ts";
import {
  AttributeType,
  elementSize,
  type OnnxAttribute,
  type OnnxGraph,
  type OnnxModel,
  type OnnxNode,
  type OnnxTensor,
  type OnnxValueInfo,
} from "./onnx_types.ts";
import { dirname } from "./onnx_proto.ts";

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

/**
 * Field numbers of the parts written piece by piece (the graph, its initializers, their raw
 * data), from the generated schema; every other field is encoded by `toBinary`.
 */
const MODEL_GRAPH = ModelProtoSchema.field.graph.number;
const GRAPH_INITIALIZER = GraphProtoSchema.field.initializer.number;
const TENSOR_RAW_DATA = TensorProtoSchema.field.rawData.number;

class Pieces {
  readonly list: Piece[] = [];
  length = 0;
  push(p: Piece): void {
    this.list.push(p);
    this.length += p.length;
  }
  /** Appends a length-delimited field's tag and length. */
  header(fieldNo: number, length: number): void {
    this.push(new BinaryWriter().tag(fieldNo, WireType.LengthDelimited).uint32(length).finish());
  }
  /** Appends a length-delimited field holding `sub`. */
  field(fieldNo: number, sub: Pieces): void {
    this.header(fieldNo, sub.length);
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

/** A `TensorProto` of everything but `raw_data` (dims, type, name, the typed value fields). */
function tensorHeader(t: OnnxTensor | LazyTensor): TensorProto {
  const header = create(TensorProtoSchema, {
    dims: t.dims.map(BigInt),
    dataType: t.dataType,
    name: t.name,
  });
  if (isLazy(t)) return header;
  if (t.floatData) header.floatData = Array.from(t.floatData);
  if (t.int32Data) header.int32Data = Array.from(t.int32Data);
  if (t.stringData) header.stringData = t.stringData;
  if (t.int64Data) header.int64Data = Array.from(t.int64Data);
  if (t.doubleData) header.doubleData = Array.from(t.doubleData);
  if (t.uint64Data) header.uint64Data = Array.from(t.uint64Data);
  return header;
}

/** A whole `TensorProto`, raw data included (attribute tensors: small constants). */
function tensorMessage(t: OnnxTensor): TensorProto {
  const message = tensorHeader(t);
  if (t.rawData !== null) message.rawData = t.rawData;
  return message;
}

/** Appends `payload` to the external-data file; returns its offset there. */
function sinkPayload(sink: ExternalSink, payload: Piece): number {
  const pad = (sink.align - (sink.length % sink.align)) % sink.align;
  if (pad) {
    sink.pieces.push(new Uint8Array(pad));
    sink.length += pad;
  }
  const offset = sink.length;
  sink.pieces.push(payload);
  sink.length += payload.length;
  return offset;
}

/** An initializer: its header encoded now, its payload inline or in the external file. */
function encodeInitializer(t: OnnxTensor | LazyTensor, sink: ExternalSink | null): Pieces {
  const header = tensorHeader(t);
  let payload: Piece | null = null;
  if (isLazy(t)) {
    const length = t.dims.reduce((a, b) => a * b, 1) * elementSize(t.dataType);
    payload = { length, produce: t.produce, name: t.name };
  } else if (t.rawData !== null) {
    payload = t.rawData;
  }
  const external = payload !== null && sink !== null && payload.length >= sink.threshold;
  if (external) {
    const offset = sinkPayload(sink, payload!);
    header.externalData = [
      { key: "location", value: sink.location },
      { key: "offset", value: String(offset) },
      { key: "length", value: String(payload!.length) },
    ].map((e) => create(StringStringEntryProtoSchema, e));
    header.dataLocation = TensorProto_DataLocation.EXTERNAL;
  }
  const out = new Pieces();
  out.push(toBinary(TensorProtoSchema, header));
  if (payload !== null && !external) {
    out.header(TENSOR_RAW_DATA, payload.length);
    out.push(payload);
  }
  return out;
}

function valueInfoMessage(v: OnnxValueInfo): ValueInfoProto {
  const dim = (d: number | string | null) =>
    typeof d === "number"
      ? { value: { case: "dimValue" as const, value: BigInt(d) } }
      : typeof d === "string"
      ? { value: { case: "dimParam" as const, value: d } }
      : {};
  return create(ValueInfoProtoSchema, {
    name: v.name,
    type: {
      value: {
        case: "tensorType",
        value: {
          elemType: v.elemType,
          ...(v.shape === null ? {} : { shape: { dim: v.shape.map(dim) } }),
        },
      },
    },
  });
}

/** How each attribute kind fills its one value field of the message. */
const ATTRIBUTE_VALUE: Record<number, (m: AttributeProto, a: OnnxAttribute) => void> = {
  [AttributeType.FLOAT]: (m, a) => m.f = a.f,
  [AttributeType.INT]: (m, a) => m.i = BigInt(a.i),
  [AttributeType.STRING]: (m, a) => m.s = a.s ?? new Uint8Array(0),
  [AttributeType.TENSOR]: (m, a) => m.t = a.t ? tensorMessage(a.t) : undefined,
  [AttributeType.GRAPH]: (m, a) => m.g = a.g ? graphMessage(a.g, true) : undefined,
  [AttributeType.FLOATS]: (m, a) => m.floats = a.floats,
  [AttributeType.INTS]: (m, a) => m.ints = a.ints.map(BigInt),
  [AttributeType.STRINGS]: (m, a) => m.strings = a.strings,
  [AttributeType.TENSORS]: (m, a) => m.tensors = a.tensors.map(tensorMessage),
  [AttributeType.GRAPHS]: (m, a) => m.graphs = a.graphs.map((g) => graphMessage(g, true)),
};

function attributeMessage(a: OnnxAttribute): AttributeProto {
  const m = create(AttributeProtoSchema, { name: a.name, type: a.type });
  ATTRIBUTE_VALUE[a.type]?.(m, a);
  return m;
}

function nodeMessage(n: OnnxNode): NodeProto {
  const m = create(NodeProtoSchema, {
    input: n.inputs,
    output: n.outputs,
    opType: n.opType,
    attribute: n.attributes.map(attributeMessage),
  });
  if (n.name) m.name = n.name;
  if (n.domain) m.domain = n.domain;
  return m;
}

/**
 * A `GraphProto`; the main graph leaves its initializers out (`withInitializers` false) because
 * {@linkcode encodeModelPieces} streams them.
 */
function graphMessage(g: OnnxGraphInit, withInitializers: boolean): GraphProto {
  const initializers = withInitializers ? g.initializers : [];
  if (initializers.some(isLazy)) throw new Error(`Graph "${g.name}": a subgraph cannot be lazy`);
  return create(GraphProtoSchema, {
    node: g.nodes.map(nodeMessage),
    name: g.name,
    initializer: (initializers as OnnxTensor[]).map(tensorMessage),
    input: g.inputs.map(valueInfoMessage),
    output: g.outputs.map(valueInfoMessage),
    valueInfo: g.valueInfo.map(valueInfoMessage),
  });
}

function encodeModelPieces(m: OnnxModelInit, sink: ExternalSink | null): Pieces {
  const model = create(ModelProtoSchema, {
    irVersion: BigInt(m.irVersion),
    opsetImport: m.opsetImport.map((o) => ({ domain: o.domain, version: BigInt(o.version) })),
    metadataProps: Object.entries(m.metadata).map(([key, value]) => ({ key, value })),
  });
  if (m.producerName) model.producerName = m.producerName;
  if (m.producerVersion) model.producerVersion = m.producerVersion;
  if (m.domain) model.domain = m.domain;
  if (m.modelVersion) model.modelVersion = BigInt(m.modelVersion);
  const graph = new Pieces();
  graph.push(toBinary(GraphProtoSchema, graphMessage(m.graph, false)));
  for (const t of m.graph.initializers) graph.field(GRAPH_INITIALIZER, encodeInitializer(t, sink));
  const out = new Pieces();
  out.push(toBinary(ModelProtoSchema, model));
  out.field(MODEL_GRAPH, graph);
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

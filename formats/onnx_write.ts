/**
 * ONNX `ModelProto` encoding that streams: {@linkcode writeOnnxModel} computes every length up
 * front and writes tensor payloads one at a time, optionally into an external-data file, so a
 * BERT-Large graph never needs more memory than its largest tensor.
 *
 * @module
 */
// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { BinaryWriter, WireType } from "npm:@bufbuild/protobuf@2.17.0/wire";
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

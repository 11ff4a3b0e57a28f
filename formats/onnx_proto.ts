/**
 * ONNX `ModelProto` decoding on the protobuf wire format, with a small hand-written schema walk
 * over the fields BERT-family graphs use (see `onnx.proto` in the ONNX repository for the field
 * numbers; the types are `onnx_types.ts`).
 *
 * Decoding keeps tensor `raw_data` as views into the file buffer: nothing copies the whole
 * file. External data is read from files next to the model, never outside its folder.
 *
 * @module
 */
// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { BinaryReader, WireType } from "npm:@bufbuild/protobuf@2.17.0/wire";
import {
  AttributeType,
  DataType,
  dataTypeName,
  elementSize,
  type OnnxAttribute,
  type OnnxGraph,
  type OnnxModel,
  type OnnxNode,
  type OnnxOpset,
  type OnnxTensor,
  type OnnxValueInfo,
} from "./onnx_types.ts";
import { emptyAttribute, rawTensor } from "./onnx_tensors.ts";

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
  const a: OnnxAttribute = emptyAttribute("");
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
  const t: OnnxTensor = rawTensor("", 0, [], null);
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

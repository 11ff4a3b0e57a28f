/**
 * The ONNX `ModelProto` subset BERT-family graphs use, as plain objects: data types, tensors,
 * attributes, nodes, graphs, models. The wire format is the generated schema `onnx_pb.ts` (from
 * the official `onnx.proto`; tests/onnx_schema_test.ts checks the type numbers here against it).
 * Decoding is `onnx_proto.ts`, tensor values and builders `onnx_tensors.ts`, encoding
 * `onnx_write.ts`.
 *
 * @module
 */

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

/**
 * Values of ONNX tensors (element counts, fp32 and number views of every stored form, fp16 and
 * bf16 widened) and builders of tensors and attributes for the test-model writer and the tests.
 *
 * @module
 */
import { bfloat16ToFloat32, float16ToFloat32 } from "../encoder/weights.ts";
import {
  AttributeType,
  DataType,
  dataTypeName,
  elementSize,
  type OnnxAttribute,
  type OnnxTensor,
} from "./onnx_types.ts";

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

/** A fresh attribute of the given type with every other field empty. */
export function makeAttribute(
  name: string,
  value: number | number[] | string | OnnxTensor,
  kind?: "float" | "int" | "floats" | "ints",
): OnnxAttribute {
  const a = emptyAttribute(name);
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
  return rawTensor(name, dataType, dims, raw);
}

/** A tensor of `dataType` and `dims` over `bytes` (little-endian `raw_data`, not copied). */
export function rawTensor(
  name: string,
  dataType: number,
  dims: number[],
  bytes: Uint8Array | null,
): OnnxTensor {
  return {
    name,
    dataType,
    dims,
    rawData: bytes,
    floatData: null,
    int32Data: null,
    int64Data: null,
    doubleData: null,
    uint64Data: null,
    stringData: null,
    externalData: null,
  };
}

/** An attribute named `name` with every field empty (type 0: the decoder or a builder sets it). */
export function emptyAttribute(name: string): OnnxAttribute {
  return {
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
}

/**
 * Reader for the safetensors format: an 8-byte little-endian header length, a JSON header
 * mapping tensor names to `{dtype, shape, data_offsets}`, then the tensor bytes.
 *
 * The header is validated completely (lengths, offsets inside the data area, byte sizes that
 * match dtype and shape, no overlaps) before any tensor is used; tensor data are views into
 * the file buffer.
 *
 * @module
 */

import { bfloat16ToFloat32, float16ToFloat32 } from "../encoder/weights.ts";

/** Bytes per element of each safetensors dtype. */
const DTYPE_SIZE: Record<string, number> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  U64: 8,
  I32: 4,
  U32: 4,
  I16: 2,
  U16: 2,
  I8: 1,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

/** One tensor of a safetensors file. */
export interface SafeTensor {
  /** Tensor name. */
  name: string;
  /** dtype string, e.g. `F32`. */
  dtype: string;
  /** Shape. */
  shape: number[];
  /** The tensor's bytes: a view into the file buffer. */
  data: Uint8Array;
}

/** A parsed safetensors file. */
export interface Safetensors {
  /** Where it came from (for error messages). */
  label: string;
  /** `__metadata__` string map. */
  metadata: Record<string, string>;
  /** Tensors by name. */
  tensors: Map<string, SafeTensor>;
}

/** The largest header accepted (the format's reference implementation uses 100 MB). */
const MAX_HEADER = 100_000_000;

/**
 * Parses a safetensors buffer.
 *
 * @param bytes The whole file.
 * @param label How the file is named in error messages.
 * @throws Error naming `label` on a truncated file, a malformed header or an unknown dtype.
 */
export function parseSafetensors(bytes: Uint8Array, label = "<buffer>"): Safetensors {
  const fail = (what: string): never => {
    throw new Error(`Invalid safetensors file "${label}": ${what}`);
  };
  if (bytes.byteLength < 8) fail(`only ${bytes.byteLength} bytes, the file is truncated`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > MAX_HEADER) fail(`header length ${headerLen} is implausible (corrupt file?)`);
  if (8 + headerLen > bytes.byteLength) {
    fail(
      `header of ${headerLen} bytes runs past the end of the file (${bytes.byteLength} bytes): the file is truncated`,
    );
  }
  let header: Record<string, unknown>;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(
      bytes.subarray(8, 8 + headerLen),
    ));
  } catch (err) {
    return fail(`header is not valid JSON (${(err as Error).message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail("header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const dataLen = bytes.byteLength - dataStart;
  const tensors = new Map<string, SafeTensor>();
  const ranges: [number, number, string][] = [];
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      metadata = (entry ?? {}) as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (typeof e !== "object" || e === null) fail(`entry "${name}" is not an object`);
    if (typeof e.dtype !== "string" || !(e.dtype in DTYPE_SIZE)) {
      fail(`tensor "${name}" has unknown dtype ${JSON.stringify(e.dtype)}`);
    }
    const dtype = e.dtype as string;
    const shape = e.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      fail(`tensor "${name}" has invalid shape ${JSON.stringify(shape)}`);
    }
    const offsets = e.data_offsets;
    if (
      !Array.isArray(offsets) || offsets.length !== 2 ||
      !offsets.every((o) => Number.isSafeInteger(o) && o >= 0) || offsets[1] < offsets[0]
    ) {
      fail(`tensor "${name}" has invalid data_offsets ${JSON.stringify(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    const expected = (shape as number[]).reduce((a, b) => a * b, 1) * DTYPE_SIZE[dtype];
    if (end - begin !== expected) {
      fail(
        `tensor "${name}" has ${end - begin} bytes, expected ${expected} for ${dtype}[${
          (shape as number[]).join(", ")
        }]`,
      );
    }
    if (end > dataLen) {
      fail(
        `tensor "${name}" ends at byte ${end} of a ${dataLen}-byte data area: the file is truncated`,
      );
    }
    ranges.push([begin, end, name]);
    tensors.set(name, {
      name,
      dtype,
      shape: shape as number[],
      data: bytes.subarray(dataStart + begin, dataStart + end),
    });
  }
  ranges.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  for (let i = 1; i < ranges.length; i++) {
    if (ranges[i][0] < ranges[i - 1][1]) {
      fail(`tensors "${ranges[i - 1][2]}" and "${ranges[i][2]}" overlap`);
    }
  }
  return { label, metadata, tensors };
}

/** Reads and parses a safetensors file. */
export async function readSafetensors(path: string): Promise<Safetensors> {
  let bytes: Uint8Array;
  try {
    bytes = await Deno.readFile(path);
  } catch (err) {
    throw new Error(`Cannot read safetensors file "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  return parseSafetensors(bytes, path);
}

/**
 * A tensor's values as a new fp32 array (F32 copied, F16/BF16/F64 converted).
 *
 * @throws Error for integer and fp8 dtypes.
 */
export function safeTensorToFloat32(t: SafeTensor): Float32Array {
  const copy = new Uint8Array(t.data.byteLength);
  copy.set(t.data);
  switch (t.dtype) {
    case "F32":
      return new Float32Array(copy.buffer);
    case "F16":
      return float16ToFloat32(new Uint16Array(copy.buffer));
    case "BF16":
      return bfloat16ToFloat32(new Uint16Array(copy.buffer));
    case "F64":
      return Float32Array.from(new Float64Array(copy.buffer));
    default:
      throw new Error(
        `Tensor "${t.name}" has dtype ${t.dtype}, expected a float dtype (F32, F16, BF16, F64)`,
      );
  }
}

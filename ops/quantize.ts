/**
 * Int8 quantization shared by the int8 linear ops: symmetric per-channel weights, dynamic
 * asymmetric activations (per token or per tensor), and the activation layouts the kernels
 * read (`kernels/quantize.zig`).
 *
 * Saturation rule: the AVX2 kernels multiply with `vpmaddubsw`, which adds two u8 x s8
 * products in saturating int16. There activations are therefore quantized to 7 bits
 * ([0, 127]): a pair is then at most 2 * 127 * 128 = 32512 and never saturates. The AVX-512
 * VNNI kernels (`vpdpbusd`: each product goes straight into s32) take full 8-bit activations
 * ([0, 255]). {@linkcode int8ActivationQmax} tells which the loaded library takes; every variant
 * returns the exact s32 sums of the codes it is given. Weights keep 8 bits.
 *
 * ```ts
 * import { quantizeActivations } from "./ops/quantize.ts";
 * const q = quantizeActivations(new Float32Array([0.5, -1, 2, 0]), 2, 2);
 * console.log(q.data, q.scale, q.zeroPoint);
 * ```
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { checkStatus } from "./status.ts";

export { checkStatus };
import { checkLinearWeight, describeArray, type LinearWeight } from "./linear.ts";

let libraryQmax: number | undefined;

/**
 * Largest activation code the loaded kernel library's int8 kernels take: 255 for the AVX-512
 * VNNI variant, 127 for the others (see the module note). The default `qmax` of the per-token
 * and per-tensor modes.
 */
export function int8ActivationQmax(): number {
  libraryQmax ??= kernels().symbols.sb_int8_act_max();
  return libraryQmax;
}

/**
 * How activations are quantized: to the kernels' codes ({@linkcode int8ActivationQmax}) with one
 * range per token (row) or one for the whole tensor, or `"ort-u8"`: ONNX Runtime's DynamicQuantizeLinear (8-bit, per tensor,
 * `q = rne(x / scale) + zero`), for running an ORT `quantize_dynamic` model with ORT's exact
 * numerics (dense int8 only; on AVX2 its pair sums saturate as ORT's AVX2 kernel does, see
 * `kernels/gemm_i8.zig`).
 */
export type ActivationQuantization = "per-token" | "per-tensor" | "ort-u8";

/** Whether `mode` is one of the {@linkcode ActivationQuantization} modes. */
export function isActivationQuantization(mode: string): mode is ActivationQuantization {
  return Object.hasOwn(MODE_CODE, mode);
}

const MODE_CODE: Record<ActivationQuantization, number> = {
  "per-tensor": 0,
  "per-token": 1,
  "ort-u8": 2,
};

/** Tokens per chunk of the packed activation layout of the sparse kernels. */
export const CHUNK_TOKENS = 16;
/** Bytes per (chunk, input channel) of the packed u8 layout. */
export const PACKED_ROW_BYTES = 32;

/** An int8 linear weight: s8 `[out, in]` (torch layout) with one scale per output channel. */
export interface QuantizedLinearWeight {
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** `[out * in]` row-major s8 values. */
  weight: Int8Array;
  /** `[out]` dequantization scales: w = weight * scale. */
  scale: Float32Array;
  /** `[out]` fp32 bias, or null/absent. */
  bias?: Float32Array | null;
}

/** Quantized activations in one of the kernel layouts. */
export interface QuantizedActivations {
  /**
   * `"rows"`: u8 `[m][stride]` token-major (dense int8 GEMM); `"packed"`: the chunked,
   * token-contiguous layout of the sparse int8 kernel.
   */
  layout: "rows" | "packed";
  /** Tokens. */
  m: number;
  /** Input features. */
  k: number;
  /** Row stride in bytes (`"rows"` only; `k` rounded up to 4, zero padded). */
  stride: number;
  /** The quantized values, in [0, `qmax`]. */
  data: Uint8Array;
  /** `[m]` scale of each token (per-tensor mode repeats one value). */
  scale: Float32Array;
  /** `[m]` zero point of each token. */
  zeroPoint: Int32Array;
  /** Largest value (at most {@linkcode int8ActivationQmax} for the int8 kernels). */
  qmax: number;
}

/** Options of {@linkcode quantizeActivations}. */
export interface QuantizeOptions {
  /** Per-token (default) or per-tensor ranges. */
  mode?: ActivationQuantization;
  /** Output layout; default `"rows"`. `"packed"` takes at most {@linkcode int8ActivationQmax}. */
  layout?: "rows" | "packed";
  /** 127 or 255; default {@linkcode int8ActivationQmax} (255 for `"ort-u8"`). */
  qmax?: number;
  /** Reuse these buffers when they are large enough (no allocation on the hot path). */
  into?: QuantizedActivations;
}

/** Row stride (bytes) of the `"rows"` layout for `k` input features. */
export function rowStride(k: number): number {
  return Math.ceil(k / 4) * 4;
}

/** Bytes of the `"packed"` layout for `m` tokens and `k` input features. */
export function packedBytes(m: number, k: number): number {
  return Math.ceil(m / CHUNK_TOKENS) * k * PACKED_ROW_BYTES;
}

function checkShape(x: Float32Array, m: number, k: number): void {
  if (!Number.isInteger(m) || m < 1 || !Number.isInteger(k) || k < 1) {
    throw new RangeError(`Shape must be positive integers, got [${m}, ${k}]`);
  }
  if (!(x instanceof Float32Array) || x.length < m * k) {
    throw new RangeError(
      `Input must be a Float32Array of at least ${m} x ${k} = ${m * k} values, got ${
        describeArray(x)
      }`,
    );
  }
}

/**
 * Quantizes fp32 activations `x` `[m, k]` (row-major) with dynamic ranges:
 * `scale = (max - min) / qmax`, `zero = rne(-min / scale)`, `q = clamp(rne(x / scale) + zero)`,
 * with the range widened to include 0. Throws on NaN or infinity.
 */
export function quantizeActivations(
  x: Float32Array,
  m: number,
  k: number,
  options: QuantizeOptions = {},
): QuantizedActivations {
  checkShape(x, m, k);
  const mode = options.mode ?? "per-token";
  const layout = options.layout ?? "rows";
  const qmax = options.qmax ?? (mode === "ort-u8" ? 255 : int8ActivationQmax());
  if (!isActivationQuantization(mode)) {
    throw new RangeError(`Unknown quantization mode "${mode}"`);
  }
  if (layout !== "rows" && layout !== "packed") {
    throw new RangeError(`Unknown activation layout "${layout}"`);
  }
  if (qmax !== 127 && qmax !== 255) throw new RangeError(`qmax must be 127 or 255, got ${qmax}`);
  if (mode === "ort-u8" && (qmax !== 255 || layout !== "rows")) {
    throw new RangeError(`"ort-u8" quantization writes 8-bit rows (qmax 255, layout "rows")`);
  }
  if (layout === "packed" && qmax > int8ActivationQmax()) {
    throw new RangeError(
      `The packed layout takes activations up to ${int8ActivationQmax()} here, got qmax ${qmax}`,
    );
  }
  const stride = layout === "rows" ? rowStride(k) : 0;
  const bytes = layout === "rows" ? m * stride : packedBytes(m, k);
  const q = reuseActivations(options.into, layout, m, k, stride, bytes, qmax);
  const lib = kernels().symbols;
  const status = layout === "rows"
    ? lib.sb_quantize_rows(
      x,
      BigInt(m),
      BigInt(k),
      MODE_CODE[mode],
      qmax,
      q.data,
      BigInt(stride),
      q.scale,
      q.zeroPoint,
    )
    : lib.sb_quantize_packed(
      x,
      BigInt(m),
      BigInt(k),
      MODE_CODE[mode],
      qmax,
      q.data,
      q.scale,
      q.zeroPoint,
    );
  checkStatus(status, "Activation quantization");
  return q;
}

/** A QuantizedActivations for the given shape, reusing `into`'s buffers when large enough. */
export function reuseActivations(
  into: QuantizedActivations | undefined,
  layout: "rows" | "packed",
  m: number,
  k: number,
  stride: number,
  bytes: number,
  qmax: number,
): QuantizedActivations {
  const data = into && into.data.buffer.byteLength >= bytes
    ? new Uint8Array(into.data.buffer, 0, bytes)
    : new Uint8Array(bytes);
  const scale = into && into.scale.buffer.byteLength >= 4 * m
    ? new Float32Array(into.scale.buffer, 0, m)
    : new Float32Array(m);
  const zeroPoint = into && into.zeroPoint.buffer.byteLength >= 4 * m
    ? new Int32Array(into.zeroPoint.buffer, 0, m)
    : new Int32Array(m);
  return { layout, m, k, stride, data, scale, zeroPoint, qmax };
}

/**
 * Re-lays `"rows"` activations (values <= 127) into the `"packed"` layout of the sparse int8
 * kernel (for a producer that already emits u8, e.g. a requantized epilogue).
 */
export function packActivations(
  q: QuantizedActivations,
  into?: QuantizedActivations,
): QuantizedActivations {
  if (q.layout === "packed") return q;
  const { m, k, stride } = q;
  const out = reuseActivations(into, "packed", m, k, 0, packedBytes(m, k), q.qmax);
  out.scale.set(q.scale.subarray(0, m));
  out.zeroPoint.set(q.zeroPoint.subarray(0, m));
  checkStatus(
    kernels().symbols.sb_pack_rows_u8(q.data, BigInt(m), BigInt(k), BigInt(stride), out.data),
    "Packing u8 activations",
  );
  return out;
}

/**
 * Symmetric per-output-channel int8 quantization of an fp32 weight:
 * `scale[c] = max|w[c, :]| / 127`, `q = clamp(rne(w / scale), -127, 127)`. Zero weights stay
 * exactly zero, so a pruned pattern survives quantization. Throws on NaN or infinity.
 */
export function quantizeWeights(weight: LinearWeight): QuantizedLinearWeight {
  checkLinearWeight(weight);
  const { out, in: k } = weight;
  const q = new Int8Array(out * k);
  const scale = new Float32Array(out);
  checkStatus(
    kernels().symbols.sb_quantize_weights_i8(weight.weight, BigInt(out), BigInt(k), q, scale),
    "Weight quantization",
  );
  return { out, in: k, weight: q, scale, bias: weight.bias ?? null };
}

/** Checks a quantized weight's sizes and arrays and returns it. */
export function checkQuantizedWeight(weight: QuantizedLinearWeight): QuantizedLinearWeight {
  const { out, in: k } = weight;
  if (!Number.isInteger(out) || out < 1 || !Number.isInteger(k) || k < 1) {
    throw new RangeError(`The int8 weight needs positive integer sizes, got [${out}, ${k}]`);
  }
  if (!(weight.weight instanceof Int8Array) || weight.weight.length !== out * k) {
    throw new RangeError(
      `The int8 weight [${out}, ${k}] needs ${out * k} int8 values, got ${
        describeArray(weight.weight)
      }`,
    );
  }
  if (!(weight.scale instanceof Float32Array) || weight.scale.length !== out) {
    throw new RangeError(
      `The int8 weight needs ${out} float32 scales, got ${describeArray(weight.scale)}`,
    );
  }
  for (let c = 0; c < out; c++) {
    const s = weight.scale[c];
    if (!(s > 0) || !Number.isFinite(s)) {
      throw new RangeError(`Weight scale ${c} must be positive and finite, got ${s}`);
    }
  }
  if (
    weight.bias != null && (!(weight.bias instanceof Float32Array) || weight.bias.length !== out)
  ) {
    throw new RangeError(
      `The int8 weight bias needs ${out} float32 values, got ${describeArray(weight.bias)}`,
    );
  }
  return weight;
}

/** Whether a weight is already quantized (`Int8Array` values with scales). */
export function isQuantizedWeight(
  weight: LinearWeight | QuantizedLinearWeight,
): weight is QuantizedLinearWeight {
  return weight.weight instanceof Int8Array;
}

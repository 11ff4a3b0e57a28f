/**
 * The one place that maps a {@linkcode KernelKind} to its op class: {@linkcode buildLinear} builds
 * the op of a kind from a weight (with the int8 form the model has, {@linkcode int8Form}), and
 * {@linkcode linearFromPacked} builds it from bytes that op packed (a compiled model's). Which
 * kind a layer gets is decided by `KernelChooser` (`encoder/kernel_choice.ts`) alone.
 *
 * @module
 */
import { type Activation, KERNEL_KINDS, type KernelKind, type LinearOp } from "../ops/linear.ts";
import { LinearBf16 } from "../ops/linear_bf16.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import { LinearI8 } from "../ops/linear_i8.ts";
import type { PackedSource } from "../ops/packed.ts";
import type { ActivationQuantization, QuantizedLinearWeight } from "../ops/quantize.ts";
import { SparseLinearF32 } from "../ops/sparse_linear_f32.ts";
import { SparseLinearI8 } from "../ops/sparse_linear_i8.ts";
import type { DenseWeight } from "./weights.ts";

/** The int8 form of a weight as the int8 ops take it, and how to quantize its activations. */
export interface Int8Form {
  /** Symmetric per-channel int8 weight with bias, or the fp32 weight (the op quantizes it). */
  weight: QuantizedLinearWeight | DenseWeight;
  /** Activation quantization for the op. */
  activationQuantization: ActivationQuantization;
}

/**
 * How int8 layers quantize their activations: `"per-token"` (default: the kernels' codes, u7 or
 * u8 with AVX-512 VNNI, one range per token, so a text's result does not depend on what it is
 * batched with) or `"ort"`: a layer
 * made by ONNX Runtime's `quantize_dynamic` (u8 per-tensor DynamicQuantizeLinear) runs ORT's own
 * numerics on the dense int8 kernel (`"ort-u8"`), so its output matches ORT's on the same file,
 * batch dependence included. Other layers keep the default.
 */
export type Int8Activations = typeof INT8_ACTIVATIONS[number];

/** Every {@linkcode Int8Activations} value, default first. */
export const INT8_ACTIVATIONS = ["per-token", "ort"] as const;

/**
 * The int8 form of `weight` for an op of `kind`: its own symmetric int8 values when it has them
 * (per-tensor scales broadcast per channel), else the fp32 weight (quantized per channel by the
 * op). Asymmetric int8 weights are re-quantized from their dequantized values (the kernels take
 * symmetric). Activations run per token unless the model was made for 7-bit per-tensor
 * activations, or `activations` is `"ort"` for an ORT dynamic-u8 layer on the dense kernel.
 */
export function int8Form(
  weight: DenseWeight,
  kind: "dense-i8" | "sparse-i8" = "dense-i8",
  activations: Int8Activations = "per-token",
): Int8Form {
  const q = weight.quantized;
  if (q === undefined) return { weight, activationQuantization: "per-token" };
  const ortU8 = activations === "ort" && kind === "dense-i8" && q.activation === "dynamic-u8" &&
    (q.granularity ?? "per-tensor") === "per-tensor" && (q.activationQmax ?? 255) === 255;
  const activationQuantization = ortU8
    ? "ort-u8"
    : q.granularity === "per-tensor" && q.activationQmax === 127
    ? "per-tensor"
    : "per-token";
  if (q.zeroPoint !== null) return { weight, activationQuantization };
  const scale = q.scale.length === weight.out
    ? q.scale
    : new Float32Array(weight.out).fill(q.scale[0]);
  return {
    weight: { out: weight.out, in: weight.in, weight: q.weight, scale, bias: weight.bias },
    activationQuantization,
  };
}

/** The op class of each float kind (built from the fp32 weight). */
const FLOAT_OPS = {
  "dense-f32": LinearF32,
  "dense-bf16": LinearBf16,
  "sparse-f32": SparseLinearF32,
} as const;
/** The op class of each int8 kind (built from the weight's int8 form). */
const INT8_OPS = { "dense-i8": LinearI8, "sparse-i8": SparseLinearI8 } as const;

function unknownKind(kind: string): RangeError {
  return new RangeError(`Unknown kernel kind "${kind}": expected one of ${KERNEL_KINDS}`);
}

/** Builds the op of `kind` for `weight` with the `ops/*` classes (int8 forms as the model has). */
export function buildLinear(
  kind: KernelKind,
  weight: DenseWeight,
  spec: { activation: Activation },
  activations: Int8Activations = "per-token",
): LinearOp {
  const activation = spec.activation;
  if (Object.hasOwn(FLOAT_OPS, kind)) {
    return new FLOAT_OPS[kind as keyof typeof FLOAT_OPS](weight, { activation });
  }
  if (!Object.hasOwn(INT8_OPS, kind)) throw unknownKind(kind);
  const int8Kind = kind as keyof typeof INT8_OPS;
  const f = int8Form(weight, int8Kind, activations);
  return new INT8_OPS[int8Kind](f.weight, {
    activation,
    activationQuantization: f.activationQuantization,
  });
}

/** What a packed op needs besides its bytes: its fused activation and int8 activations. */
export interface PackedLinearOptions {
  /** Activation fused into the epilogue. */
  activation: Activation;
  /** Activation quantization of the int8 kinds; default `"per-token"`. */
  activationQuantization?: ActivationQuantization;
}

/**
 * Builds the op of `kind` over `source`'s packed bytes (as the op of that kind packed them;
 * retained until the op is disposed).
 *
 * @throws RangeError on an unknown kind, or bytes that do not fit the shape.
 */
export function linearFromPacked(
  kind: KernelKind,
  source: PackedSource,
  options: PackedLinearOptions,
): LinearOp {
  const { activation, activationQuantization } = options;
  if (Object.hasOwn(FLOAT_OPS, kind)) {
    return new FLOAT_OPS[kind as keyof typeof FLOAT_OPS](source, { activation });
  }
  if (!Object.hasOwn(INT8_OPS, kind)) throw unknownKind(kind);
  return new INT8_OPS[kind as keyof typeof INT8_OPS](source, {
    activation,
    activationQuantization,
  });
}

/**
 * Linear ops over weights that are already packed: the bytes the `ops/*` constructors write
 * into native memory, produced here by the same kernel pack calls ({@linkcode packLinear}) and
 * run here from any native region ({@linkcode PackedLinear}), e.g. a slice of a compiled model
 * file read into memory. Nothing is repacked at load.
 *
 * The packing mirrors `ops/linear_f32.ts`, `ops/linear_i8.ts`, `ops/sparse_linear_f32.ts` and
 * `ops/sparse_linear_i8.ts` call for call, so a {@linkcode PackedLinear} computes the same bits
 * as the op of the same kind built from the same weight (tested in `tests/compiled_test.ts`).
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { NativeBuffer, type NativeMemory } from "../ffi/memory.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  checkForward,
  type ForwardOptions,
  type LinearOp,
} from "../ops/linear.ts";
import {
  type ActivationQuantization,
  checkStatus,
  isActivationQuantization,
  quantizeActivations,
  type QuantizedActivations,
  type QuantizedLinearWeight,
  quantizeWeights,
} from "../ops/quantize.ts";
import { gemmI8, OUTPUT_CODE, runThrough, StagedOutput } from "../ops/linear_i8.ts";
import { spmmI8, spmmI8Staged } from "../ops/sparse_linear_i8.ts";
import type { DenseWeight } from "./weights.ts";

/** The four linear kernel families. */
export type KernelKind = "dense-f32" | "dense-i8" | "sparse-f32" | "sparse-i8";

/** Every {@linkcode KernelKind}. */
export const KERNEL_KINDS: readonly KernelKind[] = Object.freeze([
  "dense-f32",
  "dense-i8",
  "sparse-f32",
  "sparse-i8",
]);

/** The int8 form of a weight as the int8 ops take it, and how to quantize its activations. */
export interface Int8Form {
  /** Symmetric per-channel int8 weight with bias, or the fp32 weight (the op quantizes it). */
  weight: QuantizedLinearWeight | DenseWeight;
  /** Activation quantization for the op. */
  activationQuantization: ActivationQuantization;
}

/**
 * How int8 layers quantize their activations: `"per-token"` (default: 7-bit, one range per
 * token, so a text's result does not depend on what it is batched with) or `"ort"`: a layer
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

/** A packed weight: the native bytes a {@linkcode PackedLinear} runs from. */
export interface PackedWeight {
  /** Kernel family the bytes are packed for. */
  kind: KernelKind;
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** Activation quantization (int8 kinds only). */
  activationQuantization?: ActivationQuantization;
  /** The packed bytes (64-byte aligned native memory, owned by the caller). */
  buffer: NativeBuffer;
}

/**
 * Packs `weight` for `kind` with the kernels' pack calls, exactly as the op of that kind does.
 *
 * @throws RangeError when the weight is too large for the format.
 */
export function packLinear(
  kind: KernelKind,
  weight: DenseWeight,
  activations: Int8Activations = "per-token",
): PackedWeight {
  const lib = kernels().symbols;
  const n = BigInt(weight.out);
  const k = BigInt(weight.in);
  const tooLarge = (): RangeError =>
    new RangeError(`Weight [${weight.out}, ${weight.in}] is too large to pack as ${kind}`);
  if (kind === "dense-f32") {
    const floats = Number(lib.sb_linear_f32_packed_len(n, k));
    const buffer = new NativeBuffer(floats * 4);
    lib.sb_linear_f32_pack(weight.weight, weight.bias ?? null, n, k, buffer.pointer);
    return { kind, out: weight.out, in: weight.in, buffer };
  }
  if (kind === "sparse-f32") {
    const bytes = Number(lib.sb_spmm_f32_packed_len(weight.weight, n, k));
    if (bytes === 0) throw tooLarge();
    const buffer = new NativeBuffer(bytes);
    const status = lib.sb_spmm_f32_pack(
      weight.weight,
      weight.bias ?? null,
      n,
      k,
      buffer.pointer,
      BigInt(bytes),
    );
    checkStatus(status, "Packing the sparse fp32 weight");
    return { kind, out: weight.out, in: weight.in, buffer };
  }
  if (kind !== "dense-i8" && kind !== "sparse-i8") {
    throw new RangeError(`Unknown kernel kind "${kind}"`);
  }
  const form = int8Form(weight, kind, activations);
  const q = form.weight.weight instanceof Int8Array
    ? form.weight as QuantizedLinearWeight
    : quantizeWeights(form.weight as DenseWeight);
  const bytes = kind === "dense-i8"
    ? Number(lib.sb_gemm_i8_packed_len(n, k))
    : Number(lib.sb_spmm_i8_packed_len(q.weight, n, k));
  if (bytes === 0) throw tooLarge();
  const buffer = new NativeBuffer(bytes);
  const pack = kind === "dense-i8" ? lib.sb_gemm_i8_pack : lib.sb_spmm_i8_pack;
  const status = pack(q.weight, q.scale, q.bias ?? null, n, k, buffer.pointer, BigInt(bytes));
  checkStatus(status, `Packing the ${kind} weight`);
  return {
    kind,
    out: weight.out,
    in: weight.in,
    activationQuantization: form.activationQuantization,
    buffer,
  };
}

/**
 * A reference-counted native region shared by several {@linkcode PackedLinear} ops: a whole
 * {@linkcode NativeBuffer}, or a 64-byte aligned window of other native memory (the packed part
 * of a mapped compiled model).
 */
export class SharedRegion implements Disposable {
  #memory: NativeMemory;
  #offset: number;
  #bytes: number;
  #refs = 1;

  /**
   * Takes ownership of `memory` (released with the last reference); the region is `bytes`
   * bytes from `offset` (default: all of it). The creator holds the first reference.
   */
  constructor(memory: NativeMemory, offset = 0, bytes: number = memory.bytes - offset) {
    if (
      !Number.isInteger(offset) || offset < 0 || offset % 64 !== 0 || !Number.isInteger(bytes) ||
      bytes < 0 || offset + bytes > memory.bytes
    ) {
      throw new RangeError(
        `Shared region [${offset}, +${bytes}) is misaligned or outside its ${memory.bytes}-byte block`,
      );
    }
    this.#memory = memory;
    this.#offset = offset;
    this.#bytes = bytes;
  }

  /** The region's base pointer; throws once freed. */
  get pointer(): Deno.PointerObject {
    if (this.#refs <= 0) throw new Error("Packed weights used after they were freed");
    const base = this.#memory.pointer;
    return this.#offset === 0 ? base : Deno.UnsafePointer.offset(base, this.#offset)!;
  }

  /** Bytes in the region. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The whole region as bytes (for reading it in, or hashing it). */
  u8(): Uint8Array {
    return this.#memory.u8().subarray(this.#offset, this.#offset + this.#bytes);
  }

  /** Adds a reference. */
  retain(): void {
    if (this.#refs <= 0) throw new Error("Packed weights used after they were freed");
    this.#refs++;
  }

  /** Drops a reference; the memory is released with the last one. */
  [Symbol.dispose](): void {
    if (this.#refs <= 0) return;
    if (--this.#refs === 0) this.#memory[Symbol.dispose]();
  }
}

/** Where a {@linkcode PackedLinear}'s bytes are: a region and a 64-byte aligned slice of it. */
export interface PackedSlice {
  /** The owning region (retained by the op). */
  region: SharedRegion;
  /** Byte offset in the region (a multiple of 64). */
  offset: number;
  /** Bytes of the packed weight. */
  bytes: number;
}

/** Shape and kernel of a {@linkcode PackedLinear}. */
export interface PackedLinearOptions {
  /** Kernel family the bytes were packed for. */
  kind: KernelKind;
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** Activation fused into the epilogue; default `"none"`. */
  activation?: Activation;
  /** Activation quantization of the int8 kinds; default `"per-token"`. */
  activationQuantization?: ActivationQuantization;
}

/**
 * A linear op running one of the four kernels from already packed bytes. Same interface and
 * results as the `ops/*` op of the same kind.
 */
export class PackedLinear implements LinearOp {
  /** Kernel family. */
  readonly kind: KernelKind;
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  /** Activation quantization (int8 kinds). */
  readonly activationQuantization: ActivationQuantization;
  #slice: PackedSlice | null;
  #pointer: Deno.PointerObject;
  #f32 = new Float32Array(0);
  #q: QuantizedActivations | undefined;
  #staged: StagedOutput | undefined;

  /**
   * Runs from `slice` (retained until disposal).
   *
   * @throws RangeError on an unknown kind or activation, a bad shape or a misaligned slice.
   */
  constructor(slice: PackedSlice, options: PackedLinearOptions) {
    const { kind, out, in: inFeatures } = options;
    if (!KERNEL_KINDS.includes(kind)) throw new RangeError(`Unknown kernel kind "${kind}"`);
    if (!Number.isInteger(out) || out < 1 || !Number.isInteger(inFeatures) || inFeatures < 1) {
      throw new RangeError(`A packed linear needs positive sizes, got [${out}, ${inFeatures}]`);
    }
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    this.activationQuantization = options.activationQuantization ?? "per-token";
    if (!isActivationQuantization(this.activationQuantization)) {
      throw new RangeError(`Unknown activation quantization "${this.activationQuantization}"`);
    }
    if (this.activationQuantization === "ort-u8" && kind !== "dense-i8") {
      throw new RangeError(`"ort-u8" activations run on the dense int8 kernel only, not ${kind}`);
    }
    const { region, offset, bytes } = slice;
    if (
      !Number.isInteger(offset) || offset % 64 !== 0 || !Number.isInteger(bytes) || bytes < 1 ||
      offset + bytes > region.bytes
    ) {
      throw new RangeError(
        `Packed slice [${offset}, ${
          offset + bytes
        }) is misaligned or outside its ${region.bytes}-byte region`,
      );
    }
    if (kind === "dense-f32") {
      const need = 4 * Number(
        kernels().symbols.sb_linear_f32_packed_len(
          BigInt(out),
          BigInt(inFeatures),
        ),
      );
      if (need !== bytes) {
        throw new RangeError(
          `A dense-f32 [${out}, ${inFeatures}] weight packs to ${need} bytes, got ${bytes}`,
        );
      }
    } else if (kind === "dense-i8") {
      const need = Number(kernels().symbols.sb_gemm_i8_packed_len(BigInt(out), BigInt(inFeatures)));
      if (need !== bytes) {
        throw new RangeError(
          `A dense-i8 [${out}, ${inFeatures}] weight packs to ${need} bytes, got ${bytes}`,
        );
      }
    }
    this.kind = kind;
    this.outFeatures = out;
    this.inFeatures = inFeatures;
    region.retain();
    this.#slice = slice;
    this.#pointer = Deno.UnsafePointer.create(
      Deno.UnsafePointer.value(region.pointer) + BigInt(offset),
    )!;
  }

  /** Bytes of packed weights. */
  get packedBytes(): number {
    return this.#slice?.bytes ?? 0;
  }

  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const slice = this.#slice;
    if (slice === null) throw new Error(`The ${this.kind} linear was used after it was disposed`);
    const out = checkForward(this, x, m, options);
    const lib = kernels().symbols;
    const act = ACTIVATION_CODE[this.activation];
    const residual = options.residual ?? null;
    const bytes = BigInt(slice.bytes);
    const what = `${this.kind} linear [${m}, ${this.inFeatures}] -> ${this.outFeatures}`;
    switch (this.kind) {
      case "dense-f32":
        lib.sb_linear_f32(
          x,
          BigInt(m),
          BigInt(this.inFeatures),
          this.#pointer,
          BigInt(this.outFeatures),
          residual,
          out,
          act,
        );
        break;
      case "sparse-f32": {
        const floats = Number(lib.sb_pack_f32_len(BigInt(m), BigInt(this.inFeatures)));
        if (this.#f32.length < floats) this.#f32 = new Float32Array(floats);
        lib.sb_pack_f32(x, BigInt(m), BigInt(this.inFeatures), this.#f32);
        checkStatus(
          lib.sb_spmm_f32(this.#pointer, bytes, this.#f32, BigInt(m), residual, out, act),
          what,
        );
        break;
      }
      case "dense-i8":
        this.#int8(gemmI8, this.#quantize(x, m, "rows"), residual, out);
        break;
      case "sparse-i8":
        this.#int8(spmmI8, this.#quantize(x, m, "packed"), residual, out);
        break;
    }
    return out;
  }

  /**
   * Whether {@linkcode forwardThrough} hands this op's output to `next` already quantized: both
   * run the sparse int8 kernel and `next` quantizes per token.
   */
  stagesInto(next: LinearOp): boolean {
    return this.kind === "sparse-i8" && next instanceof PackedLinear &&
      next.kind === "sparse-i8" && next.activationQuantization === "per-token" &&
      next.inFeatures === this.outFeatures;
  }

  /**
   * Y = next(this(X)), as `Int8Linear.forwardThrough` (`ops/linear_i8.ts`): fused when
   * {@linkcode stagesInto} says so, else through an fp32 buffer. `options` apply to `next`.
   */
  forwardThrough(
    next: LinearOp,
    x: Float32Array,
    m: number,
    options: ForwardOptions = {},
  ): Float32Array {
    this.#staged ??= new StagedOutput(this.outFeatures);
    if (!this.stagesInto(next)) return runThrough(this, next, x, m, options, this.#staged, null);
    return runThrough(this, next, x, m, options, this.#staged, {
      stage: (into, staging) => {
        const { pointer, bytes } = this.#live();
        const q = this.#quantize(x, m, "packed");
        return spmmI8Staged(pointer, bytes, this.activation, { q, into, staging });
      },
      consume: (into, residual, out) => (next as PackedLinear).#int8(spmmI8, into, residual, out),
    });
  }

  /** The packed weights' address and length, or an error once disposed. */
  #live(): { pointer: Deno.PointerObject; bytes: number } {
    if (this.#slice === null) {
      throw new Error(`The ${this.kind} linear was used after it was disposed`);
    }
    return { pointer: this.#pointer, bytes: this.#slice.bytes };
  }

  /** `sb_gemm_i8` or `sb_spmm_i8` with an fp32 output on activations quantized for it. */
  #int8(
    kernel: typeof gemmI8 | typeof spmmI8,
    q: QuantizedActivations,
    residual: Float32Array | null,
    out: Float32Array,
  ): void {
    const what = `${this.kind} linear [${q.m}, ${this.inFeatures}] -> ${this.outFeatures}`;
    const { pointer, bytes } = this.#live();
    const call = {
      q,
      residual,
      y: out,
      output: OUTPUT_CODE.f32,
      outScale: 1,
      outZero: 0,
      outQmax: 127,
    };
    checkStatus(kernel(pointer, bytes, this.activation, call), what);
  }

  #quantize(x: Float32Array, m: number, layout: "rows" | "packed"): QuantizedActivations {
    this.#q = quantizeActivations(x, m, this.inFeatures, {
      mode: this.activationQuantization,
      layout,
      into: this.#q,
    });
    return this.#q;
  }

  /** Releases this op's reference to the packed region. Idempotent. */
  [Symbol.dispose](): void {
    this.#staged?.[Symbol.dispose]();
    this.#staged = undefined;
    if (this.#slice === null) return;
    const region = this.#slice.region;
    this.#slice = null;
    region[Symbol.dispose]();
  }
}

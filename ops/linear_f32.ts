/**
 * Dense fp32 linear layer over the `sb_linear_f32` kernel (`kernels/linear_f32.zig`), and the
 * base it shares with the bf16-weight layer (`ops/linear_bf16.ts`): both pack an fp32 weight
 * into native panels once and run fp32 activations through them.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { checkStatus } from "./status.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  checkForward,
  checkLinearWeight,
  checkPackedSource,
  type ForwardOptions,
  type KernelKind,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./linear.ts";
import { isPackedSource, PackedBytes, type PackedSource } from "./packed.ts";

/** How a dense float kernel packs its weight: bytes for a shape, and the packing call. */
export interface DenseFloatPacking {
  /** Bytes of the packed `[out, in]` weight with its bias. */
  bytes(out: number, k: number): number;
  /** Packs `weight` into `into` (native, `bytes(out, in)` bytes); returns the kernel status. */
  pack(weight: LinearWeight, into: Deno.PointerObject): number;
}

/** The arguments of one dense float kernel call, as the C ABI takes them. */
export interface DenseFloatCall {
  /** Input `[m, k]`. */
  x: Float32Array;
  /** Rows. */
  m: bigint;
  /** Input features. */
  k: bigint;
  /** The packed weights. */
  packed: Deno.PointerObject;
  /** Output features. */
  n: bigint;
  /** Added after the activation, or null. */
  residual: Float32Array | null;
  /** Output `[m, n]`. */
  out: Float32Array;
  /** Activation code. */
  activation: number;
}

/**
 * What {@linkcode LinearF32} and `LinearBf16` share: the packed weights (own or borrowed), the
 * activation, the checks and disposal. A subclass names its kind and runs its kernel.
 */
export abstract class DenseFloatLinear implements LinearOp {
  /** Kernel family. */
  abstract readonly kind: KernelKind;
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  #packed: PackedBytes;

  /** Packs `source` with `packing`, or borrows its packed bytes; `what` names it in errors. */
  protected constructor(
    source: LinearWeight | PackedSource,
    options: LinearOptions,
    packing: DenseFloatPacking & { what: string },
  ) {
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    this.inFeatures = source.in;
    this.outFeatures = source.out;
    if (isPackedSource(source)) {
      checkPackedSource(source, packing.what, packing.bytes(source.out, source.in));
      this.#packed = PackedBytes.borrow(source.packed, `${packing.what} linear`);
      return;
    }
    const weight = checkLinearWeight(source);
    this.#packed = PackedBytes.allocate(
      packing.bytes(weight.out, weight.in),
      `${packing.what} linear`,
    );
    checkStatus(
      packing.pack(weight, this.#packed.pointer),
      `Packing the ${packing.what} weight [${weight.out}, ${weight.in}]`,
    );
  }

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
  }

  /** The packed weights (a view). */
  packedData(): Uint8Array {
    return this.#packed.u8();
  }

  /** Runs the kernel on `call` (Y into `call.out`); returns its status. */
  protected abstract run(call: DenseFloatCall): number;

  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const out = checkForward(this, x, m, options);
    const status = this.run({
      x,
      m: BigInt(m),
      k: BigInt(this.inFeatures),
      packed: this.#packed.pointer,
      n: BigInt(this.outFeatures),
      residual: options.residual ?? null,
      out,
      activation: ACTIVATION_CODE[this.activation],
    });
    checkStatus(status, `${this.kind} linear [${m}, ${this.inFeatures}] -> ${this.outFeatures}`);
    return out;
  }

  /** Frees the packed weights (or drops the borrowed region's reference). */
  [Symbol.dispose](): void {
    this.#packed[Symbol.dispose]();
  }
}

const F32_PACKING: DenseFloatPacking & { what: string } = {
  what: "fp32",
  bytes: (out, k) => 4 * Number(kernels().symbols.sb_linear_f32_packed_len(BigInt(out), BigInt(k))),
  pack: (w, into) =>
    kernels().symbols.sb_linear_f32_pack(
      w.weight,
      w.bias ?? null,
      BigInt(w.out),
      BigInt(w.in),
      into,
    ),
};

/** Y = act(X W^T + b) + residual with W prepacked into native fp32 panels. */
export class LinearF32 extends DenseFloatLinear {
  /** Kernel family. */
  readonly kind = "dense-f32";

  /**
   * Packs `weight` (`[out, in]`, torch layout) once (the source arrays are not kept), or runs
   * from the bytes of `source.packed` as this op packed them (retained until disposal).
   */
  constructor(source: LinearWeight | PackedSource, options: LinearOptions = {}) {
    super(source, options, F32_PACKING);
  }

  /** `sb_linear_f32`. */
  protected run(c: DenseFloatCall): number {
    const lib = kernels().symbols;
    return lib.sb_linear_f32(c.x, c.m, c.k, c.packed, c.n, c.residual, c.out, c.activation);
  }
}

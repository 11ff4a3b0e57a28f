/**
 * Dense fp32 linear layer over the `sb_linear_f32` kernel (`kernels/linear_f32.zig`).
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
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./linear.ts";
import { isPackedSource, PackedBytes, type PackedSource } from "./packed.ts";

/** Y = act(X W^T + b) + residual with W prepacked into native panels. */
export class LinearF32 implements LinearOp {
  /** Kernel family. */
  readonly kind = "dense-f32";
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  #packed: PackedBytes;

  /**
   * Packs `weight` (`[out, in]`, torch layout) once (the source arrays are not kept), or runs
   * from the bytes of `source.packed` as this op packed them (retained until disposal).
   */
  constructor(source: LinearWeight | PackedSource, options: LinearOptions = {}) {
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    const lib = kernels().symbols;
    const bytes = (out: number, k: number) =>
      4 * Number(lib.sb_linear_f32_packed_len(BigInt(out), BigInt(k)));
    this.inFeatures = source.in;
    this.outFeatures = source.out;
    if (isPackedSource(source)) {
      checkPackedSource(source, this.kind, bytes(source.out, source.in));
      this.#packed = PackedBytes.borrow(source.packed, `${this.kind} linear`);
      return;
    }
    const weight = checkLinearWeight(source);
    this.#packed = PackedBytes.allocate(bytes(weight.out, weight.in), `${this.kind} linear`);
    checkStatus(
      lib.sb_linear_f32_pack(
        weight.weight,
        weight.bias ?? null,
        BigInt(weight.out),
        BigInt(weight.in),
        this.#packed.pointer,
      ),
      `Packing the fp32 weight [${weight.out}, ${weight.in}]`,
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

  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const out = checkForward(this, x, m, options);
    const status = kernels().symbols.sb_linear_f32(
      x,
      BigInt(m),
      BigInt(this.inFeatures),
      this.#packed.pointer,
      BigInt(this.outFeatures),
      options.residual ?? null,
      out,
      ACTIVATION_CODE[this.activation],
    );
    checkStatus(status, `fp32 linear [${m}, ${this.inFeatures}] -> ${this.outFeatures}`);
    return out;
  }

  /** Frees the packed weights (or drops the borrowed region's reference). */
  [Symbol.dispose](): void {
    this.#packed[Symbol.dispose]();
  }
}

/**
 * Dense fp32 linear layer over the `sb_linear_f32` kernel (`kernels/linear_f32.zig`).
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { NativeBuffer } from "../ffi/memory.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  checkForward,
  checkLinearWeight,
  type ForwardOptions,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./linear.ts";

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
  #packed: NativeBuffer;

  /** Packs `weight` (`[out, in]`, torch layout) once; the source arrays are not kept. */
  constructor(weight: LinearWeight, options: LinearOptions = {}) {
    checkLinearWeight(weight);
    this.inFeatures = weight.in;
    this.outFeatures = weight.out;
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    const lib = kernels().symbols;
    const floats = Number(lib.sb_linear_f32_packed_len(BigInt(weight.out), BigInt(weight.in)));
    this.#packed = new NativeBuffer(floats * 4);
    lib.sb_linear_f32_pack(
      weight.weight,
      weight.bias ?? null,
      BigInt(weight.out),
      BigInt(weight.in),
      this.#packed.pointer,
    );
  }

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
  }

  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const out = checkForward(this, x, m, options);
    kernels().symbols.sb_linear_f32(
      x,
      BigInt(m),
      BigInt(this.inFeatures),
      this.#packed.pointer,
      BigInt(this.outFeatures),
      options.residual ?? null,
      out,
      ACTIVATION_CODE[this.activation],
    );
    return out;
  }

  /** Frees the packed weights. */
  [Symbol.dispose](): void {
    this.#packed[Symbol.dispose]();
  }
}

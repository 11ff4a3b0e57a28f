/**
 * Sparse int8 linear layer over the `sb_spmm_i8` kernel (`kernels/spmm_i8.zig`): weights in
 * 4x1 blocks (4 output channels x 1 input channel), activations quantized on the fly to the
 * kernels' codes (u7, or u8 with AVX-512 VNNI: `int8ActivationQmax`) in the kernel's
 * token-contiguous packed layout. Same interface and epilogue as
 * {@linkcode LinearI8}; the work done is proportional to the kept blocks.
 *
 * ```ts
 * import { SparseLinearI8 } from "./ops/sparse_linear_i8.ts";
 * const weight = new Float32Array(8 * 16); // mostly zero 4x1 blocks in practice
 * weight[0] = 1;
 * using op = new SparseLinearI8({ out: 8, in: 16, weight });
 * const y = op.forward(new Float32Array(3 * 16).fill(1), 3);
 * console.log(op.blockSparsity);
 * ```
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { ACTIVATION_CODE, type LinearWeight } from "./linear.ts";
import {
  type Int8KernelCall,
  Int8Linear,
  type LinearI8Options,
  type StagedKernelCall,
} from "./linear_i8.ts";
import type { PackedBytes, PackedSource } from "./packed.ts";
import {
  checkStatus,
  packActivations,
  type QuantizedActivations,
  type QuantizedLinearWeight,
} from "./quantize.ts";
import { type SparsityStats, sparsityStats } from "./sparsity.ts";

/** Largest input width of the 4x1-block format (16-bit indices in units of 8). */
export const SPARSE_I8_MAX_IN = 8191;

/** Sparse int8 linear layer with 4x1-block weights. */
export class SparseLinearI8 extends Int8Linear {
  /** Kernel family. */
  readonly kind = "sparse-i8";
  /** Activation layout of the kernel. */
  protected readonly layout = "packed" as const;
  #stats: SparsityStats | undefined;
  #packed: PackedBytes;

  /**
   * Quantizes (if fp32) and packs `weight` once, skipping every all-zero 4x1 block of the int8
   * weight (the source arrays are not kept), or runs from the bytes of `weight.packed` as this
   * op packed them (retained until disposal; the kernel checks them).
   */
  constructor(
    weight: LinearWeight | QuantizedLinearWeight | PackedSource,
    options: LinearI8Options = {},
  ) {
    super(weight, options);
    if (this.activationQuantization === "ort-u8") {
      throw new RangeError(
        `The sparse int8 kernel takes its own activation codes; "ort-u8" runs on the dense int8 op`,
      );
    }
    if (weight.in > SPARSE_I8_MAX_IN) {
      throw new RangeError(
        `The sparse int8 format takes at most ${SPARSE_I8_MAX_IN} input features, got ${weight.in}`,
      );
    }
    const lib = kernels().symbols;
    this.#packed = Int8Linear.packedFor(weight, this.kind, {
      sizeOf: (q) => {
        this.#stats = sparsityStats(q.weight, q.out, q.in);
        return Number(lib.sb_spmm_i8_packed_len(q.weight, BigInt(q.out), BigInt(q.in)));
      },
      check: (packed) =>
        lib.sb_spmm_i8_check(
          packed.pointer,
          BigInt(packed.bytes),
          BigInt(weight.out),
          BigInt(weight.in),
        ),
      write: (q, into) =>
        lib.sb_spmm_i8_pack(
          q.weight,
          q.scale,
          q.bias ?? null,
          BigInt(q.out),
          BigInt(q.in),
          into.pointer,
          BigInt(into.bytes),
        ),
    });
  }

  /** Zero fractions of the int8 weight (from the packed bytes for an op built from them). */
  get #sparsity(): SparsityStats {
    if (this.#stats === undefined) {
      this.#stats = sparsityStats(this.unpack().weight, this.outFeatures, this.inFeatures);
    }
    return this.#stats;
  }

  /** Fraction of all-zero 4x1 blocks of the int8 weight (the work skipped). */
  get blockSparsity(): number {
    return this.#sparsity.blockSparsity;
  }

  /** Fraction of zero weights. */
  get elementSparsity(): number {
    return this.#sparsity.elementSparsity;
  }

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
  }

  /** The packed weights (a view). */
  packedData(): Uint8Array {
    return this.#packed.u8();
  }

  /** The packed weight expanded back to int8 `[out, in]` with its scales and bias. */
  unpack(): QuantizedLinearWeight {
    const q = new Int8Array(this.outFeatures * this.inFeatures);
    const scale = new Float32Array(this.outFeatures);
    const bias = new Float32Array(this.outFeatures);
    checkStatus(
      kernels().symbols.sb_spmm_i8_unpack(
        this.#packed.pointer,
        BigInt(this.#packed.bytes),
        q,
        scale,
        bias,
      ),
      "Unpacking the sparse int8 weight",
    );
    return { out: this.outFeatures, in: this.inFeatures, weight: q, scale, bias };
  }

  /** Runs `sb_spmm_i8`. */
  protected runKernel(call: Int8KernelCall): number {
    return kernels().symbols.sb_spmm_i8(
      this.#packed.pointer,
      BigInt(this.#packed.bytes),
      call.q.data,
      BigInt(call.q.m),
      this.kernelCall(call),
    );
  }

  /**
   * Runs `sb_spmm_i8_quantized`: the layer with its output quantized per token into `call.into`
   * (packed layout; see {@linkcode Int8Linear.forwardThrough}).
   */
  protected override runKernelQuantized(call: StagedKernelCall): number {
    return kernels().symbols.sb_spmm_i8_quantized(
      this.#packed.pointer,
      BigInt(this.#packed.bytes),
      call.q.data,
      BigInt(call.q.m),
      call.q.scale,
      call.q.zeroPoint,
      ACTIVATION_CODE[this.activation],
      call.staging.pointer,
      BigInt(call.staging.bytes),
      call.into.data,
      call.into.scale,
      call.into.zeroPoint,
    );
  }

  /** Packs row-layout activations into the kernel's layout. */
  protected convertLayout(
    q: QuantizedActivations,
    into: QuantizedActivations | undefined,
  ): QuantizedActivations {
    return packActivations(q, into);
  }

  /** Frees the packed weights and the native scratch. */
  [Symbol.dispose](): void {
    this.disposeStaging();
    this.#packed[Symbol.dispose]();
  }
}

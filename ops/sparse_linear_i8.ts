/**
 * Sparse int8 linear layer over the `sb_spmm_i8` kernel (`kernels/spmm_i8.zig`): weights in
 * 4x1 blocks (4 output channels x 1 input channel), activations quantized on the fly to u7 in
 * the kernel's token-contiguous packed layout. Same interface and epilogue as
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
import { NativeBuffer } from "../ffi/memory.ts";
import { type Activation, ACTIVATION_CODE, type LinearWeight } from "./linear.ts";
import {
  type Int8KernelCall,
  Int8Linear,
  type LinearI8Options,
  type StagedKernelCall,
} from "./linear_i8.ts";
import {
  checkStatus,
  packActivations,
  type QuantizedActivations,
  type QuantizedLinearWeight,
} from "./quantize.ts";
import { sparsityStats } from "./sparsity.ts";

/** Largest input width of the 4x1-block format (16-bit indices in units of 8). */
export const SPARSE_I8_MAX_IN = 8191;

/**
 * Runs `sb_spmm_i8` on packed weights at `pointer` (`bytes` long) with the output `call`
 * names. Returns the kernel's status.
 */
export function spmmI8(
  pointer: Deno.PointerObject,
  bytes: number,
  activation: Activation,
  call: Int8KernelCall,
): number {
  return kernels().symbols.sb_spmm_i8(
    pointer,
    BigInt(bytes),
    call.q.data,
    BigInt(call.q.m),
    call.q.scale,
    call.q.zeroPoint,
    call.residual,
    call.y,
    call.output,
    call.outScale,
    call.outZero,
    call.outQmax,
    ACTIVATION_CODE[activation],
  );
}

/**
 * Runs `sb_spmm_i8_quantized` on packed weights at `pointer` (`bytes` long): the layer with its
 * output quantized per token into `call.into` (packed layout). Returns the kernel's status.
 */
export function spmmI8Staged(
  pointer: Deno.PointerObject,
  bytes: number,
  activation: Activation,
  call: StagedKernelCall,
): number {
  return kernels().symbols.sb_spmm_i8_quantized(
    pointer,
    BigInt(bytes),
    call.q.data,
    BigInt(call.q.m),
    call.q.scale,
    call.q.zeroPoint,
    ACTIVATION_CODE[activation],
    call.staging.pointer,
    BigInt(call.staging.bytes),
    call.into.data,
    call.into.scale,
    call.into.zeroPoint,
  );
}

/** Sparse int8 linear layer with 4x1-block weights. */
export class SparseLinearI8 extends Int8Linear {
  /** Kernel family. */
  readonly kind = "sparse-i8";
  /** Activation layout of the kernel. */
  protected readonly layout = "packed" as const;
  /** Fraction of all-zero 4x1 blocks of the int8 weight (the work skipped). */
  readonly blockSparsity: number;
  /** Fraction of zero weights. */
  readonly elementSparsity: number;
  #packed: NativeBuffer;

  /**
   * Quantizes (if fp32) and packs `weight` once; every all-zero 4x1 block of the int8 weight
   * is skipped. The source arrays are not kept.
   */
  constructor(weight: LinearWeight | QuantizedLinearWeight, options: LinearI8Options = {}) {
    super(weight, options);
    if (this.activationQuantization === "ort-u8") {
      throw new RangeError(
        `The sparse int8 kernel takes 7-bit activations; "ort-u8" runs on the dense int8 op`,
      );
    }
    if (weight.in > SPARSE_I8_MAX_IN) {
      throw new RangeError(
        `The sparse int8 format takes at most ${SPARSE_I8_MAX_IN} input features, got ${weight.in}`,
      );
    }
    const q = Int8Linear.int8Weight(weight);
    const stats = sparsityStats(q.weight, q.out, q.in);
    this.blockSparsity = stats.blockSparsity;
    this.elementSparsity = stats.elementSparsity;
    const lib = kernels().symbols;
    const n = BigInt(q.out);
    const k = BigInt(q.in);
    const bytes = Number(lib.sb_spmm_i8_packed_len(q.weight, n, k));
    if (bytes === 0) throw new RangeError(`Weight [${q.out}, ${q.in}] is too large to pack`);
    this.#packed = new NativeBuffer(bytes);
    checkStatus(
      lib.sb_spmm_i8_pack(
        q.weight,
        q.scale,
        q.bias ?? null,
        n,
        k,
        this.#packed.pointer,
        BigInt(bytes),
      ),
      "Packing the sparse int8 weight",
    );
  }

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
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
    return spmmI8(this.#packed.pointer, this.#packed.bytes, this.activation, call);
  }

  /** Runs `sb_spmm_i8_quantized` (see {@linkcode Int8Linear.forwardThrough}). */
  protected override runKernelQuantized(call: StagedKernelCall): number {
    return spmmI8Staged(this.#packed.pointer, this.#packed.bytes, this.activation, call);
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

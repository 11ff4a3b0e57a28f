/**
 * Sparse fp32 linear layer over the `sb_spmm_f32` kernel (`kernels/spmm_f32.zig`): a weight
 * pruned in 4x1 blocks (4 output channels x 1 input channel) keeps its non-zero blocks
 * (`kernels/sparse_f32_blocks.zig`), any other pattern its non-zeros (CSR, one row per output
 * channel); the packer picks the layout by how full the kept blocks are ({@linkcode
 * SparseLinearF32.packedLayout}). Activations are transposed on the fly into the kernel's
 * token-contiguous layout. Same interface as {@linkcode LinearF32}.
 *
 * ```ts
 * import { SparseLinearF32 } from "./ops/sparse_linear_f32.ts";
 * const weight = new Float32Array(4 * 8);
 * weight[3] = 2;
 * using op = new SparseLinearF32({ out: 4, in: 8, weight });
 * const y = op.forward(new Float32Array(8).fill(1), 1); // [2, 0, 0, 0]
 * ```
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  borrowCheckedSource,
  checkForward,
  checkLinearWeight,
  type ForwardOptions,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./linear.ts";
import { isPackedSource, PackedBytes, type PackedSource } from "./packed.ts";
import { checkStatus } from "./status.ts";

/** The two packed layouts of {@linkcode SparseLinearF32}. */
export type SparseF32Layout = "blocks-4x1" | "csr";

/** The block layout's magic, "SBB4" (`kernels/sparse_f32_blocks.zig`). */
const BLOCKS_MAGIC = 0x34424253;

/** Y = act(X W^T + b) + residual with W's kept 4x1 blocks or non-zeros in native memory. */
export class SparseLinearF32 implements LinearOp {
  /** Kernel family. */
  readonly kind = "sparse-f32";
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  #nonZeros: number | undefined;
  #packed: PackedBytes;
  #workspace = new Float32Array(0);

  /**
   * Packs the non-zeros of `weight` (`[out, in]`, torch layout) once, or runs from the bytes of
   * `source.packed` as this op packed them (retained until disposal; the kernel checks them).
   */
  constructor(source: LinearWeight | PackedSource, options: LinearOptions = {}) {
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    this.inFeatures = source.in;
    this.outFeatures = source.out;
    if (isPackedSource(source)) {
      this.#packed = borrowCheckedSource(
        source,
        this.kind,
        (packed) =>
          kernels().symbols.sb_spmm_f32_check(
            packed.pointer,
            BigInt(packed.bytes),
            BigInt(source.out),
            BigInt(source.in),
          ),
      );
      return;
    }
    const weight = checkLinearWeight(source);
    let nonZeros = 0;
    for (let i = 0; i < weight.weight.length; i++) {
      if (!Number.isFinite(weight.weight[i])) {
        throw new RangeError(`Weight ${i} must be finite, got ${weight.weight[i]}`);
      }
      nonZeros += weight.weight[i] !== 0 ? 1 : 0;
    }
    this.#nonZeros = nonZeros;
    const lib = kernels().symbols;
    const n = BigInt(weight.out);
    const k = BigInt(weight.in);
    const bytes = Number(lib.sb_spmm_f32_packed_len(weight.weight, n, k));
    if (bytes === 0) throw new RangeError(`Weight [${weight.out}, ${weight.in}] is too large`);
    this.#packed = PackedBytes.allocate(bytes, `${this.kind} linear`);
    checkStatus(
      lib.sb_spmm_f32_pack(
        weight.weight,
        weight.bias ?? null,
        n,
        k,
        this.#packed.pointer,
        BigInt(bytes),
      ),
      "Packing the sparse fp32 weight",
    );
  }

  /** Non-zero weights kept (counted from the packed bytes for an op built from them). */
  get nonZeros(): number {
    if (this.#nonZeros === undefined) {
      const w = this.unpack().weight;
      let count = 0;
      for (let i = 0; i < w.length; i++) count += w[i] !== 0 ? 1 : 0;
      this.#nonZeros = count;
    }
    return this.#nonZeros;
  }

  /** Which layout the packer chose for this weight (read from the packed bytes). */
  get packedLayout(): SparseF32Layout {
    const bytes = this.#packed.u8();
    const magic = new DataView(bytes.buffer, bytes.byteOffset, 4).getUint32(0, true);
    return magic === BLOCKS_MAGIC ? "blocks-4x1" : "csr";
  }

  /** Fraction of zero weights. */
  get sparsity(): number {
    return 1 - this.nonZeros / (this.inFeatures * this.outFeatures);
  }

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
  }

  /** The packed weights (a view). */
  packedData(): Uint8Array {
    return this.#packed.u8();
  }

  /** The packed weight expanded back to a dense `[out, in]` weight with its bias. */
  unpack(): LinearWeight {
    const weight = new Float32Array(this.outFeatures * this.inFeatures);
    const bias = new Float32Array(this.outFeatures);
    checkStatus(
      kernels().symbols.sb_spmm_f32_unpack(
        this.#packed.pointer,
        BigInt(this.#packed.bytes),
        weight,
        bias,
      ),
      "Unpacking the sparse fp32 weight",
    );
    return { out: this.outFeatures, in: this.inFeatures, weight, bias };
  }

  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const out = checkForward(this, x, m, options);
    const lib = kernels().symbols;
    const floats = Number(lib.sb_pack_f32_len(BigInt(m), BigInt(this.inFeatures)));
    if (this.#workspace.length < floats) this.#workspace = new Float32Array(floats);
    lib.sb_pack_f32(x, BigInt(m), BigInt(this.inFeatures), this.#workspace);
    checkStatus(
      lib.sb_spmm_f32(
        this.#packed.pointer,
        BigInt(this.#packed.bytes),
        this.#workspace,
        BigInt(m),
        options.residual ?? null,
        out,
        ACTIVATION_CODE[this.activation],
      ),
      `sparse-f32 linear [${m}, ${this.inFeatures}] -> ${this.outFeatures}`,
    );
    return out;
  }

  /** Frees the packed weights (or drops the borrowed region's reference). */
  [Symbol.dispose](): void {
    this.#packed[Symbol.dispose]();
  }
}

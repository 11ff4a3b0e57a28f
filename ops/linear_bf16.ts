/**
 * Dense linear layer with bf16 weights over the `sb_linear_bf16` kernel
 * (`kernels/linear_bf16.zig`): the fp32 weight is rounded to bf16 once at packing (half the
 * memory of fp32), each call rounds its activations to bf16, and products are summed in fp32.
 * On a CPU with AVX512_BF16 the kernel runs `vdpbf16ps` (twice the fp32 FMA rate); elsewhere
 * an exact emulation of it gives the same bits ({@linkcode bf16Hardware} says which).
 *
 * Opt in per model with `precision: "bf16"` ({@linkcode KernelChooser}); it is not a default:
 * it changes results at about bf16's precision (see docs/BENCHMARKS.md for the cosine to fp32).
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import type { LinearOptions, LinearWeight } from "./linear.ts";
import { type DenseFloatCall, DenseFloatLinear, type DenseFloatPacking } from "./linear_f32.ts";
import type { PackedSource } from "./packed.ts";

const BF16_PACKING: DenseFloatPacking & { what: string } = {
  what: "bf16",
  bytes: (out, k) =>
    4 * Number(kernels().symbols.sb_linear_bf16_packed_len(BigInt(out), BigInt(k))),
  pack: (w, into) =>
    kernels().symbols.sb_linear_bf16_pack(
      w.weight,
      w.bias ?? null,
      BigInt(w.out),
      BigInt(w.in),
      into,
    ),
};

/** Whether this process's kernels run `vdpbf16ps` (true) or its exact fp32 emulation. */
export function bf16Hardware(): boolean {
  return kernels().symbols.sb_bf16_hardware() === 1;
}

/** Y = act(X W^T + b) + residual with W rounded to bf16 and packed in pairs along K. */
export class LinearBf16 extends DenseFloatLinear {
  /** Kernel family. */
  readonly kind = "dense-bf16";
  #scratch = new Uint32Array(0);

  /**
   * Packs `weight` (`[out, in]`, torch layout; rounded to bf16, the source arrays are not
   * kept), or runs from the bytes of `source.packed` as this op packed them.
   */
  constructor(source: LinearWeight | PackedSource, options: LinearOptions = {}) {
    super(source, options, BF16_PACKING);
  }

  /** `sb_linear_bf16`, with the activations' bf16 pairs in a scratch the op keeps. */
  protected run(c: DenseFloatCall): number {
    const lib = kernels().symbols;
    const need = Number(lib.sb_linear_bf16_scratch_len(c.m, c.k));
    if (this.#scratch.length < need) this.#scratch = new Uint32Array(need);
    const scratch = this.#scratch;
    const { x, m, k, packed, n, residual, out, activation } = c;
    const scratchLen = BigInt(scratch.length);
    return lib.sb_linear_bf16(x, m, k, scratch, scratchLen, packed, n, residual, out, activation);
  }
}

/**
 * Fused multi-head self-attention with a padding mask over the `sb_attention` kernel: per
 * (sequence, head), `softmax(Q K^T * scale + mask) V`, with fp32 products
 * (`kernels/attention.zig`) or int8 ones (`kernels/attention_i8.zig`: Q, K, V and the
 * probabilities quantized per row, key or feature, the int8 dot-product step, fp32 softmax).
 *
 * The op owns its scratch (native memory, one slot per worker thread), planned for the
 * longest sequence seen so far and re-planned only when a longer sequence or more threads
 * arrive, so steady-state calls allocate nothing.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { NativeBuffer } from "../ffi/memory.ts";
import { ATTENTION_PROBLEM, type StructBuffer } from "../ffi/structs.ts";
import { describeArray, overlaps } from "./linear.ts";
import { checkStatus } from "./status.ts";

/** The value Hugging Face adds to masked scores by default: the most negative float32. */
export const FLOAT32_MIN: number = -3.4028234663852886e38;
/** Longest sequence the kernel accepts. */
export const MAX_ATTENTION_SEQ: number = 8192;
/** Largest head size the kernel accepts. */
export const MAX_HEAD_SIZE: number = 512;

/**
 * Products of the attention: `"fp32"`, or `"int8"` (Q per row s8, K per key u8, the
 * probabilities u8 and V per feature s8, on the int8 dot-product step; on an AVX-512 VNNI Zen 4
 * 1.4x faster than fp32 at seq 128 and 2x at 384, adding little to an int8 model's error:
 * docs/BENCHMARKS.md).
 */
export type AttentionPrecision = "fp32" | "int8";

const PRECISION_CODE: Record<AttentionPrecision, number> = { fp32: 0, int8: 1 };

/** Shape options of {@linkcode Attention}. */
export interface AttentionOptions {
  /** Attention heads (>= 1). */
  heads: number;
  /** Features per head (1..512); the hidden size is `heads * headSize`. */
  headSize: number;
  /** Added to the scores of masked keys; default {@linkcode FLOAT32_MIN}. Must be finite. */
  maskValue?: number;
  /** Score scale; default `1 / sqrt(headSize)`. */
  scale?: number;
  /** Products; default `"fp32"`. */
  precision?: AttentionPrecision;
}

/** Inputs of one {@linkcode Attention.forward} call. */
export interface AttentionInput {
  /** Queries: row `r` of `[batch * seq]` starts at `r * ld`; head `h` at column `h * headSize`. */
  q: Float32Array;
  /** Keys, same layout as `q`. */
  k: Float32Array;
  /** Values, same layout as `q`. */
  v: Float32Array;
  /** Row stride of `q`, `k`, `v` in floats; default `heads * headSize`. */
  ld?: number;
  /** One byte per (sequence, key): non-zero keeps the key, zero masks it. `[batch * seq]`. */
  mask: Uint8Array;
  /** Sequences. */
  batch: number;
  /** Tokens per sequence (padded length). */
  seq: number;
  /** Output `[batch * seq]` rows of stride `ldOut`; default a new array. */
  out?: Float32Array;
  /** Row stride of `out`; default `heads * headSize`. */
  ldOut?: number;
}

/** Multi-head self-attention with a padding mask; owns its per-thread scratch. */
export class Attention implements Disposable {
  /** Attention heads. */
  readonly heads: number;
  /** Features per head. */
  readonly headSize: number;
  /** Added to the scores of masked keys. */
  readonly maskValue: number;
  /** Score scale. */
  readonly scale: number;
  /** Products. */
  readonly precision: AttentionPrecision;
  #scratch: NativeBuffer | null = null;
  #problem: StructBuffer<typeof ATTENTION_PROBLEM.fields> | undefined;
  #scratchView: Float32Array = new Float32Array(0);
  #plannedSeq = 0;
  #plannedThreads = 0;
  #disposed = false;

  /** Checks the shape options; scratch is planned on the first call (or by {@linkcode plan}). */
  constructor(options: AttentionOptions) {
    const { heads, headSize } = options;
    if (!Number.isInteger(heads) || heads < 1) {
      throw new RangeError(`Attention heads must be a positive integer, got ${heads}`);
    }
    if (!Number.isInteger(headSize) || headSize < 1 || headSize > MAX_HEAD_SIZE) {
      throw new RangeError(
        `Attention head size must be an integer in 1..${MAX_HEAD_SIZE}, got ${headSize}`,
      );
    }
    this.heads = heads;
    this.headSize = headSize;
    this.maskValue = options.maskValue ?? FLOAT32_MIN;
    if (!Number.isFinite(this.maskValue)) {
      throw new RangeError(`Attention mask value must be finite, got ${this.maskValue}`);
    }
    this.precision = options.precision ?? "fp32";
    if (!Object.hasOwn(PRECISION_CODE, this.precision)) {
      throw new RangeError(
        `Attention precision must be "fp32" or "int8", got "${this.precision}"`,
      );
    }
    this.scale = options.scale ?? 1 / Math.sqrt(headSize);
    if (!Number.isFinite(this.scale)) {
      throw new RangeError(`Attention scale must be finite, got ${this.scale}`);
    }
  }

  /** Bytes of scratch currently held. */
  get scratchBytes(): number {
    return this.#scratch?.bytes ?? 0;
  }

  /**
   * Makes sure the scratch fits sequences of `seq` tokens with the current thread count.
   * Called by {@linkcode forward}; call it ahead to move the allocation out of the first call.
   */
  plan(seq: number): void {
    if (this.#disposed) throw new Error("Attention used after it was disposed");
    if (!Number.isInteger(seq) || seq < 1 || seq > MAX_ATTENTION_SEQ) {
      throw new RangeError(
        `Attention sequence length must be an integer in 1..${MAX_ATTENTION_SEQ}, got ${seq}`,
      );
    }
    const lib = kernels().symbols;
    const threads = lib.sb_threads();
    if (seq <= this.#plannedSeq && threads <= this.#plannedThreads) return;
    const planSeq = Math.max(seq, this.#plannedSeq);
    const planThreads = Math.max(threads, this.#plannedThreads);
    const floats = Number(lib.sb_attention_scratch_len(
      BigInt(planSeq),
      BigInt(this.headSize),
      BigInt(planThreads),
      PRECISION_CODE[this.precision],
    ));
    this.#scratch?.[Symbol.dispose]();
    this.#scratch = new NativeBuffer(floats * 4);
    this.#scratchView = this.#scratch.f32();
    this.#plannedSeq = planSeq;
    this.#plannedThreads = planThreads;
  }

  /** Computes the attention context of every sequence and head; returns the output. */
  forward(input: AttentionInput): Float32Array {
    const { batch, seq } = input;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`Attention batch must be a positive integer, got ${batch}`);
    }
    this.plan(seq);
    const width = this.heads * this.headSize;
    const ld = input.ld ?? width;
    const ldOut = input.ldOut ?? width;
    if (!Number.isInteger(ld) || ld < width) {
      throw new RangeError(`Attention row stride ld must be an integer >= ${width}, got ${ld}`);
    }
    if (!Number.isInteger(ldOut) || ldOut < width) {
      throw new RangeError(`Attention output stride must be an integer >= ${width}, got ${ldOut}`);
    }
    const rows = batch * seq;
    const needIn = (rows - 1) * ld + width;
    for (const [name, array] of [["q", input.q], ["k", input.k], ["v", input.v]] as const) {
      if (!(array instanceof Float32Array) || array.length < needIn) {
        throw new RangeError(
          `Attention ${name} needs ${needIn} float32 values for ${batch} x ${seq} rows of stride ${ld}, got ${
            describeArray(array)
          }`,
        );
      }
    }
    if (!(input.mask instanceof Uint8Array) || input.mask.length < rows) {
      throw new RangeError(
        `Attention mask needs ${rows} bytes (batch x seq), got ${describeArray(input.mask)}`,
      );
    }
    const needOut = (rows - 1) * ldOut + width;
    const out = input.out ?? new Float32Array(rows * ldOut);
    if (!(out instanceof Float32Array) || out.length < needOut) {
      throw new RangeError(
        `Attention output needs ${needOut} float32 values, got ${describeArray(out)}`,
      );
    }
    if ([input.q, input.k, input.v].some((source) => overlaps(source, out))) {
      throw new RangeError("Attention output must not overlap q, k or v");
    }
    this.#problem ??= ATTENTION_PROBLEM.buffer();
    const problem = this.#problem.write({
      q: input.q,
      k: input.k,
      v: input.v,
      ld,
      mask: input.mask,
      mask_value: this.maskValue,
      batch,
      seq,
      heads: this.heads,
      head_size: this.headSize,
      scale: this.scale,
      out,
      ld_out: ldOut,
    });
    const status = kernels().symbols.sb_attention(
      problem,
      this.#scratchView,
      BigInt(this.#scratchView.length),
      PRECISION_CODE[this.precision],
    );
    checkStatus(status, `Attention [${batch} x ${seq}, ${this.heads} heads]`);
    return out;
  }

  /** Frees the scratch; later calls throw. */
  [Symbol.dispose](): void {
    this.#disposed = true;
    this.#scratch?.[Symbol.dispose]();
    this.#scratch = null;
    this.#scratchView = new Float32Array(0);
  }
}

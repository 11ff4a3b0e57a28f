/**
 * Dense int8 linear layer over the `sb_gemm_i8` kernel (`kernels/gemm_i8.zig`), and the base
 * class it shares with the sparse int8 op.
 *
 * Y = act(dequant(X_q W_q^T) + b) + residual, where W_q is s8 per-output-channel symmetric and
 * X_q the activations quantized on the fly to the kernels' codes (per token by default; u7, or u8
 * with AVX-512 VNNI: see `ops/quantize.ts` for why). The epilogue removes the activation zero point exactly in s32
 * (`acc - zero * sum(W_q row)`), dequantizes per channel, adds the bias, applies the activation
 * and the residual, and writes fp32, requantized u8, or the exact s32 sums.
 *
 * ```ts
 * import { LinearI8 } from "./ops/linear_i8.ts";
 * using op = new LinearI8({ out: 4, in: 8, weight: new Float32Array(32).fill(0.5) });
 * const y = op.forward(new Float32Array(16).fill(1), 2);
 * ```
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { NativeBuffer } from "../ffi/memory.ts";
import { INT8_CALL, type StructBuffer } from "../ffi/structs.ts";
import {
  type Activation,
  ACTIVATION_CODE,
  borrowCheckedSource,
  checkForward,
  checkInput,
  checkLinearWeight,
  checkOutput,
  checkPackedSource,
  describeArray,
  type ForwardOptions,
  type KernelKind,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
  overlaps,
} from "./linear.ts";
import { isPackedSource, PackedBytes, type PackedSource } from "./packed.ts";
import {
  type ActivationQuantization,
  checkQuantizedWeight,
  checkStatus,
  int8ActivationQmax,
  isActivationQuantization,
  isQuantizedWeight,
  packedBytes,
  quantizeActivations,
  type QuantizedActivations,
  type QuantizedLinearWeight,
  quantizeWeights,
  reuseActivations,
} from "./quantize.ts";

/** Options of the int8 linear ops' constructors. */
export interface LinearI8Options extends LinearOptions {
  /** How activations are quantized on the fly; default `"per-token"`. */
  activationQuantization?: ActivationQuantization;
}

/** Static quantization of a requantized u8 output. */
export interface RequantizeOptions {
  /** Output scale: y = (q - zeroPoint) * scale. */
  scale: number;
  /** Output zero point in [0, qmax]. */
  zeroPoint: number;
  /** 127 (default; what the int8 kernels take as input) or 255. */
  qmax?: number;
  /** Added before requantization, `[m * out]` fp32. */
  residual?: Float32Array;
  /** Reuse these buffers when large enough. */
  into?: QuantizedActivations;
}

/**
 * Buffers of a layer whose kernel writes its output quantized for the next sparse int8 op
 * (`sb_spmm_i8_quantized`): the packed activation codes handed on, the native staging
 * scratch, and the fp32 buffer of the unfused path. Grown on demand and reused.
 */
class StagedOutput implements Disposable {
  /** Output features of the layer. */
  readonly outFeatures: number;
  #hidden: Float32Array | undefined;
  #handoff: QuantizedActivations | undefined;
  #staging: NativeBuffer | undefined;

  /** Nothing is allocated until used. */
  constructor(outFeatures: number) {
    this.outFeatures = outFeatures;
  }

  /** The fp32 output buffer of `m` rows (the unfused path). */
  hidden(m: number): Float32Array {
    const need = m * this.outFeatures;
    if (this.#hidden === undefined || this.#hidden.length < need) {
      this.#hidden = new Float32Array(need);
    }
    return this.#hidden.subarray(0, need);
  }

  /** The packed output codes of `m` rows and the native scratch its kernel stages through. */
  prepare(m: number): { into: QuantizedActivations; staging: NativeBuffer } {
    const n = this.outFeatures;
    const stagingBytes = Number(kernels().symbols.sb_spmm_i8_staging_len(BigInt(m), BigInt(n)));
    if (this.#staging === undefined || this.#staging.bytes < stagingBytes) {
      this.#staging?.[Symbol.dispose]();
      this.#staging = new NativeBuffer(stagingBytes);
    }
    const into = reuseActivations(
      this.#handoff,
      "packed",
      m,
      n,
      0,
      packedBytes(m, n),
      int8ActivationQmax(),
    );
    this.#handoff = into;
    return { into, staging: this.#staging };
  }

  /** Frees the native scratch. */
  [Symbol.dispose](): void {
    this.#staging?.[Symbol.dispose]();
    this.#staging = undefined;
  }
}

/** Output codes of the int8 kernels (`kernels/int8.zig` `Output`). */
const OUTPUT_CODE = { f32: 0, u8: 1, s32: 2 } as const;

/** What one int8 kernel call writes (the arguments of `sb_gemm_i8` / `sb_spmm_i8`). */
export interface Int8KernelCall {
  /** Quantized activations in the op's layout. */
  q: QuantizedActivations;
  /** Residual or null. */
  residual: Float32Array | null;
  /** Output buffer of the element type `output` names. */
  y: Float32Array | Uint8Array | Int32Array;
  /** Output code. */
  output: number;
  /** u8 output scale, zero point, qmax (ignored otherwise). */
  outScale: number;
  /** u8 output zero point. */
  outZero: number;
  /** u8 output qmax. */
  outQmax: number;
}

/** What the staged kernel call of {@linkcode Int8Linear.forwardThrough} writes. */
export interface StagedKernelCall {
  /** Quantized activations in the op's layout. */
  q: QuantizedActivations;
  /** The output, quantized per token in the packed layout (`m` x out features). */
  into: QuantizedActivations;
  /** Native scratch of `sb_spmm_i8_staging_len(m, out)` bytes. */
  staging: NativeBuffer;
}

/**
 * The int8 linear ops' shared front end: weight quantization, on-the-fly activation
 * quantization into a reused workspace, and the fp32 / u8 / s32 outputs. Subclasses pack the
 * weights and run their kernel.
 */
export abstract class Int8Linear implements LinearOp {
  /** Kernel family. */
  abstract readonly kind: KernelKind;
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  /** How activations are quantized on the fly. */
  readonly activationQuantization: ActivationQuantization;
  /** Activation layout the kernel reads. */
  protected abstract readonly layout: "rows" | "packed";
  #workspace: QuantizedActivations | undefined;
  #repacked: QuantizedActivations | undefined;
  #staged: StagedOutput | undefined;
  #call: StructBuffer<typeof INT8_CALL.fields> | undefined;

  /** Validates the weight (or packed source) and the options. */
  protected constructor(
    weight: LinearWeight | QuantizedLinearWeight | PackedSource,
    options: LinearI8Options,
  ) {
    this.activation = options.activation ?? "none";
    if (!(this.activation in ACTIVATION_CODE)) {
      throw new RangeError(`Unknown activation "${this.activation}"`);
    }
    this.activationQuantization = options.activationQuantization ?? "per-token";
    if (!isActivationQuantization(this.activationQuantization)) {
      throw new RangeError(`Unknown activation quantization "${this.activationQuantization}"`);
    }
    if (isPackedSource(weight)) checkPackedSource(weight, "int8 linear");
    else if (isQuantizedWeight(weight)) checkQuantizedWeight(weight);
    else checkLinearWeight(weight);
    this.inFeatures = weight.in;
    this.outFeatures = weight.out;
  }

  /**
   * The packed bytes of a subclass: borrowed from `source` when it is a {@linkcode PackedSource}
   * (checked against `need` bytes when the size follows from the shape), else allocated by
   * `sizeOf` and written by `pack` from the int8 weight.
   */
  protected static packedFor(
    source: LinearWeight | QuantizedLinearWeight | PackedSource,
    kind: KernelKind,
    pack: {
      need?: number;
      sizeOf: (q: QuantizedLinearWeight) => number;
      write: (q: QuantizedLinearWeight, into: PackedBytes) => number;
      /** Checks borrowed bytes (header, tables, shape) before any kernel reads them. */
      check: (packed: PackedBytes) => number;
    },
  ): PackedBytes {
    const what = `${kind} linear`;
    if (isPackedSource(source)) return borrowCheckedSource(source, kind, pack.check, pack.need);
    const q = isQuantizedWeight(source) ? source : quantizeWeights(source);
    const bytes = pack.sizeOf(q);
    if (bytes === 0) throw new RangeError(`Weight [${q.out}, ${q.in}] is too large to pack`);
    const packed = PackedBytes.allocate(bytes, what);
    try {
      checkStatus(pack.write(q, packed), `Packing the ${kind} weight`);
    } catch (error) {
      packed[Symbol.dispose]();
      throw error;
    }
    return packed;
  }

  /** Bytes of packed weights in native memory. */
  abstract get packedBytes(): number;

  /** The packed weights (a view). */
  abstract packedData(): Uint8Array;

  /** Runs the kernel; returns its status. */
  protected abstract runKernel(call: Int8KernelCall): number;

  /**
   * Runs the kernel with its fp32 output (no residual) quantized per token into the packed
   * layout; returns its status. Only kernels that can stage their output implement it.
   */
  protected runKernelQuantized?(call: StagedKernelCall): number;

  /** Frees the packed weights. */
  abstract [Symbol.dispose](): void;

  /**
   * The kernel's `Int8Call` struct for `call` (`ffi/structs.ts`), written into this op's
   * reused buffer: the activations' per-token parameters, residual, output and epilogue.
   */
  protected kernelCall(call: Int8KernelCall): Uint8Array {
    this.#call ??= INT8_CALL.buffer();
    return this.#call.write({
      x_scale: call.q.scale,
      x_zero: call.q.zeroPoint,
      residual: call.residual,
      y: call.y,
      output: call.output,
      activation: ACTIVATION_CODE[this.activation],
      out_scale: call.outScale,
      out_zero: call.outZero,
      out_qmax: call.outQmax,
      numerics: this.activationQuantization === "ort-u8" ? 1 : 0,
    });
  }

  /** Largest activation code this op's kernel takes: the library's, or 255 for `"ort-u8"`. */
  get #activationQmax(): number {
    return this.activationQuantization === "ort-u8" ? 255 : int8ActivationQmax();
  }

  /** Quantizes fp32 input `[m, in]` into this op's workspace, in the kernel's layout. */
  quantizeInput(x: Float32Array, m: number): QuantizedActivations {
    this.#workspace = quantizeActivations(x, m, this.inFeatures, {
      mode: this.activationQuantization,
      layout: this.layout,
      into: this.#workspace,
    });
    return this.#workspace;
  }

  /** Y [m, out] = act(X [m, in] W^T + b) + residual, with X quantized on the fly. */
  forward(x: Float32Array, m: number, options: ForwardOptions = {}): Float32Array {
    const out = checkForward(this, x, m, options);
    const q = this.quantizeInput(x, m);
    this.#run(q, options.residual ?? null, out, OUTPUT_CODE.f32, 1, 0, 127);
    return out;
  }

  /** Y [m, out] in fp32 from already quantized activations. */
  forwardQuantized(q: QuantizedActivations, options: ForwardOptions = {}): Float32Array {
    const need = this.#checkQuantized(q) * this.outFeatures;
    const out = options.out ?? new Float32Array(need);
    this.#checkOutput(out, need, options.residual);
    this.#run(this.#inLayout(q), options.residual ?? null, out, OUTPUT_CODE.f32, 1, 0, 127);
    return out;
  }

  /**
   * The exact s32 sums `sum_k (q[t, k] - zero[t]) * W_q[c, k]` (no scale, bias, activation),
   * `[m, out]`: what the kernels' s32 accumulators hold before the float epilogue.
   */
  forwardExact(q: QuantizedActivations, out?: Int32Array): Int32Array {
    const need = this.#checkQuantized(q) * this.outFeatures;
    const y = out ?? new Int32Array(need);
    if (!(y instanceof Int32Array) || y.length < need) {
      throw new RangeError(`Output buffer needs ${need} int32 values, got ${describeArray(y)}`);
    }
    this.#run(this.#inLayout(q), null, y, OUTPUT_CODE.s32, 1, 0, 127);
    return y;
  }

  /**
   * Y requantized to u8 with a static scale and zero point, `[m, out]` token-major: ready to
   * feed another int8 op (`forwardQuantized`) without an fp32 round trip.
   */
  forwardRequantized(
    x: Float32Array | QuantizedActivations,
    m: number,
    options: RequantizeOptions,
  ): QuantizedActivations {
    const { scale, zeroPoint, qmax = 127 } = options;
    if (!(scale > 0) || !Number.isFinite(scale)) {
      throw new RangeError(`Output scale must be positive and finite, got ${scale}`);
    }
    if (qmax !== 127 && qmax !== 255) throw new RangeError(`qmax must be 127 or 255, got ${qmax}`);
    if (!Number.isInteger(zeroPoint) || zeroPoint < 0 || zeroPoint > qmax) {
      throw new RangeError(
        `Output zero point must be an integer in [0, ${qmax}], got ${zeroPoint}`,
      );
    }
    let q: QuantizedActivations;
    if (x instanceof Float32Array) {
      checkForward(this, x, m, {});
      q = this.quantizeInput(x, m);
    } else {
      if (x.m !== m) throw new RangeError(`Quantized input holds ${x.m} tokens, not ${m}`);
      this.#checkQuantized(x);
      q = this.#inLayout(x);
    }
    const n = this.outFeatures;
    const bytes = m * n;
    const into = options.into;
    const data = into && into.data.buffer.byteLength >= bytes
      ? new Uint8Array(into.data.buffer, 0, bytes)
      : new Uint8Array(bytes);
    this.#checkOutput(data, bytes, options.residual);
    this.#run(q, options.residual ?? null, data, OUTPUT_CODE.u8, scale, zeroPoint, qmax);
    const result: QuantizedActivations = {
      layout: "rows",
      m,
      k: n,
      stride: n,
      data,
      scale: into && into.scale.buffer.byteLength >= 4 * m
        ? new Float32Array(into.scale.buffer, 0, m)
        : new Float32Array(m),
      zeroPoint: into && into.zeroPoint.buffer.byteLength >= 4 * m
        ? new Int32Array(into.zeroPoint.buffer, 0, m)
        : new Int32Array(m),
      qmax,
    };
    result.scale.fill(scale);
    result.zeroPoint.fill(zeroPoint);
    return result;
  }

  /**
   * Whether {@linkcode forwardThrough} hands this op's output to `next` already quantized: this
   * op's kernel can stage its output and `next` takes packed per-token activations.
   */
  stagesInto(next: LinearOp): boolean {
    return next instanceof Int8Linear && this.runKernelQuantized !== undefined &&
      next.layout === "packed" && next.activationQuantization === "per-token" &&
      next.inFeatures === this.outFeatures;
  }

  /**
   * Y = next(this(X)): this layer's `[m, out]` output is `next`'s input; `options` (`out`,
   * `residual`) apply to `next`. When this op's kernel can stage its output and `next` is a
   * sparse int8 op with per-token activations (a BERT feed-forward pair), the kernel writes its
   * output straight into `next`'s packed activation codes: the same codes as quantizing the
   * fp32 output, without a second pass over it. Otherwise the fp32 output goes through a
   * buffer this op keeps.
   */
  forwardThrough(
    next: LinearOp,
    x: Float32Array,
    m: number,
    options: ForwardOptions = {},
  ): Float32Array {
    if (next.inFeatures !== this.outFeatures) {
      throw new RangeError(
        `The next op takes ${next.inFeatures} features, this one gives ${this.outFeatures}`,
      );
    }
    checkInput(this, x, m);
    this.#staged ??= new StagedOutput(this.outFeatures);
    if (this.runKernelQuantized === undefined || !this.stagesInto(next)) {
      const hidden = this.#staged.hidden(m);
      this.forward(x, m, { out: hidden });
      return next.forward(hidden, m, options);
    }
    const out = checkOutput(next, m, options);
    const { into, staging } = this.#staged.prepare(m);
    checkStatus(
      this.runKernelQuantized({ q: this.quantizeInput(x, m), into, staging }),
      `${this.kind} linear [${m}, ${this.inFeatures}] -> ${this.outFeatures} (quantized output)`,
    );
    (next as Int8Linear).#run(into, options.residual ?? null, out, OUTPUT_CODE.f32, 1, 0, 127);
    return out;
  }

  /** Frees the buffers of {@linkcode forwardThrough}. */
  protected disposeStaging(): void {
    this.#staged?.[Symbol.dispose]();
    this.#staged = undefined;
  }

  #run(
    q: QuantizedActivations,
    residual: Float32Array | null,
    y: Float32Array | Uint8Array | Int32Array,
    output: number,
    outScale: number,
    outZero: number,
    outQmax: number,
  ): void {
    const status = this.runKernel({ q, residual, y, output, outScale, outZero, outQmax });
    checkStatus(status, `${this.kind} linear [${q.m}, ${this.inFeatures}] -> ${this.outFeatures}`);
  }

  #checkQuantized(q: QuantizedActivations): number {
    if (q.k !== this.inFeatures) {
      throw new RangeError(`Quantized input has ${q.k} features, the op takes ${this.inFeatures}`);
    }
    if (!Number.isInteger(q.m) || q.m < 1) {
      throw new RangeError(`Quantized input needs a positive token count, got ${q.m}`);
    }
    const qmax = this.#activationQmax;
    if (this.activationQuantization === "ort-u8" ? q.qmax !== 255 : q.qmax > qmax) {
      throw new RangeError(
        this.activationQuantization === "ort-u8"
          ? `This op runs ORT's 8-bit activations (qmax 255), got qmax ${q.qmax}`
          : `The int8 kernels here take activations up to ${qmax}, got qmax ${q.qmax}`,
      );
    }
    if (q.scale.length < q.m || q.zeroPoint.length < q.m) {
      throw new RangeError(`Quantized input needs ${q.m} scales and zero points`);
    }
    if (!(q.data instanceof Uint8Array)) {
      throw new RangeError(`Quantized data must be a Uint8Array, got ${describeArray(q.data)}`);
    }
    if (q.layout === "rows") {
      const need = q.m * q.stride;
      if (!Number.isInteger(q.stride) || q.stride < q.k || q.data.length < need) {
        throw new RangeError(`Quantized rows need ${need} bytes with stride >= ${q.k}`);
      }
    } else if (q.layout === "packed") {
      const need = packedBytes(q.m, q.k);
      if (q.data.length < need) {
        throw new RangeError(`Packed activations need ${need} bytes, got ${q.data.length}`);
      }
    } else {
      throw new RangeError(`Unknown activation layout "${q.layout}"`);
    }
    const lib = kernels().symbols;
    // Packed lanes are u16 whose high byte the kernels take to be 0: a set one counts above 255.
    const max = q.layout === "rows"
      ? lib.sb_u8_max(q.data, BigInt(q.m * q.stride))
      : lib.sb_u16_max(q.data, BigInt(packedBytes(q.m, q.k)));
    if (max > q.qmax) {
      throw new RangeError(
        `Quantized activations must be at most ${q.qmax} (see ops/quantize.ts), found ${max}`,
      );
    }
    return q.m;
  }

  #checkOutput(out: ArrayBufferView & { length: number }, need: number, residual?: Float32Array) {
    if (out.length < need) {
      throw new RangeError(`Output buffer needs ${need} values, got ${describeArray(out)}`);
    }
    if (residual !== undefined) {
      if (!(residual instanceof Float32Array) || residual.length < need) {
        throw new RangeError(
          `Residual needs ${need} float32 values, got ${describeArray(residual)}`,
        );
      }
      if (overlaps(residual, out)) {
        throw new RangeError("Residual and output buffers must not overlap");
      }
    }
  }

  /** `q` in the layout of this op's kernel, converting through a reused buffer if needed. */
  #inLayout(q: QuantizedActivations): QuantizedActivations {
    if (q.layout === this.layout && (q.layout === "packed" || q.stride % 4 === 0)) return q;
    this.#repacked = this.convertLayout(q, this.#repacked);
    return this.#repacked;
  }

  /** Converts quantized activations into this op's layout (subclasses override). */
  protected abstract convertLayout(
    q: QuantizedActivations,
    into: QuantizedActivations | undefined,
  ): QuantizedActivations;
}

/**
 * Dense int8 linear layer: `new LinearI8(weight, options)` quantizes an fp32 weight per output
 * channel (or takes an int8 one) and packs it into 16-channel panels.
 */
export class LinearI8 extends Int8Linear {
  /** Kernel family. */
  readonly kind = "dense-i8";
  /** Activation layout of the kernel. */
  protected readonly layout = "rows" as const;
  #packed: PackedBytes;

  /**
   * Quantizes (if fp32) and packs `weight` once (the source arrays are not kept), or runs from
   * the bytes of `weight.packed` as this op packed them (retained until disposal).
   */
  constructor(
    weight: LinearWeight | QuantizedLinearWeight | PackedSource,
    options: LinearI8Options = {},
  ) {
    super(weight, options);
    const lib = kernels().symbols;
    const sizeOf = (out: number, k: number) =>
      Number(lib.sb_gemm_i8_packed_len(BigInt(out), BigInt(k)));
    this.#packed = Int8Linear.packedFor(weight, this.kind, {
      need: sizeOf(weight.out, weight.in),
      sizeOf: (q) => sizeOf(q.out, q.in),
      check: (packed) =>
        lib.sb_gemm_i8_check(
          packed.pointer,
          BigInt(packed.bytes),
          BigInt(weight.out),
          BigInt(weight.in),
        ),
      write: (q, into) =>
        lib.sb_gemm_i8_pack(
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

  /** Bytes of packed weights in native memory. */
  get packedBytes(): number {
    return this.#packed.bytes;
  }

  /** The packed weights (a view). */
  packedData(): Uint8Array {
    return this.#packed.u8();
  }

  /** Runs `sb_gemm_i8`. */
  protected runKernel(call: Int8KernelCall): number {
    return kernels().symbols.sb_gemm_i8(
      this.#packed.pointer,
      BigInt(this.#packed.bytes),
      call.q.data,
      BigInt(call.q.stride),
      BigInt(call.q.m),
      this.kernelCall(call),
    );
  }

  /** Copies rows into a stride that is a multiple of 4 (or unpacks nothing: packed is refused). */
  protected convertLayout(
    q: QuantizedActivations,
    into: QuantizedActivations | undefined,
  ): QuantizedActivations {
    if (q.layout === "packed") {
      throw new RangeError("The dense int8 op takes row-layout activations, got the packed layout");
    }
    const stride = Math.ceil(q.k / 4) * 4;
    const bytes = q.m * stride;
    const data = into && into.data.buffer.byteLength >= bytes
      ? new Uint8Array(into.data.buffer, 0, bytes)
      : new Uint8Array(bytes);
    data.fill(0);
    for (let t = 0; t < q.m; t++) {
      data.set(q.data.subarray(t * q.stride, t * q.stride + q.k), t * stride);
    }
    return { ...q, stride, data };
  }

  /** Frees the packed weights (or drops the borrowed region's reference) and the buffers. */
  [Symbol.dispose](): void {
    this.disposeStaging();
    this.#packed[Symbol.dispose]();
  }
}

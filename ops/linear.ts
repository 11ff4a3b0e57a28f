/**
 * The interface shared by every linear op (dense fp32, dense int8, sparse fp32, sparse int8),
 * so a model can choose a kernel per layer and swap them freely.
 *
 * @module
 */
import { PackedBytes, type PackedSource } from "./packed.ts";
import { checkStatus } from "./status.ts";

/** The linear kernel families, one op class each. */
export type KernelKind = "dense-f32" | "dense-i8" | "sparse-f32" | "sparse-i8" | "dense-bf16";

/** Every {@linkcode KernelKind}. */
export const KERNEL_KINDS: readonly KernelKind[] = Object.freeze([
  "dense-f32",
  "dense-i8",
  "sparse-f32",
  "sparse-i8",
  "dense-bf16",
]);

/** Activation fused into a linear op's epilogue: y = act(x W^T + b) + residual. */
export type Activation = "none" | "gelu" | "gelu_tanh";

/** Activation codes of the C ABI (`kernels/vmath.zig` `Activation`). */
export const ACTIVATION_CODE: Record<Activation, number> = { none: 0, gelu: 1, gelu_tanh: 2 };

/** A dense linear weight in torch `[out, in]` row-major layout with its bias. */
export interface LinearWeight {
  /** Output features (rows of `weight`). */
  out: number;
  /** Input features (columns of `weight`). */
  in: number;
  /** `[out * in]` row-major. */
  weight: Float32Array;
  /** `[out]`, or null/absent for no bias. */
  bias?: Float32Array | null;
}

/** Options accepted by every linear op's constructor. */
export interface LinearOptions {
  /** Activation fused into the epilogue; default `"none"`. */
  activation?: Activation;
}

/** Per-call options of {@linkcode LinearOp.forward}. */
export interface ForwardOptions {
  /** Output buffer `[m * out]`; allocated when absent. Must not alias `x` or `residual`. */
  out?: Float32Array;
  /** Added after the activation, `[m * out]`. */
  residual?: Float32Array;
}

/** A linear layer over packed weights (its own, or borrowed from a shared region). */
export interface LinearOp extends Disposable {
  /** Kernel family. */
  readonly kind: KernelKind;
  /** Input features K. */
  readonly inFeatures: number;
  /** Output features N. */
  readonly outFeatures: number;
  /** Activation fused into the epilogue. */
  readonly activation: Activation;
  /** Bytes of packed weights held in native memory. */
  readonly packedBytes: number;
  /**
   * The packed weights (a view): what a compiled model stores, and what the op of the same
   * kind runs from when built from a {@linkcode PackedSource} over these bytes.
   */
  packedData(): Uint8Array;
  /** Y [m, out] = act(X [m, in] W^T + b) + residual. */
  forward(x: Float32Array, m: number, options?: ForwardOptions): Float32Array;
}

/**
 * A linear op that can run with the op after it, handing its output on already quantized
 * (see `Int8Linear.forwardThrough`).
 */
export interface StagingLinearOp extends LinearOp {
  /** Whether {@linkcode forwardThrough} hands the output to `next` quantized in the kernel. */
  stagesInto(next: LinearOp): boolean;
  /** Y = next(this(X)); `options` apply to `next`. */
  forwardThrough(
    next: LinearOp,
    x: Float32Array,
    m: number,
    options?: ForwardOptions,
  ): Float32Array;
}

/** Whether `op` implements {@linkcode StagingLinearOp}. */
export function isStagingLinearOp(op: LinearOp): op is StagingLinearOp {
  const candidate = op as Partial<StagingLinearOp>;
  return typeof candidate.stagesInto === "function" &&
    typeof candidate.forwardThrough === "function";
}

/**
 * Checks the shape of a {@linkcode PackedSource} and that its byte count is `need` when the
 * kind's packed size follows from the shape alone (`need` undefined: a kind whose bytes carry
 * their own header checks it with {@linkcode borrowCheckedSource}).
 */
export function checkPackedSource(source: PackedSource, what: string, need?: number): void {
  const { out, in: inFeatures } = source;
  if (!Number.isInteger(out) || out < 1 || !Number.isInteger(inFeatures) || inFeatures < 1) {
    throw new RangeError(`The packed ${what} needs positive sizes, got [${out}, ${inFeatures}]`);
  }
  if (need !== undefined && need !== source.packed.bytes) {
    throw new RangeError(
      `A ${what} [${out}, ${inFeatures}] packs to ${need} bytes, got ${source.packed.bytes}`,
    );
  }
}

/**
 * Borrows the bytes of a {@linkcode PackedSource} after {@linkcode checkPackedSource}, and runs the
 * kind's native check on them (`check` returns a kernel status: header, index tables, shape)
 * before any kernel reads them; the borrow is released when the check fails.
 */
export function borrowCheckedSource(
  source: PackedSource,
  kind: string,
  check: (packed: PackedBytes) => number,
  need?: number,
): PackedBytes {
  checkPackedSource(source, kind, need);
  const packed = PackedBytes.borrow(source.packed, `${kind} linear`);
  try {
    checkStatus(
      check(packed),
      `Checking the packed ${kind} weight [${source.out}, ${source.in}] (its header, index ` +
        `tables and shape)`,
    );
  } catch (error) {
    packed[Symbol.dispose]();
    throw error;
  }
  return packed;
}

/** Checks a weight's shape against its data and returns it. */
export function checkLinearWeight(weight: LinearWeight, what = "linear weight"): LinearWeight {
  const { out, in: inFeatures } = weight;
  if (!Number.isInteger(out) || out < 1 || !Number.isInteger(inFeatures) || inFeatures < 1) {
    throw new RangeError(`The ${what} needs positive integer sizes, got [${out}, ${inFeatures}]`);
  }
  if (!(weight.weight instanceof Float32Array) || weight.weight.length !== out * inFeatures) {
    throw new RangeError(
      `The ${what} [${out}, ${inFeatures}] needs ${out * inFeatures} float32 values, got ${
        describeArray(weight.weight)
      }`,
    );
  }
  if (
    weight.bias != null && (!(weight.bias instanceof Float32Array) || weight.bias.length !== out)
  ) {
    throw new RangeError(
      `The ${what} bias needs ${out} float32 values, got ${describeArray(weight.bias)}`,
    );
  }
  return weight;
}

/** Checks `m` and an input `[m, op.inFeatures]` of a linear op. */
export function checkInput(op: LinearOp, x: Float32Array, m: number): void {
  if (!Number.isInteger(m) || m < 1) {
    throw new RangeError(`Row count m must be a positive integer, got ${m}`);
  }
  if (!(x instanceof Float32Array) || x.length < m * op.inFeatures) {
    throw new RangeError(
      `Input must be a Float32Array of at least ${m} x ${op.inFeatures} = ${
        m * op.inFeatures
      } values, got ${describeArray(x)}`,
    );
  }
}

/** Checks the arguments of a forward call and returns the output buffer to write. */
export function checkForward(
  op: LinearOp,
  x: Float32Array,
  m: number,
  options: ForwardOptions = {},
): Float32Array {
  checkInput(op, x, m);
  const out = checkOutput(op, m, options);
  if (overlaps(x, out)) throw new RangeError("Input and output buffers must not overlap");
  return out;
}

/** Checks (or allocates) the `[m, op.outFeatures]` output and the residual of a linear op. */
export function checkOutput(op: LinearOp, m: number, options: ForwardOptions = {}): Float32Array {
  const need = m * op.outFeatures;
  const out = options.out ?? new Float32Array(need);
  if (!(out instanceof Float32Array) || out.length < need) {
    throw new RangeError(`Output buffer needs ${need} float32 values, got ${describeArray(out)}`);
  }
  if (options.residual !== undefined) {
    if (!(options.residual instanceof Float32Array) || options.residual.length < need) {
      throw new RangeError(
        `Residual needs ${need} float32 values, got ${describeArray(options.residual)}`,
      );
    }
    if (overlaps(options.residual, out)) {
      throw new RangeError("Residual and output buffers must not overlap");
    }
  }
  return out;
}

/** Whether two typed arrays share any bytes. */
export function overlaps(a: ArrayBufferView, b: ArrayBufferView): boolean {
  if (a.buffer !== b.buffer) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

/** A short description of a value for error messages, e.g. `Float32Array(12)`. */
export function describeArray(value: unknown): string {
  if (ArrayBuffer.isView(value)) {
    return `${value.constructor.name}(${(value as unknown as { length: number }).length})`;
  }
  return value === null ? "null" : typeof value;
}

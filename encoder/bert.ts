/**
 * BERT-family encoders (BERT, DistilBERT, MiniLM, bge, e5: the post-LayerNorm BERT layout)
 * composed from the ops: embeddings + LayerNorm, then per layer a fused QKV projection,
 * masked multi-head attention, the output projection with the residual fused, LayerNorm, the
 * feed-forward pair (GELU and residual fused into the linear epilogues) and LayerNorm.
 *
 * ```ts
 * import { importOnnx } from "../formats/onnx_import.ts";
 * using encoder = new BertEncoder(await importOnnx("model.onnx"));
 * const hidden = encoder.forward({ inputIds, attentionMask, batch: 2, seq: 16 });
 * // hidden: Float32Array [2 * 16 * hiddenSize]
 * ```
 *
 * Every linear layer is built by one {@linkcode LinearFactory}, so dense fp32, int8 and sparse
 * kernels can be chosen per layer. The activations live in one native workspace planned per
 * (batch, seq) capacity and reused: a forward pass allocates nothing but its output (and not
 * even that when `out` is given).
 *
 * @module
 */
import { NativeBuffer } from "../ffi/memory.ts";
import { type ForwardProfile, phaseClock } from "./forward_profile.ts";
import { Attention, type AttentionPrecision, FLOAT32_MIN } from "../ops/attention.ts";
import { Embeddings } from "../ops/embeddings.ts";
import { layerNorm } from "../ops/layernorm.ts";
import type { Activation, LinearOp } from "../ops/linear.ts";
import { describeArray, isStagingLinearOp } from "../ops/linear.ts";
import { LinearF32 } from "../ops/linear_f32.ts";
import type { Int8Linear } from "../ops/linear_i8.ts";

import {
  type BertConfig,
  type BertWeights,
  type DenseWeight,
  type NormWeight,
  type QuantizedWeight,
  validateBertWeights,
  type WeightSparsity,
} from "./weights.ts";

function config(
  layers: number,
  hidden: number,
  heads: number,
  extra: Partial<BertConfig> = {},
): BertConfig {
  return {
    modelType: "bert",
    vocabSize: 30522,
    hiddenSize: hidden,
    numLayers: layers,
    numHeads: heads,
    intermediateSize: 4 * hidden,
    maxPositionEmbeddings: 512,
    typeVocabSize: 2,
    layerNormEps: 1e-12,
    hiddenAct: "gelu",
    padTokenId: 0,
    ...extra,
  };
}

/**
 * Configurations of well-known BERT-family encoders (architecture only; weights come from a
 * file). MiniLM, bge and e5 use the BERT layout; DistilBERT has no token types.
 */
export const BERT_PRESETS: Readonly<Record<string, Readonly<BertConfig>>> = Object.freeze({
  "bert-mini": config(4, 256, 4),
  "bert-small": config(4, 512, 8),
  "bert-base": config(12, 768, 12),
  "bert-large": config(24, 1024, 16),
  "distilbert-base": config(6, 768, 12, { modelType: "distilbert", typeVocabSize: 0 }),
  "all-minilm-l6-v2": config(6, 384, 12, { intermediateSize: 1536 }),
  "all-minilm-l12-v2": config(12, 384, 12, { intermediateSize: 1536 }),
  "bge-small-en-v1.5": config(12, 384, 12, { intermediateSize: 1536 }),
  "bge-base-en-v1.5": config(12, 768, 12),
  "e5-small-v2": config(12, 384, 12, { intermediateSize: 1536 }),
  "e5-base-v2": config(12, 768, 12),
});

/**
 * Which linear layer a {@linkcode LinearFactory} is asked to build: one of an encoder layer's,
 * or one of a head's (the pipelines' task heads and sentence-transformers Dense modules, at
 * layer {@linkcode HEAD_LAYER}).
 */
export type LinearRole =
  | "qkv"
  | "query"
  | "key"
  | "value"
  | "attention-output"
  | "intermediate"
  | "output"
  | "pooler"
  | "pre-classifier"
  | "classifier"
  | "sentence-dense";

/** The {@linkcode LinearSpec.layer} of a head's linear layers (they follow the encoder's). */
export const HEAD_LAYER = -1;

/** What a {@linkcode LinearFactory} is told about the layer it builds. */
export interface LinearSpec {
  /** Encoder layer index, from 0; {@linkcode HEAD_LAYER} for a head's layers. */
  layer: number;
  /** Role in the layer. */
  role: LinearRole;
  /** Activation to fuse into the epilogue. */
  activation: Activation;
  /** For `"qkv"`: the query, key and value weights that were concatenated (in that order). */
  parts?: readonly DenseWeight[];
}

/**
 * Builds the linear op of one layer from its weight (torch `[out, in]` layout, possibly with
 * `quantized` and `sparsity`). The returned op is owned and disposed by the encoder.
 */
export type LinearFactory = (weight: DenseWeight, spec: LinearSpec) => LinearOp;

/** The default factory: dense fp32 ({@linkcode LinearF32}) for every layer. */
export function denseF32Linear(weight: DenseWeight, spec: LinearSpec): LinearOp {
  return new LinearF32(weight, { activation: spec.activation });
}

/** Options of {@linkcode BertEncoder}. */
export interface BertEncoderOptions {
  /** Builds each linear layer; default {@linkcode denseF32Linear}. */
  linear?: LinearFactory;
  /**
   * Concatenate Q, K and V into one `[3H, H]` projection (one GEMM instead of three); default
   * true. Quantized Q/K/V are fused only when their activation quantization matches.
   */
  fuseQkv?: boolean;
  /**
   * Value added to the attention scores of padded keys; default the model's
   * (`weights.attentionMaskValue`), else the float32 minimum as Hugging Face uses.
   */
  maskValue?: number;
  /**
   * Products of the attention (see {@linkcode AttentionPrecision}). Default `"auto"`: `"int8"`
   * when every Q/K/V projection is an int8 op on the kernels' own activation codes (the model
   * already runs int8: the int8 attention adds little to its error, docs/BENCHMARKS.md), else
   * `"fp32"` (fp32 models, and ONNX Runtime's numerics, whose attention is fp32).
   */
  attentionPrecision?: AttentionPrecision | "auto";
}

/** `"int8"` when every Q/K/V op runs int8 on the kernels' own activation codes. */
function autoAttentionPrecision(layers: LayerOps[]): AttentionPrecision {
  const int8 = (op: LinearOp | null): boolean =>
    op === null ||
    ((op.kind === "dense-i8" || op.kind === "sparse-i8") &&
      (op as Partial<Int8Linear>).activationQuantization !== "ort-u8");
  const all = layers.every((l) => int8(l.qkv) && int8(l.query) && int8(l.key) && int8(l.value));
  return layers.length > 0 && all ? "int8" : "fp32";
}

/** Token ids, masks or type ids: one value per token, row-major `[batch, seq]`. */
export type TokenArray = Int32Array | BigInt64Array | Uint8Array | ArrayLike<number>;

/** Input of {@linkcode BertEncoder.forward}. */
export interface EncoderInput {
  /** Token ids `[batch * seq]`. */
  inputIds: TokenArray;
  /** 1 for real tokens, 0 for padding `[batch * seq]`; default all ones. */
  attentionMask?: TokenArray | null;
  /** Segment ids `[batch * seq]`; default all zeros. Must be 0 for DistilBERT. */
  tokenTypeIds?: TokenArray | null;
  /** Sequences. */
  batch: number;
  /** Tokens per (padded) sequence. */
  seq: number;
}

/** Options of {@linkcode BertEncoder.forward}. */
export interface EncoderForwardOptions {
  /** Output `[batch * seq * hiddenSize]`; default a new array. */
  out?: Float32Array;
  /** Adds this pass's milliseconds per phase to the profile (see `forward_profile.ts`). */
  profile?: ForwardProfile;
}

/** One linear op of the encoder, for inspection. */
export interface EncoderLinearInfo {
  /** Layer index. */
  layer: number;
  /** Role in the layer. */
  role: LinearRole;
  /** Kernel family, e.g. `"dense-f32"`. */
  kind: string;
  /** Input features. */
  inFeatures: number;
  /** Output features. */
  outFeatures: number;
  /** Bytes of packed weights. */
  packedBytes: number;
}

interface LayerOps {
  qkv: LinearOp | null;
  query: LinearOp | null;
  key: LinearOp | null;
  value: LinearOp | null;
  attentionOutput: LinearOp;
  attentionNorm: NormWeight;
  intermediate: LinearOp;
  output: LinearOp;
  outputNorm: NormWeight;
}

interface Workspace {
  rows: number;
  seq: number;
  memory: NativeBuffer;
  x: Float32Array;
  qkv: Float32Array;
  context: Float32Array;
  t: Float32Array;
  ffn: Float32Array;
  ids: Int32Array;
  types: Int32Array;
  mask: Uint8Array;
}

/**
 * Throws a clear error when the encoder's output holds NaN or infinity: a corrupt model (its
 * weights, scales or biases) or activations that overflow float32 propagate there, and a
 * caller must not take them for embeddings. Branch-free over the output, then a search for the
 * first bad value only when there is one.
 */
function checkFinite(out: Float32Array, batch: number, seq: number, hidden: number): void {
  let probe = 0;
  for (let i = 0; i < batch * seq * hidden; i++) probe += out[i] * 0; // NaN iff one is not finite
  if (probe === 0) return;
  const at = out.findIndex((v) => !Number.isFinite(v));
  const token = Math.floor(at / hidden);
  throw new RangeError(
    `The encoder's output is ${out[at]} at token ${token % seq} of sequence ${
      Math.floor(token / seq)
    } (of ${batch} x ${seq}): the model's weights are corrupt, or its activations overflow float32`,
  );
}

/** A BERT-family encoder: token ids in, last hidden states out. */
export class BertEncoder implements Disposable {
  /** Architecture. */
  readonly config: Readonly<BertConfig>;
  /** Value added to the scores of padded keys. */
  readonly maskValue: number;
  /** Products of the attention. */
  get attentionPrecision(): AttentionPrecision {
    return this.#attention.precision;
  }
  #embeddings: Embeddings;
  #layers: LayerOps[] = [];
  #attention!: Attention;
  #fused: boolean[] = [];
  #workspace: Workspace | null = null;
  #disposed = false;

  /**
   * Packs the weights into linear ops (through `options.linear`). The embedding tables and
   * norms are referenced, not copied.
   *
   * @throws Error when the weights do not match their config.
   */
  constructor(weights: BertWeights, options: BertEncoderOptions = {}) {
    validateBertWeights(weights);
    const c = weights.config;
    if (c.numLayers < 1) throw new Error(`An encoder needs at least one layer, got ${c.numLayers}`);
    this.config = Object.freeze({ ...c });
    this.maskValue = options.maskValue ?? weights.attentionMaskValue ?? FLOAT32_MIN;
    this.#embeddings = new Embeddings({
      hidden: c.hiddenSize,
      word: weights.wordEmbeddings,
      position: weights.positionEmbeddings,
      tokenType: weights.tokenTypeEmbeddings,
      norm: weights.embeddingNorm,
    });
    const factory = options.linear ?? denseF32Linear;
    const build = (weight: DenseWeight, spec: LinearSpec): LinearOp => {
      const op = factory(weight, spec);
      if (op.inFeatures !== weight.in || op.outFeatures !== weight.out) {
        op[Symbol.dispose]();
        throw new Error(
          `The linear factory built a [${op.outFeatures}, ${op.inFeatures}] op for layer ${spec.layer} ${spec.role}, expected [${weight.out}, ${weight.in}]`,
        );
      }
      if (op.activation !== spec.activation) {
        op[Symbol.dispose]();
        throw new Error(
          `The linear factory built an op with activation "${op.activation}" for layer ${spec.layer} ${spec.role}, expected "${spec.activation}"`,
        );
      }
      return op;
    };
    try {
      weights.layers.forEach((l, layer) => {
        const fused = options.fuseQkv !== false ? concatDense([l.query, l.key, l.value]) : null;
        const none = "none" as const;
        const ops: LayerOps = {
          qkv: fused
            ? build(fused, {
              layer,
              role: "qkv",
              activation: none,
              parts: [l.query, l.key, l.value],
            })
            : null,
          query: fused ? null : build(l.query, { layer, role: "query", activation: none }),
          key: fused ? null : build(l.key, { layer, role: "key", activation: none }),
          value: fused ? null : build(l.value, { layer, role: "value", activation: none }),
          attentionOutput: build(l.attentionOutput, {
            layer,
            role: "attention-output",
            activation: none,
          }),
          attentionNorm: l.attentionNorm,
          intermediate: build(l.intermediate, {
            layer,
            role: "intermediate",
            activation: c.hiddenAct,
          }),
          output: build(l.output, { layer, role: "output", activation: none }),
          outputNorm: l.outputNorm,
        };
        this.#layers.push(ops);
        this.#fused.push(fused !== null);
      });
      const precision = options.attentionPrecision ?? "auto";
      this.#attention = new Attention({
        heads: c.numHeads,
        headSize: c.hiddenSize / c.numHeads,
        maskValue: this.maskValue,
        precision: precision === "auto" ? autoAttentionPrecision(this.#layers) : precision,
      });
    } catch (error) {
      this[Symbol.dispose]();
      throw error;
    }
  }

  /** Hidden size H. */
  get hiddenSize(): number {
    return this.config.hiddenSize;
  }

  /** The linear ops, layer by layer (kind, shape, packed bytes). */
  linears(): EncoderLinearInfo[] {
    const out: EncoderLinearInfo[] = [];
    this.#layers.forEach((ops, layer) => {
      const entries: [LinearRole, LinearOp | null][] = [
        ["qkv", ops.qkv],
        ["query", ops.query],
        ["key", ops.key],
        ["value", ops.value],
        ["attention-output", ops.attentionOutput],
        ["intermediate", ops.intermediate],
        ["output", ops.output],
      ];
      for (const [role, op] of entries) {
        if (op === null) continue;
        out.push({
          layer,
          role,
          kind: op.kind,
          inFeatures: op.inFeatures,
          outFeatures: op.outFeatures,
          packedBytes: op.packedBytes,
        });
      }
    });
    return out;
  }

  /** Bytes of native workspace currently planned (activations and attention scratch). */
  get workspaceBytes(): number {
    return (this.#workspace?.memory.bytes ?? 0) + this.#attention.scratchBytes;
  }

  /**
   * Plans the workspace for `batch` sequences of `seq` tokens. {@linkcode forward} plans on
   * demand; the workspace only grows, so planning the largest shape up front means no later
   * call allocates.
   */
  plan(batch: number, seq: number): void {
    this.#check();
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`Batch size must be a positive integer, got ${batch}`);
    }
    if (!Number.isInteger(seq) || seq < 1 || seq > this.config.maxPositionEmbeddings) {
      throw new RangeError(
        `Sequence length ${seq} is outside 1..${this.config.maxPositionEmbeddings} (the model's maximum)`,
      );
    }
    this.#attention.plan(seq);
    const rows = batch * seq;
    const ws = this.#workspace;
    if (ws !== null && ws.rows >= rows && ws.seq >= seq) return;
    const capRows = Math.max(rows, ws?.rows ?? 0);
    const capSeq = Math.max(seq, ws?.seq ?? 0);
    const h = this.config.hiddenSize;
    const sizes = [h, 3 * h, h, h, this.config.intermediateSize].map((w) => align16(capRows * w));
    const total = sizes.reduce((a, b) => a + b, 0);
    const memory = new NativeBuffer(total * 4);
    const all = memory.f32();
    const views: Float32Array[] = [];
    let offset = 0;
    for (const size of sizes) {
      views.push(all.subarray(offset, offset + size));
      offset += size;
    }
    ws?.memory[Symbol.dispose]();
    this.#workspace = {
      rows: capRows,
      seq: capSeq,
      memory,
      x: views[0],
      qkv: views[1],
      context: views[2],
      t: views[3],
      ffn: views[4],
      ids: new Int32Array(capRows),
      types: new Int32Array(capRows),
      mask: new Uint8Array(capRows),
    };
  }

  /**
   * Runs the encoder on a padded batch and returns the last hidden states
   * `[batch * seq * hiddenSize]` (padded positions included, as Hugging Face computes them).
   *
   * @throws RangeError on a bad shape, a token id outside the vocabulary, a sequence longer
   *   than the position table, token type ids for a model without token types, or an output
   *   with NaN or infinity (corrupt weights).
   */
  forward(input: EncoderInput, options: EncoderForwardOptions = {}): Float32Array {
    this.#check();
    const { batch, seq } = input;
    this.plan(batch, seq);
    const ws = this.#workspace!;
    const c = this.config;
    const h = c.hiddenSize;
    const rows = batch * seq;
    const need = rows * h;
    const out = options.out ?? new Float32Array(need);
    if (!(out instanceof Float32Array) || out.length < need) {
      throw new RangeError(
        `Encoder output needs ${need} float32 values, got ${describeArray(out)}`,
      );
    }
    const ids = ws.ids.subarray(0, rows);
    copyTokens(input.inputIds, ids, rows, "inputIds");
    const mask = ws.mask.subarray(0, rows);
    if (input.attentionMask == null) {
      mask.fill(1);
    } else {
      copyMask(input.attentionMask, mask, rows);
    }
    let types: Int32Array | null = null;
    if (input.tokenTypeIds != null) {
      types = ws.types.subarray(0, rows);
      copyTokens(input.tokenTypeIds, types, rows, "tokenTypeIds");
    }
    const { x, qkv, context, t, ffn } = ws;
    const clock = phaseClock(options.profile);
    this.#embeddings.forward({ inputIds: ids, tokenTypeIds: types, batch, seq, out: x });
    clock.lap("embeddings");
    const last = this.#layers.length - 1;
    this.#layers.forEach((ops, layer) => {
      if (ops.qkv !== null) {
        ops.qkv.forward(x, rows, { out: qkv });
        clock.lap("qkv");
        this.#attention.forward({
          q: qkv,
          k: qkv.subarray(h),
          v: qkv.subarray(2 * h),
          ld: 3 * h,
          mask,
          batch,
          seq,
          out: context,
        });
      } else {
        const q = qkv.subarray(0, rows * h);
        const k = qkv.subarray(rows * h, 2 * rows * h);
        const v = qkv.subarray(2 * rows * h, 3 * rows * h);
        ops.query!.forward(x, rows, { out: q });
        ops.key!.forward(x, rows, { out: k });
        ops.value!.forward(x, rows, { out: v });
        clock.lap("qkv");
        this.#attention.forward({ q, k, v, ld: h, mask, batch, seq, out: context });
      }
      clock.lap("attention");
      ops.attentionOutput.forward(context, rows, { out: t, residual: x });
      clock.lap("attention-output");
      layerNorm(t, rows, ops.attentionNorm, { out: t });
      clock.lap("attention-norm");
      if (isStagingLinearOp(ops.intermediate) && ops.intermediate.stagesInto(ops.output)) {
        ops.intermediate.forwardThrough(ops.output, t, rows, { out: x, residual: t });
        clock.lap("feed-forward-fused");
      } else {
        ops.intermediate.forward(t, rows, { out: ffn });
        clock.lap("intermediate");
        ops.output.forward(ffn, rows, { out: x, residual: t });
        clock.lap("output");
      }
      layerNorm(x, rows, ops.outputNorm, { out: layer === last ? out : x });
      clock.lap("output-norm");
    });
    clock.end();
    checkFinite(out, batch, seq, h);
    return out;
  }

  /** Frees the packed weights and the workspace. Idempotent; later calls throw. */
  [Symbol.dispose](): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const ops of this.#layers) {
      for (
        const op of [
          ops.qkv,
          ops.query,
          ops.key,
          ops.value,
          ops.attentionOutput,
          ops.intermediate,
          ops.output,
        ]
      ) {
        op?.[Symbol.dispose]();
      }
    }
    this.#layers = [];
    // Undefined when the constructor failed before building it.
    (this.#attention as Attention | undefined)?.[Symbol.dispose]();
    this.#workspace?.memory[Symbol.dispose]();
    this.#workspace = null;
  }

  #check(): void {
    if (this.#disposed) throw new Error("BertEncoder used after it was disposed");
  }
}

function align16(n: number): number {
  return Math.ceil(n / 16) * 16;
}

function copyTokens(source: TokenArray, target: Int32Array, rows: number, what: string): void {
  if (source == null || typeof (source as ArrayLike<number>).length !== "number") {
    throw new RangeError(`${what} must be an array of ${rows} integers, got ${typeof source}`);
  }
  if (source.length < rows) {
    throw new RangeError(`${what} needs ${rows} values (batch x seq), got ${source.length}`);
  }
  if (source instanceof Int32Array) {
    target.set(source.subarray(0, rows));
    return;
  }
  for (let i = 0; i < rows; i++) {
    const value = Number(source[i]);
    if (!Number.isInteger(value) || value < -(2 ** 31) || value >= 2 ** 31) {
      throw new RangeError(`${what}[${i}] must be an integer, got ${String(source[i])}`);
    }
    target[i] = value;
  }
}

function copyMask(source: TokenArray, target: Uint8Array, rows: number): void {
  if (source == null || typeof (source as ArrayLike<number>).length !== "number") {
    throw new RangeError(`attentionMask must be an array of ${rows} values, got ${typeof source}`);
  }
  if (source.length < rows) {
    throw new RangeError(`attentionMask needs ${rows} values (batch x seq), got ${source.length}`);
  }
  for (let i = 0; i < rows; i++) {
    const value = Number(source[i]);
    if (value !== 0 && value !== 1) {
      throw new RangeError(`attentionMask[${i}] must be 0 or 1, got ${String(source[i])}`);
    }
    target[i] = value;
  }
}

/**
 * Concatenates linear weights along the output axis (for the fused QKV projection), with their
 * int8 forms when every part has a compatible one, or returns null when they cannot be fused
 * (different input sizes, or int8 forms whose activation quantization differs).
 */
export function concatDense(parts: readonly DenseWeight[]): DenseWeight | null {
  if (parts.length === 0) return null;
  const inFeatures = parts[0].in;
  if (parts.some((p) => p.in !== inFeatures)) return null;
  const withQ = parts.filter((p) => p.quantized !== undefined).length;
  if (withQ !== 0 && withQ !== parts.length) return null;
  let quantized: QuantizedWeight | undefined;
  if (withQ === parts.length) {
    const q = concatQuantized(parts);
    if (q === null) return null;
    quantized = q;
  }
  const out = parts.reduce((s, p) => s + p.out, 0);
  // The fp32 arrays are concatenated on first use: a factory that never reads them (the packed
  // layers of a compiled model) allocates nothing.
  let concatenated: { weight: Float32Array; bias: Float32Array } | null = null;
  const concat = (): { weight: Float32Array; bias: Float32Array } => {
    if (concatenated !== null) return concatenated;
    const weight = new Float32Array(out * inFeatures);
    const bias = new Float32Array(out);
    let row = 0;
    for (const p of parts) {
      weight.set(p.weight, row * inFeatures);
      bias.set(p.bias, row);
      row += p.out;
    }
    concatenated = { weight, bias };
    return concatenated;
  };
  const fused: DenseWeight = {
    out,
    in: inFeatures,
    get weight(): Float32Array {
      return concat().weight;
    },
    get bias(): Float32Array {
      return concat().bias;
    },
  };
  if (quantized) fused.quantized = quantized;
  if (parts.every((p) => p.sparsity !== undefined)) {
    const mean = (key: keyof WeightSparsity): number =>
      parts.reduce((s, p) => s + p.sparsity![key] * p.out, 0) / out;
    fused.sparsity = { element: mean("element"), block4x1: mean("block4x1") };
  }
  return fused;
}

function concatQuantized(parts: readonly DenseWeight[]): QuantizedWeight | null {
  const first = parts[0].quantized!;
  const same = (p: DenseWeight): boolean => {
    const q = p.quantized!;
    return q.activation === first.activation && q.granularity === first.granularity &&
      q.activationQmax === first.activationQmax && q.inputScale === first.inputScale &&
      q.inputZeroPoint === first.inputZeroPoint;
  };
  if (!parts.every(same)) return null;
  const out = parts.reduce((s, p) => s + p.out, 0);
  const weight = new Int8Array(out * parts[0].in);
  const scale = new Float32Array(out);
  const anyZeroPoint = parts.some((p) => p.quantized!.zeroPoint !== null);
  const zeroPoint = anyZeroPoint ? new Int32Array(out) : null;
  let row = 0;
  for (const p of parts) {
    const q = p.quantized!;
    weight.set(q.weight, row * p.in);
    for (let o = 0; o < p.out; o++) {
      scale[row + o] = q.scale[q.scale.length === 1 ? 0 : o];
      if (zeroPoint && q.zeroPoint) {
        zeroPoint[row + o] = q.zeroPoint[q.zeroPoint.length === 1 ? 0 : o];
      }
    }
    row += p.out;
  }
  const fused: QuantizedWeight = { ...first, weight, scale, zeroPoint };
  return fused;
}

/**
 * The weight contract between the model loaders (ONNX, safetensors) and the encoder.
 *
 * All tensors are fp32. Linear weights are in torch layout: `[out, in]` row-major, i.e.
 * transposed relative to an ONNX MatMul initializer, which is `[in, out]`.
 *
 * @module
 */

/**
 * How an int8 model file gives its linears' input activations their ranges: per call from the
 * tensor (`"dynamic-u8"`, ONNX `DynamicQuantizeLinear`) or fixed by calibration (`"static"`).
 * (How the kernels quantize activations at run time is `ops/quantize.ts`'s
 * `ActivationQuantization`.)
 */
export type ActivationRanges = "dynamic-u8" | "static";

/** Where an int8 weight came from in an ONNX graph. */
export type QuantizedOnnxForm =
  | "MatMulInteger"
  | "DynamicQuantizeMatMul"
  | "MatMulIntegerToFloat"
  | "QLinearMatMul"
  | "QDQ";

/** An int8 linear weight: `w[o, i] = (weight[o * in + i] - zeroPoint[o]) * scale[o]`. */
export interface QuantizedWeight {
  /** `[out * in]` int8 values in torch layout (row `o` holds output feature `o`). */
  weight: Int8Array;
  /** `[out]` (per output channel) or `[1]` (per tensor). */
  scale: Float32Array;
  /**
   * `[out]` or `[1]` zero points in the int8 domain, or `null` when every zero point is 0
   * (symmetric). A u8 weight `q` with zero point `z` is stored as `q - 128` with `z - 128`.
   */
  zeroPoint: Int32Array | null;
  /** How the input activations are quantized. */
  activation: ActivationRanges;
  /**
   * Range of a dynamic activation quantization: one scale and zero point per tensor (ONNX
   * `DynamicQuantizeLinear`, the default when absent) or per token (row).
   */
  granularity?: "per-tensor" | "per-token";
  /** Largest activation code: 255 (u8, the default when absent) or 127 (u7). */
  activationQmax?: number;
  /** Input scale of a `"static"` activation. */
  inputScale?: number;
  /** Input zero point (u8) of a `"static"` activation. */
  inputZeroPoint?: number;
  /** The ONNX form the weight was imported from, when it came from a quantized graph. */
  form?: QuantizedOnnxForm;
}

/** Measured sparsity of a linear weight. */
export interface WeightSparsity {
  /** Fraction of weights that are exactly zero. */
  element: number;
  /**
   * Fraction of 4x1 blocks (4 consecutive output channels x 1 input channel) that are all
   * zero. When `out` is not a multiple of 4, the last block of a column has fewer rows.
   */
  block4x1: number;
}

/** Where a linear weight lives in its ONNX file. */
export interface WeightInitializer {
  /** Name of the graph initializer. */
  name: string;
  /**
   * `true` when the initializer holds the torch `[out, in]` layout (a MatMul weight behind a
   * Transpose, or Gemm with `transB = 1`); `false` for the ONNX MatMul `[in, out]` layout.
   */
  transposed: boolean;
}

/** Architecture hyper-parameters of a BERT-family encoder. */
export interface BertConfig {
  /** `"distilbert"` has no token type embeddings and no pooler. */
  modelType: "bert" | "distilbert";
  /** Rows of the word embedding table. */
  vocabSize: number;
  /** Hidden size H. */
  hiddenSize: number;
  /** Number of encoder layers. */
  numLayers: number;
  /** Attention heads; head size is `hiddenSize / numHeads`. */
  numHeads: number;
  /** Width of the feed-forward layer. */
  intermediateSize: number;
  /** Rows of the position embedding table (the longest sequence). */
  maxPositionEmbeddings: number;
  /** Rows of the token type table; 0 for DistilBERT. */
  typeVocabSize: number;
  /** LayerNorm epsilon (each {@linkcode NormWeight} carries its own too). */
  layerNormEps: number;
  /** `"gelu"` is the exact erf form, `"gelu_tanh"` the tanh approximation. */
  hiddenAct: "gelu" | "gelu_tanh";
  /** Token id used for padding. */
  padTokenId: number;
}

/** A linear layer `y = x W^T + b` with `W` in torch `[out, in]` row-major layout. */
export interface DenseWeight {
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** `[out * in]`, row `o` holds the weights of output feature `o`. */
  weight: Float32Array;
  /** `[out]`. */
  bias: Float32Array;
  /** The int8 form, when the model was quantized (`weight` then holds its dequantized values). */
  quantized?: QuantizedWeight;
  /** Measured element and 4x1-block sparsity (set by the ONNX importer). */
  sparsity?: WeightSparsity;
  /** The ONNX initializer holding this weight (set by the ONNX importer). */
  initializer?: WeightInitializer;
}

/** LayerNorm over the last axis: `(x - mean) / sqrt(var + eps) * gamma + beta`. */
export interface NormWeight {
  /** `[hidden]`. */
  gamma: Float32Array;
  /** `[hidden]`. */
  beta: Float32Array;
  /** Epsilon added to the variance. */
  eps: number;
}

/** One post-LayerNorm transformer layer. */
export interface BertLayerWeights {
  /** Query projection `[H, H]`. */
  query: DenseWeight;
  /** Key projection `[H, H]`. */
  key: DenseWeight;
  /** Value projection `[H, H]`. */
  value: DenseWeight;
  /** Attention output projection `[H, H]`. */
  attentionOutput: DenseWeight;
  /** LayerNorm after the attention residual add. */
  attentionNorm: NormWeight;
  /** Feed-forward up projection `[I, H]`, followed by the activation. */
  intermediate: DenseWeight;
  /** Feed-forward down projection `[H, I]`. */
  output: DenseWeight;
  /** LayerNorm after the feed-forward residual add. */
  outputNorm: NormWeight;
}

/** What one ONNX graph output holds. */
export type OutputKind =
  | "last_hidden_state"
  | "pooler_output"
  | "logits"
  | "start_logits"
  | "end_logits";

/** A task head on top of the encoder. */
export interface HeadWeights {
  /**
   * `"classification"`: on the pooled `[CLS]` vector (the tanh pooler for BERT; for DistilBERT
   * the `pre_classifier` + ReLU in {@linkcode BertWeights.preClassifier}).
   * `"question-answering"`: per token, `out = 2` (start, end logits).
   * `"token-classification"`: per token.
   */
  kind: "classification" | "question-answering" | "token-classification";
  /** The final projection to `out` logits. */
  dense: DenseWeight;
  /** Label names by index, where known (config.json `id2label`). */
  labels?: string[];
}

/** Everything needed to run a BERT-family encoder (and its optional head). */
export interface BertWeights {
  /** Hyper-parameters. */
  config: BertConfig;
  /** `[vocabSize * hiddenSize]`. */
  wordEmbeddings: Float32Array;
  /** `[maxPositionEmbeddings * hiddenSize]`; position `p` of a sequence uses row `p`. */
  positionEmbeddings: Float32Array;
  /** `[typeVocabSize * hiddenSize]`, or `null` for DistilBERT. */
  tokenTypeEmbeddings: Float32Array | null;
  /** LayerNorm after the embedding sum. */
  embeddingNorm: NormWeight;
  /** Encoder layers, first to last. */
  layers: BertLayerWeights[];
  /** The BERT tanh pooler on the `[CLS]` token, if present. */
  pooler: DenseWeight | null;
  /** DistilBERT sequence classification: `pre_classifier` + ReLU on `[CLS]`, if present. */
  preClassifier?: DenseWeight | null;
  /** Task head, if present. */
  head: HeadWeights | null;
  /**
   * Value the attention mask adds to the scores of padded keys, as found in the ONNX graph
   * (e.g. -10000 or the fp32 minimum). Informational; absent for safetensors.
   */
  attentionMaskValue?: number;
  /** Where the weights came from. */
  source: {
    /** File format. */
    format: "onnx" | "safetensors";
    /** The `.onnx` or `.safetensors` file. */
    path: string;
    /** ONNX graph output names and what they are (ONNX only). */
    outputs?: { name: string; kind: OutputKind }[];
    /** ONNX graph input names in graph order (ONNX only). */
    inputs?: string[];
    /** Tokenizer file next to the weights, if one was found. */
    tokenizer?: string;
  };
}

/** The six linear weights of every encoder layer, layer by layer (Q, K, V, attention output,
 * intermediate, output). */
export function encoderLinears(w: BertWeights): DenseWeight[] {
  return w.layers.flatMap((l) => [
    l.query,
    l.key,
    l.value,
    l.attentionOutput,
    l.intermediate,
    l.output,
  ]);
}

/** Number of fp32 parameters of a set of weights (embeddings, layers, pooler, head). */
export function parameterCount(w: BertWeights): number {
  const dense = (d: DenseWeight | null | undefined): number =>
    d ? d.weight.length + d.bias.length : 0;
  const norm = (n: NormWeight): number => n.gamma.length + n.beta.length;
  let total = w.wordEmbeddings.length + w.positionEmbeddings.length +
    (w.tokenTypeEmbeddings?.length ?? 0) + norm(w.embeddingNorm);
  for (const l of w.layers) {
    total += dense(l.query) + dense(l.key) + dense(l.value) + dense(l.attentionOutput) +
      norm(l.attentionNorm) + dense(l.intermediate) + dense(l.output) + norm(l.outputNorm);
  }
  return total + dense(w.pooler) + dense(w.preClassifier) + dense(w.head?.dense);
}

/**
 * Checks that every array of `w` has the length its config implies; throws an Error naming
 * the first tensor that does not.
 */
export function validateBertWeights(w: BertWeights): void {
  const c = w.config;
  const h = c.hiddenSize;
  const expect = (what: string, actual: number, wanted: number): void => {
    if (actual !== wanted) {
      throw new Error(`Invalid BERT weights: ${what} has ${actual} values, expected ${wanted}`);
    }
  };
  const dense = (what: string, d: DenseWeight, out: number, inn: number): void => {
    if (d.out !== out || d.in !== inn) {
      throw new Error(
        `Invalid BERT weights: ${what} is [${d.out}, ${d.in}], expected [${out}, ${inn}]`,
      );
    }
    expect(`${what}.weight`, d.weight.length, out * inn);
    expect(`${what}.bias`, d.bias.length, out);
  };
  const norm = (what: string, n: NormWeight): void => {
    expect(`${what}.gamma`, n.gamma.length, h);
    expect(`${what}.beta`, n.beta.length, h);
    if (!(n.eps > 0)) throw new Error(`Invalid BERT weights: ${what}.eps is ${n.eps}`);
  };
  if (h % c.numHeads !== 0) {
    throw new Error(
      `Invalid BERT config: hiddenSize ${h} is not a multiple of numHeads ${c.numHeads}`,
    );
  }
  expect("wordEmbeddings", w.wordEmbeddings.length, c.vocabSize * h);
  expect("positionEmbeddings", w.positionEmbeddings.length, c.maxPositionEmbeddings * h);
  expect("tokenTypeEmbeddings", w.tokenTypeEmbeddings?.length ?? 0, c.typeVocabSize * h);
  norm("embeddingNorm", w.embeddingNorm);
  expect("layers", w.layers.length, c.numLayers);
  w.layers.forEach((l, i) => {
    dense(`layers[${i}].query`, l.query, h, h);
    dense(`layers[${i}].key`, l.key, h, h);
    dense(`layers[${i}].value`, l.value, h, h);
    dense(`layers[${i}].attentionOutput`, l.attentionOutput, h, h);
    norm(`layers[${i}].attentionNorm`, l.attentionNorm);
    dense(`layers[${i}].intermediate`, l.intermediate, c.intermediateSize, h);
    dense(`layers[${i}].output`, l.output, h, c.intermediateSize);
    norm(`layers[${i}].outputNorm`, l.outputNorm);
  });
  if (w.pooler) dense("pooler", w.pooler, h, h);
  if (w.preClassifier) dense("preClassifier", w.preClassifier, h, h);
  if (w.head) dense("head.dense", w.head.dense, w.head.dense.out, h);
}

/** Converts IEEE half-precision bit patterns to fp32. */
export function float16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Float32Array(bits.length);
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i];
    const sign = b & 0x8000 ? -1 : 1;
    const exp = (b >> 10) & 0x1f;
    const frac = b & 0x3ff;
    if (exp === 0) out[i] = sign * frac * 2 ** -24;
    else if (exp === 0x1f) out[i] = frac ? NaN : sign * Infinity;
    else out[i] = sign * (1 + frac / 1024) * 2 ** (exp - 15);
  }
  return out;
}

/** Converts bfloat16 bit patterns to fp32 (exact: bf16 is the top half of fp32). */
export function bfloat16ToFloat32(bits: Uint16Array): Float32Array {
  const out = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) out[i] = bits[i] << 16;
  return new Float32Array(out.buffer);
}

/**
 * Transposes a row-major `[rows, cols]` matrix into a new `[cols, rows]` one of the same type,
 * in cache tiles of `tile` x `tile`. Used to turn an ONNX MatMul `[in, out]` initializer into
 * the torch `[out, in]` layout ({@linkcode transpose2d}, `transposeInt8`).
 */
export function transposeMatrix<T extends Float32Array | Int8Array>(
  src: T,
  rows: number,
  cols: number,
  tile = 32,
): T {
  if (src.length !== rows * cols) {
    throw new RangeError(`Cannot transpose ${src.length} values as [${rows}, ${cols}]`);
  }
  const dst = new (src.constructor as new (n: number) => T)(src.length);
  for (let r0 = 0; r0 < rows; r0 += tile) {
    const r1 = Math.min(rows, r0 + tile);
    for (let c0 = 0; c0 < cols; c0 += tile) {
      const c1 = Math.min(cols, c0 + tile);
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) dst[c * rows + r] = src[r * cols + c];
      }
    }
  }
  return dst;
}

/** {@linkcode transposeMatrix} of an fp32 matrix. */
export function transpose2d(src: Float32Array, rows: number, cols: number): Float32Array {
  return transposeMatrix(src, rows, cols, 32);
}

/**
 * Imports a BERT-family encoder from an ONNX file by recognising the graph pattern, not by
 * initializer names (real exports call weights `onnx::MatMul_123`).
 *
 * The walk starts at the `Gather` of `input_ids` in the word embedding table and follows the
 * data flow: embedding sum (word + position + token type) and LayerNorm, then per layer the
 * Q/K/V projections (told apart by where they enter the attention products), the scaled and
 * masked softmax, the context projection, residual adds and LayerNorms, the feed-forward block
 * and its GELU, until the hidden state reaches the graph output or a task head.
 *
 * Recognised forms: decomposed LayerNorm (ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add)
 * and fused `LayerNormalization`; MatMul + Add linears (weight maybe behind a Transpose) and
 * Gemm; eager attention (Div or Mul scale after Q K^T, or DistilBERT's scaled Q) and torch's
 * SDPA decomposition (sqrt-scale on Q and K^T computed from the shape); `(1 - mask) * c` and
 * `Where` masks; Erf GELU, tanh GELU, `Gelu`, `FastGelu`, `BiasGelu` nodes; DistilBERT (no token
 * types); tanh pooler, DistilBERT pre-classifier, classification / token-classification /
 * question-answering heads. Anything else fails with the node name, its op type and what was
 * expected.
 *
 * Quantized graphs (ONNX Runtime's dynamic `MatMulInteger` form, its contrib fusions, static
 * `QLinearMatMul` and QDQ) are first rewritten into fp32 by `onnx_dequantize.ts`; each linear
 * then carries its int8 form in `DenseWeight.quantized` next to the dequantized fp32 values.
 * Every linear records the initializer it came from and its measured sparsity.
 *
 * @module
 */

import { readOnnxModel } from "./onnx_proto.ts";
import { tensorSize, tensorToFloat32, tensorToNumbers } from "./onnx_tensors.ts";
import type { OnnxModel, OnnxNode, OnnxTensor } from "./onnx_types.ts";
import { GraphIndex, isFloat } from "./onnx_graph.ts";
import {
  LAYER_LINEARS,
  type LayerLinearName,
  LayerMatcher,
  type LinearValues,
  type NormMatch,
  type WalkTrace,
} from "./onnx_layer.ts";
import { dequantizeOnnxModel, type OnnxQuantRecord } from "./onnx_dequantize.ts";
import { recordSparsity, transposeInt8 } from "../encoder/quantized.ts";
import {
  type BertConfig,
  type BertLayerWeights,
  type BertWeights,
  type DenseWeight,
  type HeadWeights,
  type OutputKind,
  type QuantizedWeight,
  validateBertWeights,
} from "../encoder/weights.ts";

/** Options of {@linkcode importOnnx}. */
export interface ImportOnnxOptions {
  /**
   * A Hugging Face `config.json` for pad token id, model type and labels. Default: the
   * `config.json` next to the ONNX file when there is one; `null` to ignore it.
   */
  configPath?: string | null;
}

/** The parts of a Hugging Face `config.json` the importer uses. */
export interface HfConfigHints {
  /** `model_type`. */
  model_type?: string;
  /** `pad_token_id`. */
  pad_token_id?: number;
  /** `id2label`. */
  id2label?: Record<string, string>;
  /** `hidden_size` (cross-checked). */
  hidden_size?: number;
  /** `num_attention_heads` (cross-checked). */
  num_attention_heads?: number;
  /** `n_heads` (DistilBERT, cross-checked). */
  n_heads?: number;
  /** `num_hidden_layers` (cross-checked). */
  num_hidden_layers?: number;
  /** `n_layers` (DistilBERT, cross-checked). */
  n_layers?: number;
}

const FUSED_ORT_OPS = new Set([
  "Attention",
  "MultiHeadAttention",
  "EmbedLayerNormalization",
  "SkipLayerNormalization",
  "SkipSimplifiedLayerNormalization",
  "FusedMatMul",
]);

/**
 * Reads an ONNX file (with its external data, if any) and imports the BERT-family encoder.
 *
 * @throws Error naming the file and, for an unrecognised graph, the node (name and op type)
 *   where matching failed and what was expected there.
 */
export async function importOnnx(
  path: string,
  options: ImportOnnxOptions = {},
): Promise<BertWeights> {
  return (await analyzeOnnx(path, options)).weights;
}

/**
 * Like {@linkcode importOnnx}, but returns the whole {@linkcode OnnxAnalysis} and the decoded
 * source model (used by the prune, quantize and evaluate tools).
 */
export async function analyzeOnnx(
  path: string,
  options: ImportOnnxOptions = {},
): Promise<OnnxAnalysis & { source: OnnxModel }> {
  const model = await readOnnxModel(path);
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  let hints: HfConfigHints | null = null;
  const configPath = options.configPath === undefined ? `${dir}/config.json` : options.configPath;
  if (configPath !== null) {
    try {
      hints = JSON.parse(await Deno.readTextFile(configPath)) as HfConfigHints;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound) || options.configPath) {
        throw new Error(`Cannot read config "${configPath}": ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
  }
  const analysis = analyzeOnnxModel(model, path, hints);
  analysis.weights.source.tokenizer = await findTokenizer(path) ?? undefined;
  return { ...analysis, source: model };
}

/**
 * Imports the encoder from an already decoded model (external data resolved).
 *
 * @param model The decoded model.
 * @param path Used in error messages and `source.path`.
 * @param hints Optional Hugging Face config values (pad token, labels, model type).
 */
export function importOnnxModel(
  model: OnnxModel,
  path: string,
  hints: HfConfigHints | null = null,
): BertWeights {
  return analyzeOnnxModel(model, path, hints).weights;
}

/** What {@linkcode analyzeOnnxModel} found besides the weights. */
export interface OnnxAnalysis {
  /** The imported weights. */
  weights: BertWeights;
  /**
   * The fp32 graph the weights were matched on: the model itself, or its dequantized rewrite
   * when the model was quantized. Value names below refer to this graph.
   */
  graph: OnnxModel;
  /** Whether the model was quantized. */
  quantized: boolean;
  /** The embedding LayerNorm output (input of layer 0). */
  embeddingOutput: string;
  /** Per encoder layer: its linears' values and its output (after the second LayerNorm). */
  layers: { linears: Record<LayerLinearName, LinearValues>; output: string }[];
}

/**
 * Imports the encoder and also reports the graph values of every layer and linear (used by
 * calibration: activations are read by adding these values as graph outputs).
 */
export function analyzeOnnxModel(
  model: OnnxModel,
  path: string,
  hints: HfConfigHints | null = null,
): OnnxAnalysis {
  const dq = dequantizeOnnxModel(model, path);
  const matcher = new Matcher(dq.model, path, hints);
  const weights = matcher.run();
  const dense = (d: DenseWeight | null | undefined): void => {
    if (!d) return;
    const rec = d.initializer ? dq.records.get(d.initializer.name) : undefined;
    if (rec) d.quantized = toTorchLayout(rec, d, path);
    recordSparsity(d);
  };
  for (const l of weights.layers) for (const k of LAYER_LINEARS) dense(l[k]);
  dense(weights.pooler);
  dense(weights.preClassifier);
  dense(weights.head?.dense);
  return {
    weights,
    graph: dq.model,
    quantized: dq.quantized,
    embeddingOutput: matcher.trace.embeddingOutput,
    layers: matcher.trace.layers,
  };
}

/** The torch-layout int8 form of a recorded ONNX weight. */
function toTorchLayout(rec: OnnxQuantRecord, d: DenseWeight, path: string): QuantizedWeight {
  const transposed = d.initializer!.transposed;
  // ONNX MatMul layout is [in, out] with per-channel scales on axis 1; behind a Transpose the
  // initializer is [out, in] with scales on axis 0.
  const outAxis = transposed ? 0 : 1;
  const [rows, cols] = rec.dims;
  if (rows * cols !== d.out * d.in || rec.dims[outAxis] !== d.out) {
    throw new Error(
      `Cannot import ONNX model "${path}": quantized weight "${
        d.initializer!.name
      }" has dims [${rec.dims}], expected the [${d.in}, ${d.out}] weight of its MatMul`,
    );
  }
  if (rec.scale.length > 1 && rec.axis !== outAxis) {
    throw new Error(
      `Cannot import ONNX model "${path}": quantized weight "${
        d.initializer!.name
      }" has per-input-channel scales (axis ${rec.axis}); only per-output-channel or per-tensor scales are supported`,
    );
  }
  const q: QuantizedWeight = {
    weight: transposed ? rec.values : transposeInt8(rec.values, rows, cols),
    scale: rec.scale,
    zeroPoint: rec.zeroPoint,
    activation: rec.activation,
    form: rec.form,
  };
  if (rec.granularity !== undefined) q.granularity = rec.granularity;
  if (rec.activationQmax !== undefined) q.activationQmax = rec.activationQmax;
  if (rec.inputScale !== undefined) q.inputScale = rec.inputScale;
  if (rec.inputZeroPoint !== undefined) q.inputZeroPoint = rec.inputZeroPoint;
  return q;
}

class Matcher {
  readonly #model: OnnxModel;
  readonly #path: string;
  readonly #hints: HfConfigHints | null;
  /** The graph's producers, consumers, constants and errors (`onnx_graph.ts`). */
  readonly #g: GraphIndex;
  /** The per-layer matching (`onnx_layer.ts`), with the hidden size and mask value found. */
  readonly #layers: LayerMatcher;

  constructor(model: OnnxModel, path: string, hints: HfConfigHints | null) {
    this.#model = model;
    this.#path = path;
    this.#hints = hints;
    this.#g = new GraphIndex(model, path);
    this.#layers = new LayerMatcher(this.#g);
  }

  /** Graph values found on the walk (see {@linkcode OnnxAnalysis}). */
  get trace(): WalkTrace {
    return this.#layers.trace;
  }

  // -------------------------------------------------------------------------------------------
  // The walk

  run(): BertWeights {
    this.#rejectUnsupportedOps();
    const emb = this.#embeddings();
    this.#layers.trace.embeddingOutput = emb.norm.out;
    const layers: BertLayerWeights[] = [];
    let x = emb.norm.out;
    let numHeads = 0;
    let act: BertConfig["hiddenAct"] | null = null;
    let intermediateSize = 0;
    for (let l = 0; l < 1000; l++) {
      const linears = this.#layers.linearConsumers(x);
      // One consumer is a task head (or a fused QKV projection, rejected in #layer).
      if (linears.length === 0) break;
      if (
        linears.length === 1 &&
        this.#g.weightDims(linears[0].inputs[1])?.[1] !== 3 * this.#layers.hidden
      ) {
        break;
      }
      const layer = this.#layers.layer(x, linears, l);
      if (numHeads && layer.numHeads !== numHeads) {
        this.#g.fail(
          layer.first,
          `expected ${numHeads} heads like layer 0, found ${layer.numHeads}`,
        );
      }
      if (act && layer.act !== act) {
        this.#g.fail(layer.first, `expected activation ${act} like layer 0, found ${layer.act}`);
      }
      numHeads = layer.numHeads;
      act = layer.act;
      intermediateSize = layer.weights.intermediate.out;
      layers.push(layer.weights);
      x = layer.out;
    }
    if (layers.length === 0) {
      this.#g.failAfter(x, "the Q/K/V MatMuls of encoder layer 0");
    }
    const tail = this.#tail(x);
    const hints = this.#hints;
    const typeVocabSize = emb.tokenType ? emb.tokenType.length / this.#layers.hidden : 0;
    const config: BertConfig = {
      modelType: hints?.model_type === "distilbert" || typeVocabSize === 0 ? "distilbert" : "bert",
      vocabSize: emb.word.length / this.#layers.hidden,
      hiddenSize: this.#layers.hidden,
      numLayers: layers.length,
      numHeads,
      intermediateSize,
      maxPositionEmbeddings: emb.position.length / this.#layers.hidden,
      typeVocabSize,
      layerNormEps: emb.norm.norm.eps,
      hiddenAct: act!,
      padTokenId: hints?.pad_token_id ?? 0,
    };
    this.#crossCheck(config);
    if (tail.head && hints?.id2label) {
      const labels = Array.from(
        { length: tail.head.dense.out },
        (_, i) => hints.id2label![String(i)] ?? `LABEL_${i}`,
      );
      tail.head.labels = labels;
    }
    const weights: BertWeights = {
      config,
      wordEmbeddings: emb.word,
      positionEmbeddings: emb.position,
      tokenTypeEmbeddings: emb.tokenType,
      embeddingNorm: emb.norm.norm,
      layers,
      pooler: tail.pooler,
      preClassifier: tail.preClassifier,
      head: tail.head,
      attentionMaskValue: this.#layers.maskValue,
      source: {
        format: "onnx",
        path: this.#path,
        outputs: tail.outputs,
        inputs: this.#model.graph.inputs.filter((i) => this.#g.graphInputs.has(i.name)).map((i) =>
          i.name
        ),
      },
    };
    validateBertWeights(weights);
    return weights;
  }

  #crossCheck(c: BertConfig): void {
    const h = this.#hints;
    if (!h) return;
    const check = (name: string, hint: number | undefined, actual: number): void => {
      if (hint !== undefined && hint !== actual) {
        throw new Error(
          `ONNX model "${this.#path}" does not match its config.json: ${name} is ${hint} there but the graph has ${actual}`,
        );
      }
    };
    check("hidden_size", h.hidden_size, c.hiddenSize);
    check("num_attention_heads", h.num_attention_heads ?? h.n_heads, c.numHeads);
    check("num_hidden_layers", h.num_hidden_layers ?? h.n_layers, c.numLayers);
  }

  #rejectUnsupportedOps(): void {
    const nodes = this.#model.graph.nodes;
    const fused = nodes.find((n) => FUSED_ORT_OPS.has(n.opType));
    if (fused) {
      this.#g.fail(
        fused,
        "this graph was fused by the ONNX Runtime transformer optimizer, which is not supported; use the plain export",
      );
    }
  }

  #embeddings(): {
    word: Float32Array;
    position: Float32Array;
    tokenType: Float32Array | null;
    norm: NormMatch;
  } {
    const isTableGather = (n: OnnxNode, ids: string): boolean => {
      if (n.opType !== "Gather" || n.inputs[1] !== ids) return false;
      if (this.#g.attrInt(n, "axis", 0) !== 0) return false;
      const t = this.#g.constTensor(n.inputs[0]);
      return t !== null && t.dims.length === 2 && isFloat(t.dataType);
    };
    let idsName = "input_ids";
    if (!this.#g.graphInputs.has(idsName)) {
      const candidates = [...this.#g.graphInputs].filter((i) =>
        (this.#g.consumers.get(i) ?? []).some((n) => isTableGather(n, i))
      );
      if (candidates.length !== 1) {
        this.#g.fail(
          null,
          `expected a graph input "input_ids" (inputs: ${[...this.#g.graphInputs].join(", ")})`,
        );
      }
      idsName = candidates[0];
    }
    const wordGather = (this.#g.consumers.get(idsName) ?? []).find((n) =>
      isTableGather(n, idsName)
    );
    if (!wordGather) {
      this.#g.failAfter(idsName, "a Gather from a constant 2-D word embedding table");
    }
    const wordTable = this.#g.constTensor(wordGather.inputs[0])!;
    this.#layers.hidden = wordTable.dims[1];
    const h = this.#layers.hidden;
    // Follow the Add chain to the sum that feeds the LayerNorm.
    let sum = wordGather.outputs[0];
    for (let i = 0; i < 8; i++) {
      const next = this.#g.next(sum);
      if (next.length === 1 && next[0].opType === "Add") sum = next[0].outputs[0];
      else break;
    }
    const leaves: string[] = [];
    const collect = (v: string, depth: number): void => {
      const p = this.#g.producer.get(v);
      if (p?.opType === "Add" && depth < 8) {
        collect(p.inputs[0], depth + 1);
        collect(p.inputs[1], depth + 1);
      } else {
        leaves.push(v);
      }
    };
    collect(sum, 0);
    let position: Float32Array | null = null;
    let tokenType: Float32Array | null = null;
    let pending: { table: OnnxTensor; gather: OnnxNode } | null = null;
    for (const leaf of leaves) {
      if (leaf === wordGather.outputs[0]) continue;
      const g = this.#g.producer.get(leaf);
      const table = g?.opType === "Gather" ? this.#g.constTensor(g.inputs[0]) : null;
      if (!g || !table || table.dims.length !== 2 || table.dims[1] !== h) {
        this.#g.fail(
          g ?? this.#g.producer.get(sum) ?? null,
          `expected the embedding sum to add Gathers from [rows, ${h}] tables (word, position, token type), found "${leaf}"`,
        );
      }
      const { inputs, ops } = this.#g.inputsReaching(g.inputs[1]);
      if (ops.has("CumSum")) {
        this.#g.fail(g, "RoBERTa-style position ids (CumSum over the mask) are not supported");
      }
      if ([...inputs].some((i) => i.includes("token_type"))) {
        tokenType = tensorToFloat32(table);
      } else if (inputs.has("input_ids") || inputs.has(idsName)) {
        // Positions computed from the input shape (Shape -> Slice of position_ids / Range).
        position = this.#positionTable(g, table);
      } else if ([...inputs].some((i) => i.includes("position"))) {
        position = tensorToFloat32(table);
      } else {
        pending = { table, gather: g };
      }
    }
    if (pending) {
      const values = this.#g.evalConst(pending.gather.inputs[1]);
      if (position === null && values === null) {
        position = this.#positionTable(pending.gather, pending.table);
      } else if (tokenType === null && values !== null && values.every((v) => v === 0)) {
        tokenType = tensorToFloat32(pending.table);
      } else {
        this.#g.fail(pending.gather, "expected position or token type ids as Gather indices");
      }
    }
    if (position === null) {
      this.#g.failAfter(sum, "an Add of the position embeddings (Gather from the position table)");
    }
    const norm = this.#layers.layerNorm(sum, "embedding");
    return { word: tensorToFloat32(wordTable), position, tokenType, norm };
  }

  #positionTable(gather: OnnxNode, table: OnnxTensor): Float32Array {
    // When the indices slice a constant position_ids buffer, it must be 0, 1, 2, ...
    const p = this.#g.producer.get(gather.inputs[1]);
    if (p?.opType === "Slice") {
      const src = this.#g.constTensor(p.inputs[0]);
      if (src && tensorSize(src) <= 1 << 16) {
        const ids = tensorToNumbers(src);
        if (!ids.every((v, i) => v === i)) {
          this.#g.fail(p, "expected position ids 0, 1, 2, ... in the sliced position_ids constant");
        }
      }
    }
    return tensorToFloat32(table);
  }

  /** Graph outputs, pooler and head after the last layer. */
  #tail(x: string): {
    pooler: DenseWeight | null;
    preClassifier: DenseWeight | null;
    head: HeadWeights | null;
    outputs: { name: string; kind: OutputKind }[];
  } {
    const outputs: { name: string; kind: OutputKind }[] = [];
    const graphOutputs = new Set(this.#model.graph.outputs.map((o) => o.name));
    let pooler: DenseWeight | null = null;
    let preClassifier: DenseWeight | null = null;
    let head: HeadWeights | null = null;
    const h = this.#layers.hidden;
    const aliasOutput = (v: string, kind: OutputKind): boolean => {
      if (graphOutputs.has(v)) {
        outputs.push({ name: v, kind });
        return true;
      }
      const id = this.#g.next(v).find((n) =>
        n.opType === "Identity" && graphOutputs.has(n.outputs[0])
      );
      if (id) outputs.push({ name: id.outputs[0], kind });
      return id !== undefined;
    };
    aliasOutput(x, "last_hidden_state");
    for (const n of this.#g.next(x)) {
      if (n.opType === "Identity" && graphOutputs.has(n.outputs[0])) continue;
      if (n.opType === "Gather" || n.opType === "Slice") {
        // [CLS] token: Gather(x, 0, axis=1) or Slice [0:1] on axis 1 (+ Squeeze).
        let cls = n.outputs[0];
        if (n.opType === "Gather") {
          if (this.#g.attrInt(n, "axis", 0) !== 1 || this.#g.scalar(n.inputs[1]) !== 0) {
            this.#g.fail(n, "expected Gather of token 0 on axis 1 (the [CLS] token)");
          }
        } else {
          const sq = this.#g.next(cls).find((m) => m.opType === "Squeeze");
          if (!sq) this.#g.failAfter(cls, "Squeeze of the [CLS] token slice");
          cls = sq.outputs[0];
        }
        const lin = this.#layers.linearConsumers(cls);
        if (lin.length !== 1) this.#g.failAfter(cls, "the pooler / pre-classifier dense layer");
        const dense = this.#layers.linear(lin[0], cls);
        if (dense.dense.out !== h) {
          this.#g.fail(dense.node, `expected a [${h}, ${h}] pooler weight`);
        }
        const act = this.#g.next(dense.out);
        if (act.length !== 1 || (act[0].opType !== "Tanh" && act[0].opType !== "Relu")) {
          this.#g.failAfter(dense.out, "Tanh (BERT pooler) or Relu (DistilBERT pre-classifier)");
        }
        const pooled = act[0].outputs[0];
        if (act[0].opType === "Tanh") {
          pooler = dense.dense;
          aliasOutput(pooled, "pooler_output");
        } else {
          preClassifier = dense.dense;
        }
        const cl = this.#layers.linearConsumers(pooled);
        if (cl.length === 1) {
          const c = this.#layers.linear(cl[0], pooled);
          head = { kind: "classification", dense: c.dense };
          if (!aliasOutput(c.out, "logits")) {
            this.#g.failAfter(c.out, "the classification logits graph output");
          }
        } else if (act[0].opType === "Relu") {
          this.#g.failAfter(pooled, "the classifier after the pre-classifier");
        }
        continue;
      }
      if ((n.opType === "MatMul" || n.opType === "Gemm") && this.#g.isWeight(n.inputs[1])) {
        const c = this.#layers.linear(n, x);
        if (aliasOutput(c.out, "logits")) {
          head = { kind: "token-classification", dense: c.dense };
          continue;
        }
        const split = this.#g.next(c.out);
        if (c.dense.out === 2 && split.length === 1 && split[0].opType === "Split") {
          head = { kind: "question-answering", dense: c.dense };
          const kinds: OutputKind[] = ["start_logits", "end_logits"];
          split[0].outputs.forEach((o, i) => {
            const sq = this.#g.next(o).find((m) => m.opType === "Squeeze");
            if (!sq || !aliasOutput(sq.outputs[0], kinds[i])) {
              this.#g.failAfter(o, `Squeeze to the ${kinds[i]} graph output`);
            }
          });
          continue;
        }
        this.#g.failAfter(c.out, "a logits graph output or a Split into start/end logits");
      }
      this.#g.fail(
        n,
        "expected the last hidden state to go to the graph output, a [CLS] pooler or a classifier MatMul",
      );
    }
    if (outputs.length === 0) {
      this.#g.failAfter(x, "the last hidden state or a task head as a graph output");
    }
    return { pooler, preClassifier, head, outputs };
  }
}

/**
 * The tokenizer beside a model file: `<stem>-tokenizer.json` or `<stem>.tokenizer.json` (as the
 * langchain4j jars ship them), else `tokenizer.json` in the same folder; null when none exists.
 */
export async function findTokenizer(modelPath: string): Promise<string | null> {
  const slash = modelPath.lastIndexOf("/");
  const dir = slash >= 0 ? modelPath.slice(0, slash) || "/" : ".";
  const file = modelPath.slice(slash + 1);
  const stem = file.includes(".") ? file.slice(0, file.lastIndexOf(".")) : file;
  for (const candidate of [`${stem}-tokenizer.json`, `${stem}.tokenizer.json`, "tokenizer.json"]) {
    try {
      if ((await Deno.stat(`${dir}/${candidate}`)).isFile) return `${dir}/${candidate}`;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return null;
}

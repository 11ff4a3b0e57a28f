/**
 * Loads a Hugging Face model folder (`config.json` + `model.safetensors`, or a sharded
 * `model.safetensors.index.json`, + `tokenizer.json`) of a BERT-layout encoder (BERT, MiniLM,
 * bge, e5, ...) or DistilBERT into {@linkcode BertWeights}.
 *
 * Tensor names are the torch module paths, with or without the `bert.` / `distilbert.`
 * prefix of task models; old checkpoints' LayerNorm `gamma`/`beta` names are accepted.
 *
 * @module
 */

import { exists } from "./fs.ts";
import { readSafetensors, type Safetensors, safeTensorToFloat32 } from "./safetensors.ts";
import {
  type BertConfig,
  type BertLayerWeights,
  type BertWeights,
  type DenseWeight,
  type HeadWeights,
  type NormWeight,
  validateBertWeights,
} from "../encoder/weights.ts";

/** The `config.json` fields this loader reads (BERT and DistilBERT spellings). */
export interface HfConfig {
  /** `bert`, `distilbert`, ... */
  model_type?: string;
  /** e.g. `["BertForSequenceClassification"]`. */
  architectures?: string[];
  /** Vocabulary size. */
  vocab_size?: number;
  /** BERT hidden size. */
  hidden_size?: number;
  /** BERT layers. */
  num_hidden_layers?: number;
  /** BERT heads. */
  num_attention_heads?: number;
  /** BERT feed-forward size. */
  intermediate_size?: number;
  /** Position table rows. */
  max_position_embeddings?: number;
  /** Token type table rows. */
  type_vocab_size?: number;
  /** LayerNorm epsilon. */
  layer_norm_eps?: number;
  /** Activation name. */
  hidden_act?: string;
  /** Padding token id. */
  pad_token_id?: number;
  /** Must be `absolute` when present. */
  position_embedding_type?: string;
  /** DistilBERT hidden size. */
  dim?: number;
  /** DistilBERT layers. */
  n_layers?: number;
  /** DistilBERT heads. */
  n_heads?: number;
  /** DistilBERT feed-forward size. */
  hidden_dim?: number;
  /** DistilBERT activation. */
  activation?: string;
  /** Label names by index. */
  id2label?: Record<string, string>;
}

/** Options of {@linkcode loadHfFolder}. */
export interface LoadHfFolderOptions {
  /** Safetensors file name inside the folder (default `model.safetensors`, or the index). */
  weightsFile?: string;
}

/**
 * Loads `config.json` and the safetensors weights of a Hugging Face folder.
 *
 * @throws Error naming the file on a missing/truncated/corrupt file, an unsupported model type
 *   or activation, or a missing or mis-shaped tensor.
 */
export async function loadHfFolder(
  dir: string,
  options: LoadHfFolderOptions = {},
): Promise<BertWeights> {
  const configPath = `${dir}/config.json`;
  let config: HfConfig;
  try {
    config = JSON.parse(await Deno.readTextFile(configPath)) as HfConfig;
  } catch (err) {
    throw new Error(`Cannot read Hugging Face config "${configPath}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  let files: string[];
  let weightsPath: string;
  if (options.weightsFile) {
    files = [options.weightsFile];
    weightsPath = `${dir}/${options.weightsFile}`;
  } else if (await exists(`${dir}/model.safetensors`)) {
    files = ["model.safetensors"];
    weightsPath = `${dir}/model.safetensors`;
  } else if (await exists(`${dir}/model.safetensors.index.json`)) {
    weightsPath = `${dir}/model.safetensors.index.json`;
    const index = JSON.parse(await Deno.readTextFile(weightsPath)) as {
      weight_map?: Record<string, string>;
    };
    files = [...new Set(Object.values(index.weight_map ?? {}))];
    if (files.length === 0) throw new Error(`Safetensors index "${weightsPath}" lists no files`);
  } else {
    throw new Error(
      `No model.safetensors (or model.safetensors.index.json) in "${dir}"; only safetensors weights are supported`,
    );
  }
  const shards: Safetensors[] = [];
  for (const file of files) {
    if (file.includes("..") || file.startsWith("/")) {
      throw new Error(`Safetensors shard name "${file}" must be a file inside "${dir}"`);
    }
    shards.push(await readSafetensors(`${dir}/${file}`));
  }
  const weights = bertWeightsFromSafetensors(shards, config, weightsPath);
  if (await exists(`${dir}/tokenizer.json`)) weights.source.tokenizer = `${dir}/tokenizer.json`;
  return weights;
}

function activation(name: string | undefined, label: string): BertConfig["hiddenAct"] {
  switch (name ?? "gelu") {
    case "gelu":
      return "gelu";
    case "gelu_new":
    case "gelu_pytorch_tanh":
    case "gelu_fast":
      return "gelu_tanh";
    default:
      throw new Error(
        `Unsupported activation "${name}" in "${label}": expected gelu, gelu_new or gelu_pytorch_tanh`,
      );
  }
}

/**
 * Builds {@linkcode BertWeights} from parsed safetensors shards and a `config.json` object.
 *
 * @param shards One or more parsed files (sharded checkpoints).
 * @param hf The `config.json` contents.
 * @param path Recorded as `source.path` and used in error messages.
 */
export function bertWeightsFromSafetensors(
  shards: Safetensors[],
  hf: HfConfig,
  path: string,
): BertWeights {
  const all = new Map<string, Safetensors["tensors"] extends Map<string, infer T> ? T : never>();
  for (const s of shards) for (const [k, v] of s.tensors) all.set(k, v);
  const modelType = hf.model_type ?? "bert";
  const distil = modelType === "distilbert";
  // MiniLM, bge and e5 (English) checkpoints all declare model_type "bert".
  if (!distil && modelType !== "bert") {
    throw new Error(
      `Unsupported model_type "${modelType}" in the config of "${path}": expected bert or distilbert`,
    );
  }
  if (hf.position_embedding_type && hf.position_embedding_type !== "absolute") {
    throw new Error(
      `Unsupported position_embedding_type "${hf.position_embedding_type}" in the config of "${path}": expected absolute`,
    );
  }
  const num = (v: number | undefined, name: string): number => {
    if (!Number.isSafeInteger(v) || (v as number) <= 0) {
      throw new Error(`The config of "${path}" lacks a positive integer ${name} (got ${v})`);
    }
    return v as number;
  };
  const h = num(distil ? hf.dim : hf.hidden_size, distil ? "dim" : "hidden_size");
  const config: BertConfig = {
    modelType: distil ? "distilbert" : "bert",
    vocabSize: num(hf.vocab_size, "vocab_size"),
    hiddenSize: h,
    numLayers: num(
      distil ? hf.n_layers : hf.num_hidden_layers,
      distil ? "n_layers" : "num_hidden_layers",
    ),
    numHeads: num(
      distil ? hf.n_heads : hf.num_attention_heads,
      distil ? "n_heads" : "num_attention_heads",
    ),
    intermediateSize: num(
      distil ? hf.hidden_dim : hf.intermediate_size,
      distil ? "hidden_dim" : "intermediate_size",
    ),
    maxPositionEmbeddings: num(hf.max_position_embeddings, "max_position_embeddings"),
    typeVocabSize: distil ? 0 : hf.type_vocab_size ?? 2,
    layerNormEps: distil ? 1e-12 : hf.layer_norm_eps ?? 1e-12,
    hiddenAct: activation(distil ? hf.activation : hf.hidden_act, path),
    padTokenId: hf.pad_token_id ?? 0,
  };
  // Resolve the base-model prefix: "", "bert.", "distilbert." ...
  const base = distil ? "distilbert." : "bert.";
  const probe = "embeddings.word_embeddings.weight";
  const prefix = all.has(probe) ? "" : all.has(base + probe) ? base : null;
  if (prefix === null) {
    throw new Error(
      `Tensor "${probe}" (or "${base}${probe}") not found in "${path}" (found ${
        [...all.keys()].slice(0, 5).join(", ")
      }, ...)`,
    );
  }
  const get = (name: string, shape: number[]): Float32Array => {
    const t = all.get(name);
    if (t === undefined) throw new Error(`Tensor "${name}" not found in "${path}"`);
    if (t.shape.length !== shape.length || !t.shape.every((d, i) => d === shape[i])) {
      throw new Error(
        `Tensor "${name}" in "${path}" has shape [${t.shape.join(", ")}], expected [${
          shape.join(", ")
        }]`,
      );
    }
    return safeTensorToFloat32(t);
  };
  const dense = (name: string, out: number, inn: number): DenseWeight => ({
    out,
    in: inn,
    weight: get(`${name}.weight`, [out, inn]),
    bias: get(`${name}.bias`, [out]),
  });
  const norm = (name: string): NormWeight => {
    const old = all.has(`${name}.gamma`);
    return {
      gamma: get(`${name}.${old ? "gamma" : "weight"}`, [h]),
      beta: get(`${name}.${old ? "beta" : "bias"}`, [h]),
      eps: config.layerNormEps,
    };
  };
  const p = prefix;
  const inter = config.intermediateSize;
  const layers: BertLayerWeights[] = [];
  for (let l = 0; l < config.numLayers; l++) {
    if (distil) {
      const s = `${p}transformer.layer.${l}`;
      layers.push({
        query: dense(`${s}.attention.q_lin`, h, h),
        key: dense(`${s}.attention.k_lin`, h, h),
        value: dense(`${s}.attention.v_lin`, h, h),
        attentionOutput: dense(`${s}.attention.out_lin`, h, h),
        attentionNorm: norm(`${s}.sa_layer_norm`),
        intermediate: dense(`${s}.ffn.lin1`, inter, h),
        output: dense(`${s}.ffn.lin2`, h, inter),
        outputNorm: norm(`${s}.output_layer_norm`),
      });
    } else {
      const s = `${p}encoder.layer.${l}`;
      layers.push({
        query: dense(`${s}.attention.self.query`, h, h),
        key: dense(`${s}.attention.self.key`, h, h),
        value: dense(`${s}.attention.self.value`, h, h),
        attentionOutput: dense(`${s}.attention.output.dense`, h, h),
        attentionNorm: norm(`${s}.attention.output.LayerNorm`),
        intermediate: dense(`${s}.intermediate.dense`, inter, h),
        output: dense(`${s}.output.dense`, h, inter),
        outputNorm: norm(`${s}.output.LayerNorm`),
      });
    }
  }
  if (all.has(`${p}encoder.layer.${config.numLayers}.attention.self.query.weight`)) {
    throw new Error(
      `"${path}" has more layers than num_hidden_layers = ${config.numLayers} in its config`,
    );
  }
  const pooler = !distil && all.has(`${p}pooler.dense.weight`)
    ? dense(`${p}pooler.dense`, h, h)
    : null;
  const preClassifier = distil && all.has("pre_classifier.weight")
    ? dense("pre_classifier", h, h)
    : null;
  let head: HeadWeights | null = null;
  const arch = (hf.architectures ?? []).join(" ");
  const labelsOf = (n: number): string[] | undefined =>
    hf.id2label
      ? Array.from({ length: n }, (_, i) => hf.id2label![String(i)] ?? `LABEL_${i}`)
      : undefined;
  if (all.has("qa_outputs.weight")) {
    head = { kind: "question-answering", dense: dense("qa_outputs", 2, h) };
  } else if (all.has("classifier.weight")) {
    const n = all.get("classifier.weight")!.shape[0];
    const kind = arch.includes("TokenClassification") ? "token-classification" : "classification";
    head = { kind, dense: dense("classifier", n, h), labels: labelsOf(n) };
  }
  const weights: BertWeights = {
    config,
    wordEmbeddings: get(`${p}embeddings.word_embeddings.weight`, [config.vocabSize, h]),
    positionEmbeddings: get(`${p}embeddings.position_embeddings.weight`, [
      config.maxPositionEmbeddings,
      h,
    ]),
    tokenTypeEmbeddings: config.typeVocabSize > 0
      ? get(`${p}embeddings.token_type_embeddings.weight`, [config.typeVocabSize, h])
      : null,
    embeddingNorm: norm(`${p}embeddings.LayerNorm`),
    layers,
    pooler,
    preClassifier,
    head,
    source: { format: "safetensors", path },
  };
  validateBertWeights(weights);
  return weights;
}

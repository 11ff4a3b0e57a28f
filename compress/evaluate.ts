/**
 * Quality of a model variant (pruned, quantized) against its reference: cosine similarity of
 * pooled sentence embeddings per text, agreement of nearest-neighbour rankings on a labelled
 * retrieval set, topic accuracy of both, and the largest error of every encoder layer's output.
 *
 * Embeddings come from sparsebert's feature-extraction pipeline (`runtime: "sparsebert"`: int8
 * weights run on the int8 kernels, the rest on dense fp32) or from ONNX Runtime on the same
 * files (`runtime: "ort"`). Per-layer errors always come from ONNX Runtime (the graph values
 * after each layer's second LayerNorm, found by the importer). Models without a tokenizer
 * (generated test models) are fed seeded random token ids.
 *
 * @module
 */

import type { LinearFactory } from "../encoder/bert.ts";
import {
  captureActivations,
  type EncoderBatch,
  OrtModel,
  randomBatches,
  readTextsFile,
  tokenizeBatches,
} from "./calibrate.ts";
import { analyzeOnnx, type OnnxAnalysis } from "../formats/onnx_import.ts";
import { declaredEmbedding } from "../hub/load.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import { type DenseWeight, encoderLinears } from "../encoder/weights.ts";
import type { Int8Activations } from "../encoder/linear_kinds.ts";

/** One labelled text of a retrieval set. */
export interface RetrievalItem {
  /** The sentence. */
  text: string;
  /** Topic label. */
  topic: string;
  /** Queries are ranked against documents. */
  role: "query" | "document";
}

/** A labelled retrieval set (`data/retrieval_set.json`). */
export interface RetrievalSet {
  /** Items in file order. */
  items: RetrievalItem[];
}

/** The repository's retrieval set. */
export const DEFAULT_RETRIEVAL_SET: string = decodeURIComponent(
  new URL("../data/retrieval_set.json", import.meta.url).pathname,
);

/**
 * Reads texts for evaluation: a retrieval set (`{ "items": [{ text, topic, role }] }`), a JSON
 * array of strings, or a text file with one text per line (no labels: cosine only).
 *
 * @throws Error naming the file and the first bad item.
 */
export async function readEvaluationTexts(path: string): Promise<RetrievalSet | string[]> {
  const file = await readTextsFile(path);
  if ("lines" in file) {
    if (file.lines.length === 0) throw new Error(`Texts file "${path}" holds no texts`);
    return file.lines;
  }
  const parsed = file.json;
  if (Array.isArray(parsed)) {
    if (parsed.length === 0 || !parsed.every((t) => typeof t === "string" && t.trim())) {
      throw new Error(`Texts file "${path}" must be a non-empty array of non-empty strings`);
    }
    return parsed as string[];
  }
  const items = (parsed as { items?: unknown })?.items;
  if (!Array.isArray(items) || items.length === 0) {
    throw new Error(`Texts file "${path}" must hold an array of strings or an "items" array`);
  }
  items.forEach((item, i) => {
    const it = item as Partial<RetrievalItem>;
    if (
      typeof it?.text !== "string" || !it.text.trim() || typeof it.topic !== "string" ||
      (it.role !== "query" && it.role !== "document")
    ) {
      throw new Error(
        `Texts file "${path}": item ${i} needs "text", "topic" and "role" ("query" or "document")`,
      );
    }
  });
  return { items: items as RetrievalItem[] };
}

/** Pooled-embedding similarity of B to A. */
export interface CosineStats {
  /** Texts (or random sequences) compared. */
  count: number;
  /** Smallest cosine. */
  min: number;
  /** Mean cosine. */
  mean: number;
  /** Median cosine. */
  median: number;
  /** Texts under 0.99. */
  below099: number;
  /** Texts under 0.999. */
  below0999: number;
  /** The (up to) five lowest, worst first. */
  worst: { text: string; cosine: number }[];
}

/** Ranking agreement and label accuracy on a retrieval set. */
export interface RetrievalStats {
  /** Queries. */
  queries: number;
  /** Documents ranked per query. */
  documents: number;
  /** Fraction of queries whose top document under B is A's top document. */
  recallAt1: number;
  /** Mean |top-5 of B ∩ top-5 of A| / 5. */
  recallAt5: number;
  /** Topic accuracy of A: top-1 document has the query's topic; precision@5. */
  accuracyA: { top1: number; precisionAt5: number };
  /** The same for B. */
  accuracyB: { top1: number; precisionAt5: number };
}

/** Largest error of one encoder layer's output (B against A, same inputs). */
export interface LayerError {
  /** Layer index. */
  layer: number;
  /** max |B - A| over real tokens. */
  maxAbsError: number;
  /** mean |B - A| over real tokens. */
  meanAbsError: number;
  /** max |A| (scale of the values). */
  maxAbsReference: number;
}

/** The full report. */
export interface EvaluateReport {
  /** Reference model. */
  model: string;
  /** Variant. */
  variant: string;
  /** What computed the variant's embeddings. */
  runtime: "sparsebert" | "ort";
  /** What computed the reference's embeddings. */
  referenceRuntime: "sparsebert" | "ort";
  /** Texts per batch (dynamic per-tensor quantization depends on the batch). */
  batchSize: number;
  /** Kernels of the sparsebert runtime (per linear kind, counted), when used. */
  kernels?: Record<string, number>;
  /** Pooling used. */
  pooling: "mean" | "cls";
  /** Where the texts came from (a file, or "random tokens" for models without a tokenizer). */
  texts: string;
  /** Embedding similarity. */
  cosine: CosineStats;
  /** Retrieval metrics (labelled sets only). */
  retrieval: RetrievalStats | null;
  /** Per-layer errors (generated models, or when asked). */
  layers: LayerError[] | null;
  /** Sparsity and int8 facts of the variant's encoder linears. */
  variantInfo: {
    linears: number;
    int8: number;
    meanElementSparsity: number;
    meanBlockSparsity: number;
  };
}

/** Options of {@linkcode evaluate}. */
export interface EvaluateOptions {
  /** Texts: a retrieval set, plain texts, or a file path (default: the repository's set). */
  texts?: RetrievalSet | string[] | string;
  /** `auto` (default): from the model's pooling config, else `cls` for bge models, else mean. */
  pooling?: "mean" | "cls" | "auto";
  /**
   * `auto` (default): sparsebert's pipeline when the kernel library loads, else ONNX Runtime
   * (the report says which).
   */
  runtime?: "sparsebert" | "ort" | "auto";
  /**
   * Runtime of the reference model A (default: the same as `runtime`). Comparing a model to
   * itself with `runtime: "sparsebert"` and `referenceRuntime: "ort"` measures sparsebert
   * against ONNX Runtime on the same file.
   */
  referenceRuntime?: "sparsebert" | "ort";
  /**
   * Kernels of the sparsebert runtime: `auto` (default) runs int8 weights on the int8 kernels
   * and the rest on dense fp32; `fp32` runs everything on dense fp32 (dequantized weights).
   */
  kernels?: "auto" | "fp32";
  /**
   * Activation quantization of the int8 layers (`kernels: "auto"`): `"per-token"` (default) or
   * `"ort"`, ONNX Runtime's u8 per-tensor numerics for `quantize_dynamic` layers.
   */
  int8Activations?: Int8Activations;
  /** Per-layer output errors (default: only for models without a tokenizer). */
  layers?: boolean;
  /** Texts per batch (default 16). */
  batchSize?: number;
  /** Longest sequence in tokens; longer texts are truncated (default 128). */
  maxLength?: number;
  /** Random sequences for models without a tokenizer (default 16). */
  randomSequences?: number;
  /** Threads (ORT intra-op, or the kernel pool) (default 1). */
  threads?: number;
  /** Progress callback. */
  onProgress?: (phase: string, done: number, total: number) => void;
  /** Called with a note when `runtime: "auto"` falls back to ONNX Runtime. */
  onNote?: (line: string) => void;
}

/**
 * The pooling a model declares (sentence-transformers files beside it, or its registry entry),
 * else mean.
 */
export async function detectPooling(path: string): Promise<"mean" | "cls"> {
  const declared = await declaredEmbedding(path);
  if (declared === null) return "mean";
  if (declared.pooling === "mean" || declared.pooling === "cls") return declared.pooling;
  throw new Error(`"${path}" declares ${declared.pooling} pooling, which evaluate cannot run yet`);
}

/** Mean or [CLS] pooling of `[batch, seq, H]` with the mask, L2-normalised. */
export function poolEmbeddings(
  hidden: Float32Array,
  batch: EncoderBatch,
  pooling: "mean" | "cls",
): Float32Array[] {
  const [b, seq] = batch.shape;
  const h = hidden.length / (b * seq);
  const out: Float32Array[] = [];
  for (let i = 0; i < b; i++) {
    const v = new Float64Array(h);
    let n = 0;
    for (let t = 0; t < (pooling === "cls" ? 1 : seq); t++) {
      if (!batch.attentionMask[i * seq + t]) continue;
      n++;
      const off = (i * seq + t) * h;
      for (let k = 0; k < h; k++) v[k] += hidden[off + k];
    }
    let norm = 0;
    for (let k = 0; k < h; k++) norm += v[k] * v[k];
    norm = Math.sqrt(norm) || 1;
    out.push(Float32Array.from(v, (x) => x / norm));
    if (n === 0) throw new Error(`Sequence ${i} of the batch has no tokens`);
  }
  return out;
}

function dot(a: Float32Array, b: Float32Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function cosineStats(a: Float32Array[], b: Float32Array[], labels: string[]): CosineStats {
  const c = a.map((v, i) => {
    const d = dot(v, b[i]) / Math.sqrt(dot(v, v) * dot(b[i], b[i]));
    return Number.isFinite(d) ? d : 0;
  });
  const sorted = [...c].sort((x, y) => x - y);
  const order = c.map((_, i) => i).sort((x, y) => c[x] - c[y]);
  return {
    count: c.length,
    min: sorted[0],
    mean: c.reduce((s, x) => s + x, 0) / c.length,
    median: sorted[Math.floor(sorted.length / 2)],
    below099: c.filter((x) => x < 0.99).length,
    below0999: c.filter((x) => x < 0.999).length,
    worst: order.slice(0, 5).map((i) => ({ text: labels[i], cosine: c[i] })),
  };
}

/** Ranking agreement and topic accuracy from normalised embeddings of every item. */
export function retrievalStats(
  set: RetrievalSet,
  a: Float32Array[],
  b: Float32Array[],
): RetrievalStats {
  const queries = set.items.flatMap((it, i) => (it.role === "query" ? [i] : []));
  const docs = set.items.flatMap((it, i) => (it.role === "document" ? [i] : []));
  if (queries.length === 0 || docs.length < 5) {
    throw new Error(
      `A retrieval set needs queries and at least 5 documents, got ${queries.length} and ${docs.length}`,
    );
  }
  const rank = (emb: Float32Array[], q: number): number[] => {
    const scores = docs.map((d) => dot(emb[q], emb[d]));
    return docs.map((_, k) => k).sort((x, y) => scores[y] - scores[x] || x - y).map((k) => docs[k]);
  };
  let r1 = 0;
  let r5 = 0;
  const acc = { a: { top1: 0, p5: 0 }, b: { top1: 0, p5: 0 } };
  for (const q of queries) {
    const ra = rank(a, q);
    const rb = rank(b, q);
    if (ra[0] === rb[0]) r1++;
    const top5a = new Set(ra.slice(0, 5));
    r5 += rb.slice(0, 5).filter((d) => top5a.has(d)).length / 5;
    const topic = set.items[q].topic;
    for (const [key, r] of [["a", ra], ["b", rb]] as const) {
      if (set.items[r[0]].topic === topic) acc[key].top1++;
      acc[key].p5 += r.slice(0, 5).filter((d) => set.items[d].topic === topic).length / 5;
    }
  }
  const n = queries.length;
  return {
    queries: n,
    documents: docs.length,
    recallAt1: r1 / n,
    recallAt5: r5 / n,
    accuracyA: { top1: acc.a.top1 / n, precisionAt5: acc.a.p5 / n },
    accuracyB: { top1: acc.b.top1 / n, precisionAt5: acc.b.p5 / n },
  };
}

/**
 * A linear factory for evaluation: the dense int8 kernel for int8 weights (their own int8
 * values when symmetric), dense fp32 otherwise.
 */
async function int8AwareFactory(activations: Int8Activations): Promise<LinearFactory> {
  const { buildLinear } = await import("../encoder/linear_kinds.ts");
  return (weight: DenseWeight, spec) =>
    buildLinear(weight.quantized ? "dense-i8" : "dense-f32", weight, spec, activations);
}

interface Embedder {
  runtime: "sparsebert" | "ort";
  kernels?: Record<string, number>;
  embed(texts: string[]): Promise<Float32Array[]>;
  close(): Promise<void>;
}

async function sparsebertEmbedder(
  path: string,
  pooling: "mean" | "cls",
  options: EvaluateOptions,
): Promise<Embedder> {
  const { pipeline } = await import("../pipelines/pipeline.ts");
  const pipe = await pipeline("feature-extraction", path, {
    linear: options.kernels === "fp32"
      ? undefined
      : await int8AwareFactory(options.int8Activations ?? "per-token"),
    maxLength: options.maxLength ?? 128,
    batchSize: options.batchSize ?? 16,
    threads: options.threads ?? 1,
  });
  const kernels: Record<string, number> = {};
  for (const l of pipe.encoder.linears()) kernels[l.kind] = (kernels[l.kind] ?? 0) + 1;
  return {
    runtime: "sparsebert",
    kernels,
    async embed(texts) {
      const out = await pipe(texts, { pooling, normalize: true, truncation: true });
      const h = out.dims[1];
      return texts.map((_, i) => out.data.slice(i * h, (i + 1) * h));
    },
    close() {
      pipe.dispose();
      return Promise.resolve();
    },
  };
}

async function ortEmbedder(
  path: string,
  tokenizer: BertTokenizer,
  pooling: "mean" | "cls",
  options: EvaluateOptions,
): Promise<Embedder> {
  const session = await OrtModel.create(path, { threads: options.threads });
  const hiddenName = session.outputNames.find((n) => n === "last_hidden_state") ??
    session.outputNames[0];
  return {
    runtime: "ort",
    async embed(texts) {
      const out: Float32Array[] = [];
      const batches = tokenizeBatches(tokenizer, texts, {
        batchSize: options.batchSize ?? 16,
        maxLength: options.maxLength ?? 128,
      });
      for (const b of batches) {
        const r = await session.run(b, [hiddenName]);
        if (r[hiddenName].dims.length !== 3) {
          throw new Error(
            `Output "${hiddenName}" of "${path}" is [${
              r[hiddenName].dims
            }], expected [batch, seq, hidden]`,
          );
        }
        out.push(...poolEmbeddings(r[hiddenName].data, b, pooling));
      }
      return out;
    },
    close: () => session.release(),
  };
}

/** Whether the kernel library loads in this process. */
async function kernelsAvailable(): Promise<string | null> {
  try {
    const { kernels } = await import("../ffi/library.ts");
    kernels();
    return null;
  } catch (err) {
    return (err as Error).message.split("\n")[0];
  }
}

/** Per-layer output errors of B against A on the same batches (through ONNX Runtime). */
async function layerErrors(
  a: OnnxAnalysis,
  b: OnnxAnalysis,
  batches: EncoderBatch[],
  options: EvaluateOptions,
): Promise<{ layers: LayerError[]; pooledA: Float32Array[]; pooledB: Float32Array[] }> {
  if (a.layers.length !== b.layers.length) {
    throw new Error(`The models have ${a.layers.length} and ${b.layers.length} layers`);
  }
  const h = a.weights.config.hiddenSize;
  if (b.weights.config.hiddenSize !== h) {
    throw new Error(`The models have hidden sizes ${h} and ${b.weights.config.hiddenSize}`);
  }
  const outs = (x: OnnxAnalysis): string[] => x.layers.map((l) => l.output);
  const collect = async (x: OnnxAnalysis): Promise<Float32Array[][]> => {
    const perBatch: Float32Array[][] = [];
    await captureActivations(x.graph, outs(x), batches, options, (_batch, values) => {
      perBatch.push(outs(x).map((v) => values[v].data));
    });
    return perBatch;
  };
  const va = await collect(a);
  const vb = await collect(b);
  const layers: LayerError[] = a.layers.map((_, layer) => ({
    layer,
    maxAbsError: 0,
    meanAbsError: 0,
    maxAbsReference: 0,
  }));
  let tokens = 0;
  const pooledA: Float32Array[] = [];
  const pooledB: Float32Array[] = [];
  batches.forEach((batch, bi) => {
    const [nb, seq] = batch.shape;
    for (let t = 0; t < nb * seq; t++) {
      if (!batch.attentionMask[t]) continue;
      tokens++;
      for (let l = 0; l < layers.length; l++) {
        const x = va[bi][l];
        const y = vb[bi][l];
        const e = layers[l];
        for (let k = t * h; k < (t + 1) * h; k++) {
          const d = Math.abs(x[k] - y[k]);
          if (d > e.maxAbsError) e.maxAbsError = d;
          e.meanAbsError += d;
          const r = Math.abs(x[k]);
          if (r > e.maxAbsReference) e.maxAbsReference = r;
        }
      }
    }
    const last = layers.length - 1;
    pooledA.push(...poolEmbeddings(va[bi][last], batch, "mean"));
    pooledB.push(...poolEmbeddings(vb[bi][last], batch, "mean"));
  });
  for (const e of layers) e.meanAbsError /= tokens * h;
  return { layers, pooledA, pooledB };
}

function variantInfo(a: OnnxAnalysis): EvaluateReport["variantInfo"] {
  const linears = encoderLinears(a.weights);
  const mean = (f: (d: DenseWeight) => number): number =>
    linears.reduce((s, d) => s + f(d) * d.out * d.in, 0) /
    linears.reduce((s, d) => s + d.out * d.in, 0);
  return {
    linears: linears.length,
    int8: linears.filter((d) => d.quantized).length,
    meanElementSparsity: mean((d) => d.sparsity?.element ?? 0),
    meanBlockSparsity: mean((d) => d.sparsity?.block4x1 ?? 0),
  };
}

/**
 * Compares `variant` to `model` (both ONNX files of the same architecture).
 *
 * @throws Error naming the file when a model cannot be read or the two do not match.
 */
export async function evaluate(
  model: string,
  variant: string,
  options: EvaluateOptions = {},
): Promise<EvaluateReport> {
  const a = await analyzeOnnx(model);
  const b = await analyzeOnnx(variant);
  const ca = a.weights.config;
  const cb = b.weights.config;
  for (const k of ["hiddenSize", "numLayers", "vocabSize"] as const) {
    if (ca[k] !== cb[k]) {
      throw new Error(
        `Model "${model}" and variant "${variant}" differ in ${k}: ${ca[k]} vs ${cb[k]}`,
      );
    }
  }
  const tokenizerPath = a.weights.source.tokenizer ?? b.weights.source.tokenizer;
  const poolingOption = options.pooling ?? "auto";
  if (!["mean", "cls", "auto"].includes(poolingOption)) {
    throw new Error(`Invalid pooling "${poolingOption}": expected "mean", "cls" or "auto"`);
  }
  const pooling = poolingOption === "auto" ? await detectPooling(model) : poolingOption;
  const info = variantInfo(b);
  if (!tokenizerPath) {
    // Generated test model: random token ids, per-layer errors through ORT.
    const batches = randomBatches({
      vocabSize: ca.vocabSize,
      count: options.randomSequences ?? 16,
      seqLen: Math.min(32, ca.maxPositionEmbeddings),
    });
    const r = await layerErrors(a, b, batches, options);
    const labels = r.pooledA.map((_, i) => `random sequence ${i}`);
    return {
      model,
      variant,
      runtime: "ort",
      referenceRuntime: "ort",
      batchSize: options.batchSize ?? 8,
      pooling: "mean",
      texts: "random tokens",
      cosine: cosineStats(r.pooledA, r.pooledB, labels),
      retrieval: null,
      layers: r.layers,
      variantInfo: info,
    };
  }
  const source = options.texts ?? DEFAULT_RETRIEVAL_SET;
  const set = typeof source === "string" ? await readEvaluationTexts(source) : source;
  const texts = Array.isArray(set) ? set : set.items.map((it) => it.text);
  const tokenizer = await BertTokenizer.fromFile(tokenizerPath);
  let runtime = options.runtime ?? "auto";
  if (!["sparsebert", "ort", "auto"].includes(runtime)) {
    throw new Error(`Invalid runtime "${runtime}": expected "sparsebert", "ort" or "auto"`);
  }
  if (runtime === "auto") {
    const problem = await kernelsAvailable();
    if (problem !== null) {
      options.onNote?.(`kernel library unavailable (${problem}); using ONNX Runtime`);
    }
    runtime = problem === null ? "sparsebert" : "ort";
  }
  const referenceRuntime = options.referenceRuntime ?? runtime;
  if (referenceRuntime !== "sparsebert" && referenceRuntime !== "ort") {
    throw new Error(
      `Invalid reference runtime "${referenceRuntime}": expected "sparsebert" or "ort"`,
    );
  }
  const embedWith = async (
    path: string,
    rt: "sparsebert" | "ort",
  ): Promise<{ emb: Float32Array[]; e: Embedder }> => {
    const e = rt === "sparsebert"
      ? await sparsebertEmbedder(path, pooling, options)
      : await ortEmbedder(path, tokenizer, pooling, options);
    try {
      const step = options.batchSize ?? 16;
      const emb: Float32Array[] = [];
      for (let i = 0; i < texts.length; i += step) {
        options.onProgress?.(`embed ${path}`, i, texts.length);
        emb.push(...await e.embed(texts.slice(i, i + step)));
      }
      options.onProgress?.(`embed ${path}`, texts.length, texts.length);
      return { emb, e };
    } finally {
      await e.close();
    }
  };
  const ea = await embedWith(model, referenceRuntime);
  const eb = await embedWith(variant, runtime);
  let layers: LayerError[] | null = null;
  if (options.layers) {
    const batches = tokenizeBatches(tokenizer, texts.slice(0, 64), {
      batchSize: options.batchSize ?? 16,
      maxLength: options.maxLength ?? 128,
    });
    layers = (await layerErrors(a, b, batches, options)).layers;
  }
  const report: EvaluateReport = {
    model,
    variant,
    runtime: eb.e.runtime,
    referenceRuntime: ea.e.runtime,
    batchSize: options.batchSize ?? 16,
    pooling,
    texts: typeof source === "string" ? source : "given texts",
    cosine: cosineStats(ea.emb, eb.emb, texts),
    retrieval: Array.isArray(set) ? null : retrievalStats(set, ea.emb, eb.emb),
    layers,
    variantInfo: info,
  };
  if (eb.e.kernels) report.kernels = eb.e.kernels;
  return report;
}

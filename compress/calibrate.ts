/**
 * Calibration inputs and activation capture for the model tools (prune, quantize, evaluate).
 *
 * Activations are read by running the model's fp32 graph in ONNX Runtime (onnxruntime-node, the
 * project's reference runtime) with the wanted intermediate values added as graph outputs.
 * onnxruntime-node is imported lazily, so importing this module costs nothing until a session
 * is created.
 *
 * @module
 */

import type * as Ort from "onnxruntime-node";
import { readOnnxModel } from "../formats/onnx_proto.ts";
import { DataType, type OnnxModel } from "../formats/onnx_types.ts";
import { encodeOnnxModel } from "../formats/onnx_write.ts";
import type { BertTokenizer } from "../pipelines/tokenizer.ts";

/** One padded batch of encoder inputs, row-major `[batch, seq]`. */
export interface EncoderBatch {
  /** `[batch, seq]`. */
  shape: [number, number];
  /** Token ids. */
  inputIds: Int32Array;
  /** 1 for real tokens, 0 for padding. */
  attentionMask: Int32Array;
  /** Segment ids. */
  tokenTypeIds: Int32Array;
}

/** Options every compression pass that runs calibration batches through ONNX Runtime takes. */
export interface CalibrationRunOptions {
  /** ORT threads for calibration (default 1). */
  threads?: number;
  /** Progress callback (`done` of `total` steps of `phase`). */
  onProgress?: (phase: string, done: number, total: number) => void;
}

/** A float tensor read from a session. */
export interface FloatTensor {
  /** Values, row-major. */
  data: Float32Array;
  /** Shape. */
  dims: number[];
}

/**
 * Reads calibration or evaluation texts: a `.json` file holding an array of strings or a
 * retrieval set (`{ "items": [{ "text": ... }] }`), or any other file with one text per
 * non-empty line.
 *
 * @throws Error naming the file when it is missing, empty or malformed.
 */
export async function readTexts(path: string): Promise<string[]> {
  const file = await readTextsFile(path);
  let texts: string[];
  if ("json" in file) {
    const parsed = file.json;
    const items = Array.isArray(parsed) ? parsed : (parsed as { items?: unknown })?.items;
    if (!Array.isArray(items)) {
      throw new Error(
        `Texts file "${path}" must hold an array of strings or an object with an "items" array`,
      );
    }
    texts = items.map((item, i) => {
      const text = typeof item === "string" ? item : (item as { text?: unknown })?.text;
      if (typeof text !== "string" || text.trim() === "") {
        throw new Error(`Texts file "${path}": item ${i} is not a non-empty text`);
      }
      return text;
    });
  } else {
    texts = file.lines;
  }
  if (texts.length === 0) throw new Error(`Texts file "${path}" holds no texts`);
  return texts;
}

/**
 * A texts file read: a `.json` file's parsed value, or another file's non-empty lines (trimmed).
 *
 * @throws Error naming the file when it cannot be read or its JSON is malformed.
 */
export async function readTextsFile(
  path: string,
): Promise<{ json: unknown } | { lines: string[] }> {
  let raw: string;
  try {
    raw = await Deno.readTextFile(path);
  } catch (err) {
    throw new Error(`Cannot read texts file "${path}": ${(err as Error).message}`, { cause: err });
  }
  if (!path.endsWith(".json")) {
    return { lines: raw.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "") };
  }
  try {
    return { json: JSON.parse(raw) };
  } catch (err) {
    throw new Error(`Texts file "${path}" is not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
}

/** Options of {@linkcode tokenizeBatches}. */
export interface TokenizeBatchesOptions {
  /** Texts per batch (default 16). */
  batchSize?: number;
  /** Longest sequence; longer texts are truncated (default 128). */
  maxLength?: number;
}

/** Tokenizes texts into padded batches (texts over `maxLength` tokens are truncated). */
export function tokenizeBatches(
  tokenizer: BertTokenizer,
  texts: string[],
  options: TokenizeBatchesOptions = {},
): EncoderBatch[] {
  const batchSize = options.batchSize ?? 16;
  const maxLength = options.maxLength ?? 128;
  const out: EncoderBatch[] = [];
  for (let i = 0; i < texts.length; i += batchSize) {
    const b = tokenizer.encodeBatch(texts.slice(i, i + batchSize), {
      maxLength,
      truncation: true,
    });
    out.push({
      shape: b.shape,
      inputIds: b.inputIds,
      attentionMask: b.attentionMask,
      tokenTypeIds: b.tokenTypeIds,
    });
  }
  return out;
}

/** Options of {@linkcode randomBatches}. */
export interface RandomBatchesOptions {
  /** Number of sequences (default 8). */
  count?: number;
  /** Tokens per sequence (default 32). */
  seqLen?: number;
  /** Vocabulary size: ids are drawn from `[1, vocabSize)`. */
  vocabSize: number;
  /** PRNG seed (default 1). */
  seed?: number;
  /** Sequences per batch (default 8). */
  batchSize?: number;
}

/**
 * Seeded random token sequences of mixed lengths (for generated test models, which have no
 * tokenizer): sequence `i` has `seqLen - (i % 4) * seqLen / 8` real tokens, the rest padding.
 */
export function randomBatches(options: RandomBatchesOptions): EncoderBatch[] {
  const { vocabSize, count = 8, seqLen = 32, seed = 1, batchSize = 8 } = options;
  if (!Number.isInteger(vocabSize) || vocabSize < 2) {
    throw new RangeError(`Invalid vocabSize ${vocabSize}: expected an integer >= 2`);
  }
  let s = (seed * 2654435761) >>> 0 || 1;
  const next = (): number => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
  const out: EncoderBatch[] = [];
  for (let i0 = 0; i0 < count; i0 += batchSize) {
    const batch = Math.min(batchSize, count - i0);
    const inputIds = new Int32Array(batch * seqLen);
    const attentionMask = new Int32Array(batch * seqLen);
    for (let b = 0; b < batch; b++) {
      const len = Math.max(2, seqLen - ((i0 + b) % 4) * Math.floor(seqLen / 8));
      for (let t = 0; t < len; t++) {
        inputIds[b * seqLen + t] = 1 + (next() % (vocabSize - 1));
        attentionMask[b * seqLen + t] = 1;
      }
    }
    out.push({
      shape: [batch, seqLen],
      inputIds,
      attentionMask,
      tokenTypeIds: new Int32Array(batch * seqLen),
    });
  }
  return out;
}

/** Returns a copy of `model` whose graph also outputs `names` (as fp32 tensors). */
export function withGraphOutputs(model: OnnxModel, names: string[]): OnnxModel {
  const have = new Set(model.graph.outputs.map((o) => o.name));
  const produced = new Set(model.graph.nodes.flatMap((n) => n.outputs));
  const extra = [...new Set(names)].filter((n) => !have.has(n));
  for (const n of extra) {
    if (!produced.has(n)) throw new Error(`Graph value "${n}" is not produced by any node`);
  }
  return {
    ...model,
    graph: {
      ...model.graph,
      outputs: [
        ...model.graph.outputs,
        ...extra.map((name) => ({ name, elemType: DataType.FLOAT, shape: null })),
      ],
    },
  };
}

let ortModule: typeof Ort | null = null;

async function ort(): Promise<typeof Ort> {
  if (ortModule === null) ortModule = await import("onnxruntime-node");
  return ortModule;
}

/** Options of {@linkcode OrtModel.create}. */
export interface OrtModelOptions {
  /** ORT intra-op threads (default 1: the tools share the machine). */
  threads?: number;
}

/** An ONNX Runtime session over a BERT-family graph, fed from {@linkcode EncoderBatch}es. */
export class OrtModel {
  #session: Ort.InferenceSession;
  #ort: typeof Ort;
  #inputs: { name: string; role: "ids" | "mask" | "types"; int32: boolean }[];

  private constructor(session: Ort.InferenceSession, ortMod: typeof Ort, model: OnnxModel) {
    this.#session = session;
    this.#ort = ortMod;
    const inits = new Set(model.graph.initializers.map((t) => t.name));
    this.#inputs = model.graph.inputs.filter((i) => !inits.has(i.name)).map((i) => ({
      name: i.name,
      role: /mask/i.test(i.name) ? "mask" : /type/i.test(i.name) ? "types" : "ids",
      int32: i.elemType === DataType.INT32,
    }));
  }

  /**
   * Opens a session on an ONNX file or an in-memory model (encoded here; it must fit the
   * 2 GiB protobuf limit).
   */
  static async create(model: string | OnnxModel, options: OrtModelOptions = {}): Promise<OrtModel> {
    const ortMod = await ort();
    const decoded = typeof model === "string" ? await readOnnxModel(model) : model;
    const sessionOptions: Ort.InferenceSession.SessionOptions = {
      intraOpNumThreads: options.threads ?? 1,
      interOpNumThreads: 1,
      logSeverityLevel: 3,
    };
    let session: Ort.InferenceSession;
    try {
      session = typeof model === "string"
        ? await ortMod.InferenceSession.create(model, sessionOptions)
        : await ortMod.InferenceSession.create(encodeOnnxModel(decoded), sessionOptions);
    } catch (err) {
      const label = typeof model === "string" ? `"${model}"` : "the in-memory model";
      throw new Error(`ONNX Runtime cannot load ${label}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    return new OrtModel(session, ortMod, decoded);
  }

  /** Graph output names of the session. */
  get outputNames(): readonly string[] {
    return this.#session.outputNames;
  }

  /** Runs one batch and returns the requested outputs (default: all) as fp32 tensors. */
  async run(batch: EncoderBatch, outputs?: string[]): Promise<Record<string, FloatTensor>> {
    const o = this.#ort;
    const feeds: Record<string, Ort.Tensor> = {};
    for (const input of this.#inputs) {
      const src = input.role === "ids"
        ? batch.inputIds
        : input.role === "mask"
        ? batch.attentionMask
        : batch.tokenTypeIds;
      feeds[input.name] = input.int32
        ? new o.Tensor("int32", Int32Array.from(src), batch.shape)
        : new o.Tensor("int64", BigInt64Array.from(src, (v) => BigInt(v)), batch.shape);
    }
    const result = await this.#session.run(feeds, outputs ?? [...this.#session.outputNames]);
    const out: Record<string, FloatTensor> = {};
    for (const [name, t] of Object.entries(result)) {
      if (t.type !== "float32") {
        throw new Error(`Output "${name}" is ${t.type}, expected float32`);
      }
      out[name] = { data: t.data as Float32Array, dims: [...t.dims] };
    }
    return out;
  }

  /** Releases the session. */
  async release(): Promise<void> {
    await this.#session.release();
  }
}

/**
 * Calls `fn(row, token)` for every real (unmasked) token of a `[batch, seq, dim]` activation:
 * `row` is the offset of the token's `dim` values.
 */
export function forEachToken(
  batch: EncoderBatch,
  dim: number,
  fn: (offset: number) => void,
): void {
  const [b, seq] = batch.shape;
  for (let i = 0; i < b; i++) {
    for (let t = 0; t < seq; t++) {
      if (batch.attentionMask[i * seq + t]) fn((i * seq + t) * dim);
    }
  }
}

/** Options of {@linkcode captureActivations}. */
export interface CaptureOptions {
  /** ORT threads (default 1). */
  threads?: number;
  /** Progress callback, called with phase `"calibrate"`. */
  onProgress?: (phase: string, done: number, total: number) => void;
}

/**
 * Runs an fp32 graph on each batch with the graph values `values` exposed as outputs and calls
 * `fn` with them (one batch at a time, so memory stays bounded).
 */
export async function captureActivations(
  graph: OnnxModel,
  values: string[],
  batches: EncoderBatch[],
  options: CaptureOptions,
  fn: (batch: EncoderBatch, values: Record<string, FloatTensor>, index: number) => void,
): Promise<void> {
  const names = [...new Set(values)];
  const session = await OrtModel.create(withGraphOutputs(graph, names), {
    threads: options.threads,
  });
  try {
    for (let i = 0; i < batches.length; i++) {
      options.onProgress?.("calibrate", i, batches.length);
      fn(batches[i], await session.run(batches[i], names), i);
    }
    options.onProgress?.("calibrate", batches.length, batches.length);
  } finally {
    await session.release();
  }
}

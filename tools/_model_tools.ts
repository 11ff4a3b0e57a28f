/**
 * Helpers shared by the model-tool commands (`prune`, `quantize`, `evaluate`): model path
 * resolution, calibration inputs, writing the output model, terminal progress and option
 * parsing.
 *
 * @module
 */

import {
  type EncoderBatch,
  randomBatches,
  readTexts,
  tokenizeBatches,
} from "../compress/calibrate.ts";
import { DEFAULT_RETRIEVAL_SET } from "../compress/evaluate.ts";
import { declaredEmbedding } from "../hub/load.ts";
import { writeSentenceConfig } from "../formats/sentence_config.ts";
import { modelFiles, MODELS } from "../hub/registry.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import type { BertWeights } from "../encoder/weights.ts";
import { exists } from "../formats/fs.ts";
import type { OnnxModel } from "../formats/onnx_types.ts";
import { type OnnxModelInit, writeOnnxModel } from "../formats/onnx_write.ts";

/**
 * Resolves `--model`: an `.onnx` file, a folder holding `model.onnx`, or the name of a cached
 * registry model.
 *
 * @throws Error quoting the argument when nothing matches.
 */
export async function resolveModelPath(arg: string | undefined, flag = "--model"): Promise<string> {
  if (!arg) throw new Error(`${flag} is required`);
  try {
    const info = await Deno.stat(arg);
    if (!info.isDirectory) return arg;
    const inside = `${arg.replace(/\/$/, "")}/model.onnx`;
    await Deno.stat(inside).catch(() => {
      throw new Error(`${flag} "${arg}" is a folder without model.onnx`);
    });
    return inside;
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  if (Object.hasOwn(MODELS, arg)) {
    const files = modelFiles(arg);
    if (files.onnx === null) throw new Error(`${flag} "${arg}" is not an ONNX model`);
    try {
      await Deno.stat(files.onnx);
    } catch {
      throw new Error(`${flag} "${arg}" is not in the model cache; run "deno task models ${arg}"`);
    }
    return files.onnx;
  }
  throw new Error(
    `${flag} "${arg}" is neither a file, a folder with model.onnx, nor a known model name`,
  );
}

/** Options of {@linkcode calibrationBatches}. */
export interface CalibrationOptions {
  /** Use at most this many texts (default 64). */
  maxTexts?: number;
  /** Texts per batch (default 8). */
  batchSize?: number;
  /** Longest sequence (default 128). */
  maxLength?: number;
}

/**
 * Calibration batches from `--calibration`: a texts file (tokenized with the model's
 * tokenizer), `random` (seeded random token ids, for models without a tokenizer), or, when
 * `arg` is undefined and `fallback` is true, the first texts of the repository's retrieval set.
 *
 * @returns null when there is no argument and no fallback.
 * @throws Error naming the file when it is missing, or when texts need a tokenizer the model
 *   does not have.
 */
export async function calibrationBatches(
  arg: string | undefined,
  weights: BertWeights,
  fallback: boolean,
  options: CalibrationOptions = {},
): Promise<{ batches: EncoderBatch[]; source: string } | null> {
  const { maxTexts = 64, batchSize = 8, maxLength = 128 } = options;
  const random = (): { batches: EncoderBatch[]; source: string } => ({
    batches: randomBatches({
      vocabSize: weights.config.vocabSize,
      count: Math.min(maxTexts, 16),
      seqLen: Math.min(32, weights.config.maxPositionEmbeddings),
    }),
    source: "random token ids",
  });
  if (arg === "random") return random();
  if (arg === undefined && !fallback) return null;
  const tokenizerPath = weights.source.tokenizer;
  if (!tokenizerPath) {
    if (arg === undefined) return random();
    throw new Error(
      `The model has no tokenizer.json next to it, so "${arg}" cannot be tokenized; use --calibration random`,
    );
  }
  const path = arg ?? DEFAULT_RETRIEVAL_SET;
  const texts = (await readTexts(path)).slice(0, maxTexts);
  const tokenizer = await BertTokenizer.fromFile(tokenizerPath);
  const limit = Math.min(maxLength, weights.config.maxPositionEmbeddings);
  return {
    batches: tokenizeBatches(tokenizer, texts, { batchSize, maxLength: limit }),
    source: `${texts.length} texts of ${path}`,
  };
}

/** A progress line on the terminal: `onProgress` redraws it, `done` clears it. */
export interface Progress {
  /** Shows `done` of `total` steps of `phase` (at most every 100 ms within a phase). */
  onProgress: (phase: string, done: number, total: number) => void;
  /** Clears the line. */
  done: () => void;
}

/**
 * A progress callback that redraws one line on stderr when it is a terminal and `quiet` is
 * false, and does nothing otherwise. Call `done()` to end the line.
 */
export function terminalProgress(quiet: boolean): Progress {
  const enabled = !quiet && Deno.stderr.isTerminal();
  const encoder = new TextEncoder();
  let last = "";
  let lastTime = 0;
  return {
    onProgress(phase, done, total) {
      if (!enabled) return;
      const now = performance.now();
      if (done !== total && now - lastTime < 100 && last.startsWith(phase)) return;
      lastTime = now;
      const pct = total > 0 ? Math.floor((100 * done) / total) : 100;
      const line = `${phase}: ${done}/${total} (${pct}%)`;
      Deno.stderr.writeSync(encoder.encode(`\r\x1b[2K${line}`));
      last = line;
    },
    done() {
      if (enabled && last) Deno.stderr.writeSync(encoder.encode("\r\x1b[2K"));
      last = "";
    },
  };
}

/** Runs `fn` with a {@linkcode terminalProgress} line (none when `quiet`), cleared however it ends. */
export async function withProgress<T>(
  quiet: boolean,
  fn: (progress: Progress) => Promise<T>,
): Promise<T> {
  const progress = terminalProgress(quiet);
  try {
    return await fn(progress);
  } finally {
    progress.done();
  }
}

/** Parses a number option, quoting the flag and value on error. */
export function numberOption(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n)) {
    throw new Error(`${flag} must be a number, got "${value}"`);
  }
  return n;
}

/** Checks an enumerated option, quoting the flag, value and choices on error. */
export function choiceOption<T extends string>(
  flag: string,
  value: string | undefined,
  choices: readonly T[],
): T | undefined {
  if (value === undefined) return undefined;
  if (!(choices as readonly string[]).includes(value)) {
    throw new Error(`Unknown ${flag} "${value}": expected ${choices.join(" or ")}`);
  }
  return value as T;
}

/** Copies tokenizer files next to a written model when its folder has none. */
export async function copyTokenizer(
  weights: BertWeights,
  output: string,
): Promise<string | null> {
  const src = weights.source.tokenizer;
  if (!src) return null;
  const dir = output.includes("/") ? output.slice(0, output.lastIndexOf("/")) : ".";
  const srcDir = src.includes("/") ? src.slice(0, src.lastIndexOf("/")) : ".";
  const dest = `${dir}/tokenizer.json`;
  if (await exists(dest)) return null;
  await Deno.copyFile(src, dest);
  // The embedding the source declares goes along as sentence-transformers files.
  const declared = await declaredEmbedding(weights.source.path);
  if (declared !== null) await writeSentenceConfig(dir, declared, weights.config.hiddenSize);
  for (const extra of ["tokenizer_config.json", "sentence_bert_config.json", "config.json"]) {
    try {
      await Deno.copyFile(`${srcDir}/${extra}`, `${dir}/${extra}`);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return dest;
}

/** Creates the folder of an output file when it does not exist. */
export async function ensureParentDir(path: string): Promise<void> {
  const i = path.lastIndexOf("/");
  if (i > 0) await Deno.mkdir(path.slice(0, i), { recursive: true });
}

/**
 * Writes a compressed `model` to `output` (its folder created), with its tensors in
 * `<output name>.data` beside it when the input (`input.source`) kept external data, and copies
 * the input's tokenizer next to it ({@linkcode copyTokenizer}).
 */
export async function writeModelOutput(
  output: string,
  model: OnnxModelInit,
  input: { source: OnnxModel; weights: BertWeights },
): Promise<{ bytes: number; tokenizer: string | null }> {
  await ensureParentDir(output);
  const external = input.source.graph.initializers.some((t) => t.externalData !== null);
  const base = output.slice(output.lastIndexOf("/") + 1);
  const written = await writeOnnxModel(output, model, {
    externalData: external ? { location: `${base}.data` } : undefined,
  });
  const tokenizer = await copyTokenizer(input.weights, output);
  return { bytes: written.bytes + written.externalBytes, tokenizer };
}

/** Fails early (before a slow model load) when a calibration/texts file cannot be read. */
export async function checkTextsFile(path: string | undefined): Promise<void> {
  if (path === undefined || path === "random") return;
  try {
    const info = await Deno.stat(path);
    if (!info.isFile) throw new Error("not a file");
  } catch (err) {
    throw new Error(`Cannot read texts file "${path}": ${(err as Error).message}`, { cause: err });
  }
}

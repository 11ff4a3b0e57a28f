/**
 * One entry point for every model source: an ONNX file, a Hugging Face folder (config.json +
 * safetensors), or the name of a known model in the registry (fetched into the cache on first
 * use).
 *
 * ```ts
 * const { weights, tokenizer } = await loadModel("all-minilm-l6-v2");
 * ```
 *
 * @module
 */
import { returnLargeBuffersToSystem } from "../ffi/allocator.ts";

import { isCompiledModel, loadCompiled } from "../formats/compiled.ts";
import { loadHfFolder } from "../formats/hf_folder.ts";
import { type KernelChoiceOptions, KernelChooser } from "../encoder/kernel_choice.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { ensureModel, modelFiles, modelNames, MODELS } from "./registry.ts";
import { type EmbeddingDefinition, readSentenceConfig } from "../formats/sentence_config.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import type { BertWeights } from "../encoder/weights.ts";
import type { LoadedModel } from "./loaded_model.ts";

/** Options of {@linkcode loadModel}. */
export interface LoadModelOptions {
  /**
   * Longest tokenized input (special tokens included); default the smallest of the tokenizer's
   * limit, the model's position table and its sentence-transformers `max_seq_length`.
   */
  maxLength?: number;
  /** Called with progress lines while a registry model is fetched. */
  log?: (line: string) => void;
  /** Choose kernels per layer (see `encoder/kernel_choice.ts`); ignored for compiled files. */
  kernels?: KernelChoiceOptions;
  /** Compiled models: hash every byte of the data on load (default false). */
  verify?: boolean;
  /**
   * The tokenizer file to use; default: the one beside the model (`tokenizer.json`, or
   * `<stem>-tokenizer.json` / `<stem>.tokenizer.json` next to a model file).
   */
  tokenizer?: string;
}

/**
 * Loads a model from an `.onnx` file, a `.safetensors` file or Hugging Face folder, or a
 * registry name (see `hub/registry.ts`).
 *
 * @throws Error with one clear line: the path or name does not exist, the file is truncated
 *   or corrupt, the graph is not a BERT-family encoder, or the tokenizer cannot be read.
 */
export async function loadModel(
  pathOrName: string,
  options: LoadModelOptions = {},
): Promise<LoadedModel> {
  if (typeof pathOrName !== "string" || pathOrName === "") {
    throw new Error(`A model path or name is required, got ${JSON.stringify(pathOrName)}`);
  }
  // Loading's large temporary buffers go back to the system once collected.
  returnLargeBuffersToSystem();
  let path = pathOrName;
  let name: string | null = null;
  let weights: BertWeights;
  const kind = await statKind(pathOrName);
  let embedding: EmbeddingDefinition | null = null;
  if (kind === null && Object.hasOwn(MODELS, pathOrName)) {
    name = pathOrName;
    embedding = { ...MODELS[pathOrName].embedding, source: "registry" };
    const files = await ensureModel(pathOrName, {
      onProgress: (p) => {
        if (p.phase !== "cached") options.log?.(`${p.name}: ${p.phase}`);
      },
    });
    path = files.onnx ?? files.dir;
    weights = files.onnx ? await importOnnx(files.onnx) : await loadHfFolder(files.dir);
    weights.source.tokenizer ??= files.tokenizer;
  } else if (kind === "dir") {
    weights = await loadFolder(pathOrName);
    embedding = await readSentenceConfig(pathOrName);
  } else if (kind === "file") {
    if (await isCompiledModel(pathOrName)) {
      const compiled = await loadCompiled(pathOrName, {
        verify: options.verify,
        maxLength: options.maxLength,
      });
      compiled.embedding = await declaredEmbedding(pathOrName);
      return compiled;
    }
    weights = await loadFile(pathOrName);
    embedding = await declaredEmbedding(pathOrName);
  } else {
    throw new Error(
      `Model "${pathOrName}" is neither a file, a folder nor a known model name (known: ${
        modelNames().join(", ")
      })`,
    );
  }
  if (options.tokenizer !== undefined) {
    if (!await exists(options.tokenizer)) {
      throw new Error(`Tokenizer file "${options.tokenizer}" does not exist`);
    }
    weights.source.tokenizer = options.tokenizer;
  }
  let tokenizer: BertTokenizer | null = null;
  if (weights.source.tokenizer) {
    const limit = weights.config.maxPositionEmbeddings;
    const probe = await BertTokenizer.fromFile(weights.source.tokenizer);
    // sentence-transformers' max_seq_length is the model's own limit where it declares one.
    const declared = embedding?.maxSeqLength ?? Infinity;
    const maxLength = options.maxLength ?? Math.min(probe.maxLength, limit, declared);
    if (!Number.isInteger(maxLength) || maxLength < 2 || maxLength > limit) {
      throw new Error(
        `maxLength ${maxLength} must be an integer in 2..${limit} (the model's position table)`,
      );
    }
    tokenizer = maxLength === probe.maxLength
      ? probe
      : await BertTokenizer.fromFile(weights.source.tokenizer, { maxLength });
  }
  const loaded: LoadedModel = { weights, tokenizer, path, name, embedding };
  if (options.kernels !== undefined) {
    const chooser = new KernelChooser({ log: options.log, ...options.kernels });
    loaded.linear = chooser.factory;
    loaded.kernelDecisions = chooser.decisions;
    loaded.saveKernelCache = () => chooser.saveCache();
  }
  return loaded;
}

/**
 * The embedding a model file declares: sentence-transformers files in its folder (or above an
 * `onnx/` one), else its registry entry when the file is a cached registry model; else null.
 */
export async function declaredEmbedding(file: string): Promise<EmbeddingDefinition | null> {
  const slash = file.lastIndexOf("/");
  const dir = slash >= 0 ? file.slice(0, slash) || "/" : ".";
  const found = await readSentenceConfig(dir) ??
    (/(^|\/)onnx$/.test(dir) ? await readSentenceConfig(dir.replace(/\/?onnx$/, "") || ".") : null);
  if (found !== null) return found;
  for (const name of modelNames()) {
    if (await sameFolder(modelFiles(name).dir, dir)) {
      return { ...MODELS[name].embedding, source: "registry" };
    }
  }
  return null;
}

async function sameFolder(a: string, b: string): Promise<boolean> {
  try {
    return await Deno.realPath(a) === await Deno.realPath(b);
  } catch {
    return false; // one of them does not exist
  }
}

async function statKind(path: string): Promise<"file" | "dir" | null> {
  try {
    const info = await Deno.stat(path);
    return info.isDirectory ? "dir" : "file";
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return null;
    throw new Error(`Cannot read model "${path}": ${(error as Error).message}`, { cause: error });
  }
}

async function exists(path: string): Promise<boolean> {
  return (await statKind(path)) === "file";
}

async function loadFolder(dir: string): Promise<BertWeights> {
  const hasConfig = await exists(`${dir}/config.json`);
  const hasSafetensors = await exists(`${dir}/model.safetensors`) ||
    await exists(`${dir}/model.safetensors.index.json`);
  if (hasConfig && hasSafetensors) return await loadHfFolder(dir);
  for (const file of ["model.onnx", "onnx/model.onnx"]) {
    if (await exists(`${dir}/${file}`)) return await importOnnx(`${dir}/${file}`);
  }
  throw new Error(
    `Folder "${dir}" has neither config.json + model.safetensors nor model.onnx`,
  );
}

async function loadFile(path: string): Promise<BertWeights> {
  if (path.endsWith(".safetensors")) {
    const slash = path.lastIndexOf("/");
    const dir = slash >= 0 ? path.slice(0, slash) || "/" : ".";
    return await loadHfFolder(dir, { weightsFile: path.slice(slash + 1) });
  }
  // Anything else is read as ONNX; the importer reports what it found if it is not.
  return await importOnnx(path);
}

/**
 * The model files of the comparison, prepared once and cached under `.cache/bench-models/`:
 *
 * - the fp32 base: a seeded generated model (tests/fixtures/write_test_model.ts), a real model from
 *   the registry (hub/registry.ts, fetched on first use), or a user's file (`--model-file`, used
 *   as it is, pruned or not);
 * - pruned fp32 variants: compress/prune.ts (magnitude, per layer), the same graph with zeros;
 * - int8 variants of any fp32 variant, in the layouts of {@linkcode MODEL_FORMS}: written by
 *   compress/quantize_model.ts from the (pruned) fp32 file, so zeros stay zeros.
 *
 * Every file has a sidecar `<file>.json` with the key it was made from (the source file's path,
 * size and modification time plus the options); a file whose key still matches is reused.
 * Files are written in a temporary folder and renamed into place.
 *
 * @module
 */

import { randomBatches } from "../../compress/calibrate.ts";
import { pruneModel } from "../../compress/prune.ts";
import { quantizeModel, type QuantizeOptions } from "../../compress/quantize_model.ts";
import { ensureModel } from "../../hub/registry.ts";
import { loadModel } from "../../hub/load.ts";
import { measureSparsity } from "../../encoder/quantized.ts";
import { encoderLinears } from "../../encoder/weights.ts";
import { ensureTestModel } from "../../tests/fixtures/write_test_model.ts";
import {
  fp32Of,
  type ModelDef,
  type ModelForm,
  type Pattern,
  type Variant,
  variantKey,
  variantLabel,
} from "./matrix.ts";

/** Default cache folder: `<repo>/.cache/bench-models`. */
export const DEFAULT_MODELS_DIR: string = decodeURIComponent(
  new URL("../../.cache/bench-models", import.meta.url).pathname,
);

/** A model file ready for the runtimes. */
export interface PreparedFile {
  /** The ONNX layout. */
  form: ModelForm;
  /** Absolute path. */
  path: string;
  /** Bytes of the `.onnx` file (and its external data). */
  bytes: number;
  /** Milliseconds spent preparing it in this run (0 when cached). */
  prepMs: number;
  /** Whether it came from the cache. */
  cached: boolean;
  /** What made it (prune or quantize report summary). */
  made: Record<string, unknown>;
}

/** Options of {@linkcode ModelStore}. */
export interface ModelStoreOptions {
  /** Cache folder (default {@linkcode DEFAULT_MODELS_DIR}). */
  dir?: string;
  /** Progress lines. */
  log?: (line: string) => void;
}

interface Sidecar {
  key: string;
  /** The file's own identity when written: a file changed since is prepared again. */
  file: string;
  bytes: number;
  made: Record<string, unknown>;
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

async function identity(path: string): Promise<string> {
  const info = await Deno.stat(path);
  return `${path}:${info.size}:${info.mtime?.getTime() ?? 0}`;
}

async function externalSize(path: string): Promise<number> {
  return (await statOrNull(`${path}.data`))?.size ?? 0;
}

/**
 * Prepares and caches the files of every (model, variant, form). Failures throw with the
 * model, variant and step named; the harness reports them per contestant.
 */
export class ModelStore {
  readonly #dir: string;
  readonly #log: (line: string) => void;
  readonly #pending = new Map<string, Promise<PreparedFile>>();

  /** A store over `options.dir`. */
  constructor(options: ModelStoreOptions = {}) {
    this.#dir = options.dir ?? DEFAULT_MODELS_DIR;
    this.#log = options.log ?? (() => {});
  }

  /** The cache folder. */
  get dir(): string {
    return this.#dir;
  }

  /**
   * The file of `variant` in `form` (`fp32` for an fp32 variant, an int8 form for an int8
   * one), prepared on first use. Concurrent calls for the same file share one preparation.
   */
  file(model: ModelDef, variant: Variant, form: ModelForm): Promise<PreparedFile> {
    if ((variant.precision === "fp32") !== (form === "fp32")) {
      throw new RangeError(
        `Form '${form}' does not fit the ${variant.precision} variant '${variantKey(variant)}'`,
      );
    }
    const id = `${model.key}/${variantKey(variant)}/${form}`;
    let p = this.#pending.get(id);
    if (p === undefined) {
      p = this.#prepare(model, variant, form);
      this.#pending.set(id, p);
      p.catch(() => this.#pending.delete(id));
    }
    return p;
  }

  async #prepare(model: ModelDef, variant: Variant, form: ModelForm): Promise<PreparedFile> {
    const what = `${model.key} ${variantLabel(variant)} (${form})`;
    try {
      // A user's file is measured as it is: its fp32 form is the file, whatever its sparsity.
      if (form === "fp32" && (variant.sparsity === 0 || model.source.kind === "file")) {
        return await this.#base(model);
      }
      if (form === "fp32") return await this.#pruned(model, variant);
      const source = await this.file(model, fp32Of(variant), "fp32");
      return await this.#quantized(model, variant, form, source);
    } catch (err) {
      throw new Error(`Cannot prepare ${what}: ${(err as Error).message}`, { cause: err });
    }
  }

  async #base(model: ModelDef): Promise<PreparedFile> {
    const t0 = performance.now();
    const started = Date.now();
    const src = model.source;
    let path: string;
    let made: Record<string, unknown>;
    if (src.kind === "generated") {
      const r = await ensureTestModel({ preset: src.preset, config: src.config, seed: src.seed });
      path = r.path;
      made = {
        tool: "tests/fixtures/write_test_model.ts",
        preset: src.preset,
        seed: src.seed,
        ...src.config,
      };
    } else if (src.kind === "file") {
      path = src.path;
      made = { file: src.path };
    } else {
      const files = await ensureModel(src.name, {
        onProgress: (p) => {
          if (p.phase !== "cached") this.#log(`${src.name}: ${p.phase}`);
        },
      });
      if (files.onnx === null) throw new Error(`Registry model '${src.name}' has no ONNX file`);
      path = files.onnx;
      made = { registry: src.name };
    }
    const info = await Deno.stat(path);
    const cached = (info.mtime?.getTime() ?? 0) < started;
    if (!cached) this.#log(`wrote ${path}`);
    return {
      form: "fp32",
      path,
      bytes: info.size + await externalSize(path),
      prepMs: cached ? 0 : performance.now() - t0,
      cached,
      made,
    };
  }

  async #pruned(model: ModelDef, variant: Variant): Promise<PreparedFile> {
    const base = await this.file(model, fp32Of({ ...variant, sparsity: 0, pattern: null }), "fp32");
    const options = {
      sparsity: variant.sparsity,
      pattern: variant.pattern!,
      method: "magnitude" as const,
      scope: "per-layer" as const,
    };
    const key = JSON.stringify({ source: await identity(base.path), prune: options });
    return await this.#cached(model, `${variantKey(variant)}.onnx`, "fp32", key, async (out) => {
      const r = await pruneModel(base.path, out, options);
      return { tool: "compress/prune.ts", ...options, measured: r.total };
    });
  }

  async #quantized(
    model: ModelDef,
    variant: Variant,
    form: ModelForm,
    source: PreparedFile,
  ): Promise<PreparedFile> {
    let options: QuantizeOptions;
    if (form === "int8-pt") options = { activations: "dynamic", granularity: "per-token" };
    else if (form === "int8-dyn") options = { activations: "dynamic", granularity: "per-tensor" };
    else if (form === "int8-qdq") options = { activations: "static" };
    else throw new RangeError(`Unknown int8 form '${form}'`);
    const calibration = form === "int8-qdq"
      ? { ids: "seeded random in [1, 2048)", count: 16, seqLen: 64 }
      : null;
    const key = JSON.stringify({ source: await identity(source.path), options, calibration });
    const name = `${form}-${variantKey(fp32Of(variant)).replace(/^fp32-/, "")}.onnx`;
    return await this.#cached(model, name, form, key, async (out) => {
      const r = await quantizeModel(source.path, out, {
        ...options,
        calibration: calibration
          ? randomBatches({ vocabSize: 2048, count: calibration.count, seqLen: calibration.seqLen })
          : undefined,
      });
      return {
        tool: "compress/quantize_model.ts",
        ...options,
        format: r.format,
        weightBits: r.weightBits,
        activationQmax: r.activationQmax,
        warnings: r.warnings,
        calibration,
      };
    });
  }

  async #cached(
    model: ModelDef,
    name: string,
    form: ModelForm,
    key: string,
    make: (out: string) => Promise<Record<string, unknown>>,
  ): Promise<PreparedFile> {
    const dir = `${this.#dir}/${model.key}`;
    const path = `${dir}/${name}`;
    const sidecarPath = `${path}.json`;
    const existing = await statOrNull(path);
    if (existing !== null) {
      try {
        const side = JSON.parse(await Deno.readTextFile(sidecarPath)) as Sidecar;
        if (side.key === key && side.file === await identity(path)) {
          return { form, path, bytes: side.bytes, prepMs: 0, cached: true, made: side.made };
        }
      } catch {
        // No or unreadable sidecar: prepare again.
      }
    }
    const t0 = performance.now();
    this.#log(`preparing ${model.key}/${name}`);
    await Deno.mkdir(dir, { recursive: true });
    const tmp = await Deno.makeTempDir({ dir, prefix: ".tmp-" });
    try {
      const made = await make(`${tmp}/${name}`);
      const ext = await statOrNull(`${tmp}/${name}.data`);
      if (ext !== null) await Deno.rename(`${tmp}/${name}.data`, `${path}.data`);
      await Deno.rename(`${tmp}/${name}`, path);
      const bytes = (await Deno.stat(path)).size + (ext?.size ?? 0);
      const side: Sidecar = { key, file: await identity(path), bytes, made };
      await Deno.writeTextFile(sidecarPath, JSON.stringify(side, null, 2) + "\n");
      return { form, path, bytes, prepMs: performance.now() - t0, cached: false, made };
    } finally {
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  }
}

/** A user's model file as the comparison sees it ({@linkcode describeModelFile}). */
export interface ModelFileInfo {
  /** Its model definition (source `file`). */
  def: ModelDef;
  /** Weighted mean sparsity of the encoder linears: 4x1 blocks, or elements if unstructured. */
  sparsity: number;
  /** `"4x1"` when its zeros come in 4x1 blocks (block sparsity within 0.02 of element). */
  pattern: Pattern;
}

/**
 * Reads a user's fp32 ONNX encoder (`bench:compare --model-file`): its shape for the work
 * estimate and the measured sparsity of its linears (under 1%: dense).
 *
 * @throws Error when the file cannot be imported as an encoder, or is not fp32.
 */
export async function describeModelFile(path: string): Promise<ModelFileInfo> {
  const { weights } = await loadModel(path);
  const c = weights.config;
  const linears = encoderLinears(weights);
  if (linears.some((d) => d.quantized !== undefined)) {
    throw new Error(
      `'${path}' has int8 weights: give the fp32 file (bench:compare makes the int8 forms of ` +
        "every runtime from it; cli sparsify writes it as <stem>.fp32.onnx)",
    );
  }
  let total = 0;
  let zeros = 0;
  let zeroBlocks = 0;
  for (const d of linears) {
    const m = d.sparsity ?? measureSparsity(d.weight, d);
    total += d.out * d.in;
    zeros += m.element * d.out * d.in;
    zeroBlocks += m.block4x1 * d.out * d.in;
  }
  const element = zeros / total;
  const block = zeroBlocks / total;
  const blocky = element - block <= 0.02;
  const raw = blocky ? block : element;
  const sparsity = raw < 0.01 ? 0 : Math.round(raw * 100) / 100;
  const stem = path.split("/").at(-1)!.replace(/\.onnx$/, "");
  const key = `file-${stem.replace(/[^A-Za-z0-9_.-]/g, "_")}`;
  const what = sparsity === 0
    ? "dense"
    : `${blocky ? "4x1 block" : "element"} sparsity ${raw.toFixed(3)}`;
  return {
    def: {
      key,
      label: `${stem} (file: ${c.numLayers} layers, H ${c.hiddenSize}, ${what})`,
      source: { kind: "file", path },
      layers: c.numLayers,
      hidden: c.hiddenSize,
      intermediate: c.intermediateSize,
      maxSeq: c.maxPositionEmbeddings,
      boundMs: 20,
    },
    sparsity,
    pattern: blocky ? "4x1" : "unstructured",
  };
}

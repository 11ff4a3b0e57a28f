/**
 * `deno task cli sparsify`: a dense encoder in, a 4x1-sparse (and int8) encoder out, its quality
 * recovered by distillation from the dense model on unlabeled text.
 *
 * 1. The texts (default: the WordNet corpus of `compress/corpus.ts`) are checked against the
 *    evaluation texts (refused on overlap), sampled and tokenized with the model's tokenizer.
 * 2. A work folder gets the bundle the trainer reads (`bundle.json`, the teacher's weights in
 *    `weights.f32`, the token ids); with `init: "obs"` the student starts from the OBS one-shot
 *    pruning of `compress/prune.ts` (calibrated on corpus texts) at `initSparsity`.
 * 3. The trainer (`tools/train/sparsify_train.py`, JAX on CPU, in the venv `.cache/venv/train`
 *    that `tools/train/setup_train.ts` installs) distills with a cubic 4x1 pruning schedule to
 *    the target sparsity, checkpointing as it goes; progress comes back as JSON lines.
 * 4. The trained linear weights are written into the source model's initializers (the same
 *    ONNX graph, zeros in the pruned blocks) and, unless disabled, `cli quantize` makes the int8
 *    model.
 *
 * @module
 */

import { assertNoOverlap } from "./corpus.ts";
import { type EncoderBatch, OrtModel, readTexts, tokenizeBatches } from "./calibrate.ts";
import { DEFAULT_RETRIEVAL_SET, detectPooling, poolEmbeddings } from "./evaluate.ts";
import { pruneAnalysis, writeWeights } from "./prune.ts";
import { concatFloat32 } from "./prune_units.ts";
import { analyzeOnnx, type OnnxAnalysis } from "../formats/onnx_import.ts";
import { LAYER_LINEARS } from "../formats/onnx_layer.ts";
import { DataType, dataTypeName, type OnnxModel } from "../formats/onnx_types.ts";
import { exists } from "../formats/fs.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import type { BertWeights, DenseWeight } from "../encoder/weights.ts";

/** Where the training venv lives. */
export const TRAIN_VENV = ".cache/venv/train";
/** The trainer script. */
export const TRAINER = decodeURIComponent(
  new URL("../tools/train/sparsify_train.py", import.meta.url).pathname,
);

/** Options of the training run (what the trainer reads from `bundle.json`). */
export interface TrainOptions {
  /**
   * Target fraction of zero 4x1 blocks, in [0, 1): in every encoder linear (`scope`
   * `"per-layer"`), or over all of them together (`"global"`).
   */
  sparsity: number;
  /**
   * `"per-layer"` (default): every linear at the target; `"global"`: the 4x1 blocks of all
   * linears ranked together by their norm, each linear keeping at least 2% of its blocks.
   */
  scope: "per-layer" | "global";
  /**
   * Quantization-aware training: the student's linears see int8 fake quantization (symmetric
   * per-channel weights, per-token activations in `qatActivationQmax` steps) with
   * straight-through gradients. Default false.
   */
  qat: boolean;
  /** Activation steps of the fake quantization: 255 (the AVX-512 VNNI kernels) or 127 (AVX2). */
  qatActivationQmax: number;
  /** Where the student starts: `obs` (one-shot OBS at `initSparsity`) or `dense`. */
  init: "obs" | "dense";
  /** OBS starting sparsity (default: the target). */
  initSparsity: number;
  /** Fraction of the steps over which the cubic schedule reaches the target. */
  pruneFraction: number;
  /** Steps between mask updates during the schedule. */
  pruneEvery: number;
  /** Training steps; 0: as many as fit `timeBudgetSeconds`. */
  steps: number;
  /** Wall-time limit of the training (seconds). */
  timeBudgetSeconds: number;
  /** Texts per step. */
  batchSize: number;
  /** Peak learning rate (AdamW, warm-up then cosine decay to 5%). */
  learningRate: number;
  /** Warm-up steps. */
  warmupSteps: number;
  /** Weight of the pooled-embedding losses (cosine + similarity matrix). */
  poolWeight: number;
  /** Weight of the hidden-state loss. */
  hiddenWeight: number;
  /** Corpus texts held out for the validation loss. */
  validTexts: number;
  /** Steps between validation losses (0: only at the start and the end). */
  validEvery: number;
  /** Steps between progress events. */
  logEvery: number;
  /** Seconds between checkpoints. */
  checkpointSeconds: number;
  /** Sampling and shuffling seed. */
  seed: number;
}

/** The defaults of {@linkcode TrainOptions} (sparsity aside). */
export const TRAIN_DEFAULTS: Omit<TrainOptions, "sparsity" | "initSparsity"> = {
  scope: "per-layer",
  qat: false,
  qatActivationQmax: 255,
  init: "obs",
  pruneFraction: 0.5,
  pruneEvery: 20,
  steps: 0,
  timeBudgetSeconds: 30 * 60,
  batchSize: 32,
  learningRate: 5e-4,
  warmupSteps: 30,
  poolWeight: 1,
  hiddenWeight: 1,
  validTexts: 512,
  validEvery: 200,
  logEvery: 10,
  checkpointSeconds: 300,
  seed: 1,
};

/**
 * Fills in the defaults and checks the values; throws naming the option.
 */
export function resolveTrainOptions(
  options: Partial<TrainOptions> & { sparsity: number },
): TrainOptions {
  const o = { ...TRAIN_DEFAULTS, initSparsity: options.sparsity, ...options };
  const fraction = (name: string, v: number, max = 1): void => {
    if (!(typeof v === "number" && v >= 0 && v < max)) {
      throw new RangeError(`Invalid ${name} ${v}: expected a number in [0, ${max})`);
    }
  };
  const positive = (name: string, v: number, integer = true): void => {
    if (!(v > 0 && (!integer || Number.isInteger(v)))) {
      throw new RangeError(
        `Invalid ${name} ${v}: expected a positive ${integer ? "integer" : "number"}`,
      );
    }
  };
  fraction("sparsity", o.sparsity);
  fraction("init sparsity", o.initSparsity);
  if (o.initSparsity > o.sparsity) {
    throw new RangeError(
      `Invalid init sparsity ${o.initSparsity}: above the target sparsity ${o.sparsity}`,
    );
  }
  if (o.qatActivationQmax !== 255 && o.qatActivationQmax !== 127) {
    throw new RangeError(`Invalid QAT activation qmax ${o.qatActivationQmax}: expected 255 or 127`);
  }
  if (o.scope !== "per-layer" && o.scope !== "global") {
    throw new RangeError(`Invalid scope "${o.scope}": expected "per-layer" or "global"`);
  }
  if (o.init !== "obs" && o.init !== "dense") {
    throw new RangeError(`Invalid init "${o.init}": expected "obs" or "dense"`);
  }
  if (o.init === "dense" && o.initSparsity !== 0 && options.initSparsity !== undefined) {
    throw new RangeError("A dense start has init sparsity 0");
  }
  if (o.init === "dense") o.initSparsity = 0;
  if (o.scope === "global" && o.initSparsity >= o.sparsity) {
    // The OBS start is per layer; only the schedule's steps rank blocks across layers.
    throw new RangeError(
      `Scope global moves blocks between layers while the schedule prunes from the init ` +
        `sparsity to the target, and the OBS start is per layer: give an init sparsity below ` +
        `${o.sparsity} (for example ${(o.sparsity * 0.8).toFixed(2)}) or init "dense"`,
    );
  }
  fraction("prune fraction", o.pruneFraction, 1.0000001);
  positive("prune every", o.pruneEvery);
  if (!(Number.isInteger(o.steps) && o.steps >= 0)) {
    throw new RangeError(`Invalid steps ${o.steps}: expected an integer >= 0`);
  }
  positive("time budget", o.timeBudgetSeconds, false);
  positive("batch size", o.batchSize);
  positive("learning rate", o.learningRate, false);
  if (!(Number.isInteger(o.warmupSteps) && o.warmupSteps >= 0)) {
    throw new RangeError(`Invalid warm-up steps ${o.warmupSteps}`);
  }
  positive("log every", o.logEvery);
  positive("checkpoint seconds", o.checkpointSeconds, false);
  return o;
}

/** A bundle tensor: name, shape, offset in floats. */
interface BundleTensor {
  name: string;
  shape: number[];
  offset: number;
}

/** The teacher's tensors, by bundle name (torch layout for linears). */
export function bundleTensors(
  w: BertWeights,
): Map<string, { data: Float32Array; shape: number[] }> {
  const { config } = w;
  const m = new Map<string, { data: Float32Array; shape: number[] }>();
  const h = config.hiddenSize;
  m.set("embeddings.word", { data: w.wordEmbeddings, shape: [config.vocabSize, h] });
  m.set("embeddings.position", {
    data: w.positionEmbeddings,
    shape: [w.positionEmbeddings.length / h, h],
  });
  if (w.tokenTypeEmbeddings) {
    m.set("embeddings.token_type", {
      data: w.tokenTypeEmbeddings,
      shape: [w.tokenTypeEmbeddings.length / h, h],
    });
  }
  m.set("embeddings.norm.gamma", { data: w.embeddingNorm.gamma, shape: [h] });
  m.set("embeddings.norm.beta", { data: w.embeddingNorm.beta, shape: [h] });
  w.layers.forEach((l, i) => {
    for (const k of LAYER_LINEARS) {
      const d = l[k];
      m.set(`layers.${i}.${k}.weight`, { data: d.weight, shape: [d.out, d.in] });
      m.set(`layers.${i}.${k}.bias`, { data: d.bias, shape: [d.out] });
    }
    for (const n of ["attentionNorm", "outputNorm"] as const) {
      m.set(`layers.${i}.${n}.gamma`, { data: l[n].gamma, shape: [h] });
      m.set(`layers.${i}.${n}.beta`, { data: l[n].beta, shape: [h] });
    }
  });
  return m;
}

/** The prunable linears in bundle order, with their bundle names. */
export function bundleLinears(w: BertWeights): { name: string; dense: DenseWeight }[] {
  return w.layers.flatMap((l, i) =>
    LAYER_LINEARS.map((k) => ({ name: `layers.${i}.${k}.weight`, dense: l[k] }))
  );
}

function writeFloats(path: string, parts: Float32Array[]): void {
  Deno.writeFileSync(path, new Uint8Array(concatFloat32(parts).buffer));
}

/** Token ids of texts as `[count, maxLength]` (zero padded) and their lengths. */
export function tokenizeCorpus(
  tokenizer: BertTokenizer,
  texts: string[],
  maxLength: number,
): { ids: Int32Array; lengths: Int32Array } {
  const ids = new Int32Array(texts.length * maxLength);
  const lengths = new Int32Array(texts.length);
  const batches = tokenizeBatches(tokenizer, texts, { batchSize: 256, maxLength });
  let row = 0;
  for (const b of batches) {
    const [n, s] = b.shape;
    for (let i = 0; i < n; i++, row++) {
      let len = 0;
      for (let j = 0; j < s; j++) {
        if (b.attentionMask[i * s + j] !== 0) {
          ids[row * maxLength + j] = b.inputIds[i * s + j];
          len = j + 1;
        }
      }
      lengths[row] = len;
    }
  }
  return { ids, lengths };
}

/** A seeded shuffle (mulberry32) of `items`, a copy. */
export function seededShuffle<T>(items: T[], seed: number): T[] {
  let a = seed >>> 0;
  const rand = (): number => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = items.slice();
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** The corpus texts to train on: read, checked against the evaluation texts, sampled. */
export async function trainingTexts(
  corpus: string,
  evaluation: string[],
  options: { maxTexts: number; seed: number; evaluationName?: string },
): Promise<string[]> {
  const texts = await readTexts(corpus);
  assertNoOverlap(texts, evaluation, {
    training: corpus,
    evaluation: options.evaluationName ?? DEFAULT_RETRIEVAL_SET,
  });
  return seededShuffle(texts, options.seed).slice(0, options.maxTexts);
}

/** What {@linkcode prepareBundle} wrote. */
export interface BundleInfo {
  /** The work folder. */
  folder: string;
  /** Training texts. */
  texts: number;
  /** Tokens of the training texts. */
  tokens: number;
  /** OBS calibration tokens (0 for a dense start). */
  obsTokens: number;
  /** Seconds spent on OBS. */
  obsSeconds: number;
}

/**
 * Writes the trainer's bundle for the model at `input` into `folder`: the teacher's weights, the
 * tokenized texts and, for an OBS start, the student's pruned weights.
 */
export async function prepareBundle(
  input: string,
  texts: string[],
  folder: string,
  options: TrainOptions & {
    maxLength: number;
    obsTexts: number;
    onProgress?: (phase: string, done: number, total: number) => void;
  },
): Promise<BundleInfo> {
  const analysis = await analyzeOnnx(input);
  if (analysis.quantized) {
    throw new Error(`Cannot sparsify "${input}": it is quantized; start from the fp32 model`);
  }
  const w = analysis.weights;
  const tokenizerPath = w.source.tokenizer;
  if (!tokenizerPath) {
    throw new Error(`Cannot sparsify "${input}": no tokenizer.json next to it`);
  }
  await Deno.mkdir(folder, { recursive: true });
  const tensors = bundleTensors(w);
  const list: BundleTensor[] = [];
  let offset = 0;
  for (const [name, t] of tensors) {
    list.push({ name, shape: t.shape, offset });
    offset += t.data.length;
  }
  // Copy now: OBS below prunes the analysed weights in place.
  writeFloats(`${folder}/weights.f32`, [...tensors.values()].map((t) => t.data));
  const tokenizer = await BertTokenizer.fromFile(tokenizerPath);
  const maxLength = Math.min(options.maxLength, w.config.maxPositionEmbeddings);
  const { ids, lengths } = tokenizeCorpus(tokenizer, texts, maxLength);
  Deno.writeFileSync(`${folder}/corpus.i32`, new Uint8Array(ids.buffer));
  Deno.writeFileSync(`${folder}/corpus_len.i32`, new Uint8Array(lengths.buffer));
  let obsTokens = 0;
  let obsSeconds = 0;
  if (options.init === "obs" && options.initSparsity > 0) {
    const t0 = performance.now();
    const calibration = tokenizeBatches(tokenizer, texts.slice(0, options.obsTexts), {
      batchSize: 8,
      maxLength,
    });
    const report = await pruneAnalysis(analysis, analysis.source, input, {
      sparsity: options.initSparsity,
      pattern: "4x1",
      scope: "per-layer",
      method: "obs",
      calibration,
      onProgress: options.onProgress,
    });
    obsTokens = report.calibrationTokens;
    obsSeconds = (performance.now() - t0) / 1000;
    writeFloats(`${folder}/student.f32`, bundleLinears(w).map((l) => l.dense.weight));
  } else {
    await Deno.remove(`${folder}/student.f32`).catch(() => {});
  }
  const epsilon: Record<string, number> = { embeddings: w.embeddingNorm.eps };
  w.layers.forEach((l, i) => {
    epsilon[`layers.${i}.attentionNorm`] = l.attentionNorm.eps;
    epsilon[`layers.${i}.outputNorm`] = l.outputNorm.eps;
  });
  const bundle = {
    input,
    config: w.config,
    pooling: await detectPooling(input),
    epsilon,
    tensors: list,
    linears: bundleLinears(w).map((l) => l.name),
    corpus: { texts: texts.length, maxLength },
    options,
  };
  await Deno.writeTextFile(`${folder}/bundle.json`, JSON.stringify(bundle, null, 1));
  await Deno.remove(`${folder}/checkpoint.npz`).catch(() => {});
  await Deno.remove(`${folder}/result.f32`).catch(() => {});
  let tokens = 0;
  for (const n of lengths) tokens += n;
  return { folder, texts: texts.length, tokens, obsTokens, obsSeconds };
}

/** The bundle's recorded input and options (for `--resume`). */
export async function readBundle(
  folder: string,
): Promise<{ input: string; options: TrainOptions & { maxLength: number; obsTexts: number } }> {
  try {
    return JSON.parse(await Deno.readTextFile(`${folder}/bundle.json`));
  } catch (err) {
    throw new Error(
      `No sparsify run to resume in "${folder}" (${(err as Error).message}); run without --resume`,
      { cause: err },
    );
  }
}

/** Changes options of the bundle in `folder` (for `--resume` with more steps or a new budget). */
export async function updateBundleOptions(
  folder: string,
  patch: Partial<TrainOptions>,
): Promise<void> {
  if (Object.keys(patch).length === 0) return;
  const path = `${folder}/bundle.json`;
  const bundle = JSON.parse(await Deno.readTextFile(path));
  bundle.options = { ...bundle.options, ...patch };
  await Deno.writeTextFile(path, JSON.stringify(bundle, null, 1));
}

/** The training venv's Python, or an error saying how to install it. */
export async function trainPython(venv = TRAIN_VENV): Promise<string> {
  const python = `${venv}/bin/python`;
  if (!await exists(python)) {
    throw new Error(
      `The training venv "${venv}" is not installed: run "deno task setup:train" (JAX for CPU from PyPI, about 630 MB)`,
    );
  }
  return python;
}

/** One progress event of the trainer (a JSON line). */
export interface TrainEvent {
  /** `start`, `plan`, `step`, `valid`, `checkpoint`, `budget`, `resumed` or `done`. */
  event: string;
  [key: string]: unknown;
}

/**
 * Runs the trainer on a bundle (continuing from its checkpoint with `resume`), calling `onEvent`
 * per JSON line; resolves to the `done` event. Its stderr goes to `<folder>/train.log`.
 *
 * @throws Error with the tail of the log when the trainer fails.
 */
export async function runTrainer(
  folder: string,
  options: { resume?: boolean; python?: string; onEvent?: (e: TrainEvent) => void } = {},
): Promise<TrainEvent> {
  const python = options.python ?? await trainPython();
  const args = [TRAINER, folder];
  if (options.resume) args.push("--resume");
  const log = await Deno.open(`${folder}/train.log`, { write: true, create: true, append: true });
  const child = new Deno.Command(python, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { PYTHONUNBUFFERED: "1", JAX_PLATFORMS: "cpu", TF_CPP_MIN_LOG_LEVEL: "2" },
  }).spawn();
  const errDone = child.stderr.pipeTo(log.writable);
  let done: TrainEvent | null = null;
  const events = await Deno.open(`${folder}/events.jsonl`, {
    write: true,
    create: true,
    append: true,
  });
  const enc = new TextEncoder();
  let buf = "";
  for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
    buf += chunk;
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      const line = buf.slice(0, nl).trim();
      buf = buf.slice(nl + 1);
      if (!line.startsWith("{")) continue;
      events.writeSync(enc.encode(line + "\n"));
      const e = JSON.parse(line) as TrainEvent;
      if (e.event === "done") done = e;
      options.onEvent?.(e);
    }
  }
  events.close();
  const status = await child.status;
  await errDone;
  if (!status.success || done === null) {
    const tail = (await Deno.readTextFile(`${folder}/train.log`)).trim().split("\n").slice(-6)
      .join("\n  ");
    throw new Error(
      `The trainer failed (exit ${status.code}; log ${folder}/train.log):\n  ${tail}`,
    );
  }
  return done;
}

/**
 * Writes the trained linear weights (`<folder>/result.f32`) into the analysed model's weights
 * and its source initializers (fp32 only), in place.
 */
export async function applyResult(
  a: OnnxAnalysis & { source: OnnxModel },
  folder: string,
  path: string,
): Promise<void> {
  const bytes = await Deno.readFile(`${folder}/result.f32`);
  const values = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
  const linears = bundleLinears(a.weights);
  const expected = linears.reduce((n, l) => n + l.dense.out * l.dense.in, 0);
  if (values.length !== expected) {
    throw new Error(
      `${folder}/result.f32 holds ${values.length} floats; the model's linears need ${expected}`,
    );
  }
  const inits = new Map(a.source.graph.initializers.map((t) => [t.name, t]));
  let off = 0;
  for (const { name, dense } of linears) {
    const n = dense.out * dense.in;
    const init = dense.initializer ? inits.get(dense.initializer.name) : undefined;
    if (init === undefined) {
      throw new Error(`Cannot write "${name}" of "${path}": its weight is not an initializer`);
    }
    if (init.dataType !== DataType.FLOAT && init.dataType !== DataType.DOUBLE) {
      throw new Error(
        `Cannot write "${name}" of "${path}": initializer "${init.name}" is ${
          dataTypeName(init.dataType)
        }`,
      );
    }
    dense.weight.set(values.subarray(off, off + n));
    writeWeights(init, dense, path);
    off += n;
  }
}

/**
 * Compares the trainer's teacher embeddings (`<folder>/teacher_check.json`: token ids and pooled
 * embeddings of a few texts) with ONNX Runtime's on the input model: the check that the JAX
 * forward pass is the model's. Resolves to the smallest cosine (1 when they agree).
 */
export async function checkTeacher(
  input: string,
  folder: string,
  threads = 1,
): Promise<{ texts: number; minCosine: number }> {
  const chk = JSON.parse(await Deno.readTextFile(`${folder}/teacher_check.json`)) as {
    ids: number[][];
    lengths: number[];
    pooled: number[][];
  };
  const b = chk.ids.length;
  const s = chk.ids[0].length;
  const batch: EncoderBatch = {
    shape: [b, s],
    inputIds: Int32Array.from(chk.ids.flat()),
    attentionMask: Int32Array.from(
      chk.ids.flatMap((_, i) => Array.from({ length: s }, (_, j) => (j < chk.lengths[i] ? 1 : 0))),
    ),
    tokenTypeIds: new Int32Array(b * s),
  };
  const model = await OrtModel.create(input, { threads });
  try {
    const name = model.outputNames[0];
    const pooled = poolEmbeddings(
      (await model.run(batch, [name]))[name].data,
      batch,
      await detectPooling(input),
    );
    let min = 1;
    pooled.forEach((v, i) => {
      const t = chk.pooled[i];
      let dot = 0;
      let nt = 0;
      for (let k = 0; k < v.length; k++) {
        dot += v[k] * t[k];
        nt += t[k] * t[k];
      }
      min = Math.min(min, dot / Math.sqrt(nt));
    });
    return { texts: b, minCosine: min };
  } finally {
    await model.release();
  }
}

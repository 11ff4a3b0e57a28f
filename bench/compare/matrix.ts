/**
 * What `deno task bench:compare` measures: the runtimes, the models and their variants (dense,
 * pruned, int8), the ONNX form each runtime is given, the scenarios (sequence length, batch,
 * threads), the latency-bound throughput search, and the three run sizes (`quick`, `default`,
 * `full`).
 *
 * Every variant of a model is derived from one fp32 ONNX file, so all runtimes run the same
 * weights: pruning writes the same graph with zeros, and int8 variants are written from the
 * (pruned) fp32 file in three standard ONNX layouts (see {@linkcode MODEL_FORMS}); each runtime
 * is given every layout it accepts and reported with its fastest.
 *
 * @module
 */

/** A runtime of the comparison. */
export type RuntimeName =
  | "sparsebert"
  | "ort-node"
  | "ort-py"
  | "openvino"
  | "deepsparse"
  | "torch";

/** Every runtime, in report order. */
export const RUNTIMES: readonly RuntimeName[] = Object.freeze([
  "sparsebert",
  "ort-node",
  "ort-py",
  "openvino",
  "deepsparse",
  "torch",
]);

/** Display names of the runtimes. */
export const RUNTIME_LABELS: Readonly<Record<RuntimeName, string>> = Object.freeze({
  "sparsebert": "sparsebert",
  "ort-node": "ORT (node)",
  "ort-py": "ORT (Python)",
  "openvino": "OpenVINO",
  "deepsparse": "DeepSparse",
  "torch": "PyTorch",
});

/** Weight precision of a variant. */
export type Precision = "fp32" | "int8";

/** Pruning pattern: 4 output channels x 1 input channel blocks, or single weights. */
export type Pattern = "4x1" | "unstructured";

/** The ONNX layout of a model file. */
export type ModelForm = "fp32" | "int8-pt" | "int8-dyn" | "int8-qdq";

/** What each {@linkcode ModelForm} is and how it is written (compress/quantize_model.ts). */
export const MODEL_FORMS: Readonly<Record<ModelForm, string>> = Object.freeze({
  "fp32": "the fp32 graph (pruned variants: the same graph with zeros in the weights)",
  "int8-pt":
    "dynamic per-token int8: 8-bit per-channel weights, u7 activations quantized per token with " +
    "standard ops (ReduceMax/ReduceMin, Round, Clip, Cast) and MatMulInteger; sparsebert's " +
    "own scheme, so every runtime given it runs sparsebert's exact int8 weights",
  "int8-dyn":
    "ONNX Runtime's dynamic layout (DynamicQuantizeLinear -> MatMulInteger): per-tensor u8 " +
    "activations, 7-bit per-channel weights (ORT's reduce-range, no int16 saturation)",
  "int8-qdq": "static QDQ (QuantizeLinear/DequantizeLinear around MatMul): u8 activation scales " +
    "calibrated on seeded random token ids, 7-bit per-channel weights",
});

/** A variant of a model: precision and sparsity of its encoder linears. */
export interface Variant {
  /** Weight precision. */
  precision: Precision;
  /** Fraction of zero pruning units, 0 for dense. */
  sparsity: number;
  /** Pruning pattern, `null` for dense. */
  pattern: Pattern | null;
}

/** The fp32 variant a variant's files derive from (same sparsity and pattern). */
export function fp32Of(variant: Variant): Variant {
  return { ...variant, precision: "fp32" };
}

/** Stable key of a variant, e.g. `fp32-dense`, `int8-s90-4x1`. */
export function variantKey(variant: Variant): string {
  checkVariant(variant);
  if (variant.sparsity === 0) return `${variant.precision}-dense`;
  return `${variant.precision}-s${Math.round(variant.sparsity * 100)}-${variant.pattern}`;
}

/** Human label of a variant, e.g. `int8, 90% 4x1`. */
export function variantLabel(variant: Variant): string {
  if (variant.sparsity === 0) return `${variant.precision} dense`;
  return `${variant.precision} ${Math.round(variant.sparsity * 100)}% ${variant.pattern}`;
}

/** Throws on a variant that cannot be produced. */
export function checkVariant(variant: Variant): void {
  const { precision, sparsity, pattern } = variant;
  if (precision !== "fp32" && precision !== "int8") {
    throw new RangeError(`Variant precision must be fp32 or int8, got '${precision}'`);
  }
  if (typeof sparsity !== "number" || !(sparsity >= 0 && sparsity < 1)) {
    throw new RangeError(`Variant sparsity must be in [0, 1), got '${sparsity}'`);
  }
  if (sparsity === 0 && pattern !== null) {
    throw new RangeError(`A dense variant has no pattern, got '${pattern}'`);
  }
  if (sparsity > 0 && pattern !== "4x1" && pattern !== "unstructured") {
    throw new RangeError(`A sparse variant needs pattern 4x1 or unstructured, got '${pattern}'`);
  }
}

/** Builds a variant; `sparsity` 0 makes it dense. */
export function variant(precision: Precision, sparsity = 0, pattern: Pattern = "4x1"): Variant {
  const v: Variant = { precision, sparsity, pattern: sparsity === 0 ? null : pattern };
  checkVariant(v);
  return v;
}

/** One measured shape: tokens per sequence, sequences per call, threads per instance. */
export interface Scenario {
  /** Sequence length. */
  seq: number;
  /** Batch size. */
  batch: number;
  /** Threads. */
  threads: number;
}

/** Key of a scenario, e.g. `s128-b1-t2`. */
export function scenarioKey(s: Scenario): string {
  return `s${s.seq}-b${s.batch}-t${s.threads}`;
}

/** Where a model's fp32 ONNX file comes from. */
export type ModelSource =
  | {
    /** Written by tests/fixtures/write_test_model.ts with seeded random weights. */
    kind: "generated";
    /** A preset of tests/fixtures/write_test_model.ts. */
    preset: string;
    /** Overrides of the preset's config. */
    config?: Record<string, number>;
    /** Weight seed. */
    seed: number;
  }
  | {
    /** A real model from hub/registry.ts (fetched on first use). */
    kind: "registry";
    /** Registry name. */
    name: string;
  }
  | {
    /** A user's fp32 ONNX file (`bench:compare --model-file`), measured as it is. */
    kind: "file";
    /** Absolute path. */
    path: string;
  };

/** A model of the comparison. */
export interface ModelDef {
  /** Key (also the cache folder name). */
  key: string;
  /** Display name. */
  label: string;
  /** Where its fp32 file comes from. */
  source: ModelSource;
  /** Encoder layers, hidden size, feed-forward width (for the work estimate). */
  layers: number;
  /** Hidden size. */
  hidden: number;
  /** Feed-forward width. */
  intermediate: number;
  /** Longest sequence. */
  maxSeq: number;
  /** Default p90 bound (ms per call) of the latency-bound throughput search. */
  boundMs: number;
}

/** The models the comparison knows. */
export const MODEL_DEFS: Readonly<Record<string, ModelDef>> = Object.freeze({
  "bert-tiny": {
    key: "bert-tiny",
    label: "BERT-Tiny (generated: 2 layers, H 256, vocab 2048; smoke test)",
    source: {
      kind: "generated",
      preset: "bert-mini",
      config: { numLayers: 2, vocabSize: 2048, maxPositionEmbeddings: 128 },
      seed: 0,
    },
    layers: 2,
    hidden: 256,
    intermediate: 1024,
    maxSeq: 128,
    boundMs: 5,
  },
  "bert-mini": {
    key: "bert-mini",
    label: "BERT-Mini (generated: 4 layers, H 256)",
    source: { kind: "generated", preset: "bert-mini", seed: 0 },
    layers: 4,
    hidden: 256,
    intermediate: 1024,
    maxSeq: 512,
    boundMs: 10,
  },
  "distilbert": {
    key: "distilbert",
    label: "DistilBERT (generated: 6 layers, H 768)",
    source: { kind: "generated", preset: "distilbert", seed: 0 },
    layers: 6,
    hidden: 768,
    intermediate: 3072,
    maxSeq: 512,
    boundMs: 50,
  },
  "bert-base": {
    key: "bert-base",
    label: "BERT-Base (generated: 12 layers, H 768)",
    source: { kind: "generated", preset: "bert-base", seed: 0 },
    layers: 12,
    hidden: 768,
    intermediate: 3072,
    maxSeq: 512,
    boundMs: 100,
  },
  "bert-large": {
    key: "bert-large",
    label: "BERT-Large (generated: 24 layers, H 1024)",
    source: { kind: "generated", preset: "bert-large", seed: 0 },
    layers: 24,
    hidden: 1024,
    intermediate: 4096,
    maxSeq: 512,
    boundMs: 300,
  },
  "all-minilm-l6-v2": {
    key: "all-minilm-l6-v2",
    label: "all-MiniLM-L6-v2 (real weights: 6 layers, H 384)",
    source: { kind: "registry", name: "all-minilm-l6-v2" },
    layers: 6,
    hidden: 384,
    intermediate: 1536,
    maxSeq: 512,
    boundMs: 20,
  },
});

/** Models registered from users' files ({@linkcode registerModelFile}). */
const FILE_MODELS = new Map<string, ModelDef>();

/**
 * Makes a user's fp32 ONNX file a model of this process's comparison (`--model-file`).
 *
 * @throws RangeError when the definition is not a file's or its key is taken.
 */
export function registerModelFile(def: ModelDef): void {
  if (def.source.kind !== "file") throw new RangeError(`Model '${def.key}' is not a file's`);
  if (MODEL_DEFS[def.key] !== undefined) {
    throw new RangeError(`Model key '${def.key}' is a built-in model's`);
  }
  FILE_MODELS.set(def.key, def);
}

/**
 * The plan for one user's file: its own weights as they are (`sparsity` and `pattern`
 * measured from the file; the int8 forms quantized from it, as for every model) in fp32 and
 * int8, each runtime's best int8 form, in `scenarios` (default seq 128, batch 1, 2 threads); no
 * latency-bound search and no time budget.
 */
export function filePlan(
  model: string,
  sparsity: number,
  pattern: Pattern,
  scenarios: Scenario[] = [PRIMARY],
): Plan {
  const base = planFor("default");
  const fp32 = variant("fp32", sparsity, pattern);
  const int8 = variant("int8", sparsity, pattern);
  return {
    ...base,
    name: "file",
    latency: [{ model, variants: [fp32, int8], scenarios, forms: "best" }],
    bound: [],
    budgetS: Infinity,
    chart: { model, scenario: scenarios[0] },
  };
}

/** Looks up a model definition; throws naming the known ones. */
export function modelDef(key: string): ModelDef {
  const def = MODEL_DEFS[key] ?? FILE_MODELS.get(key);
  if (def === undefined) {
    throw new RangeError(
      `Unknown model '${key}', expected one of ${Object.keys(MODEL_DEFS).join(", ")}`,
    );
  }
  return def;
}

/**
 * Multiply-accumulates of one encoder call: the linears (scaled by their density) plus the two
 * attention products. Used for the time estimate and the fraction-of-peak figures.
 */
export function encoderMacs(model: ModelDef, s: Scenario, density = 1): number {
  const tokens = s.seq * s.batch;
  const linear = model.layers * (4 * model.hidden ** 2 + 2 * model.hidden * model.intermediate);
  const attention = model.layers * 2 * s.seq * model.hidden;
  return tokens * (linear * density + attention);
}

/** The ONNX forms each runtime is given for an int8 variant, in the order they are tried. */
export const INT8_FORMS: Readonly<Record<RuntimeName, readonly ModelForm[]>> = Object.freeze({
  // sparsebert's kernels run per-token u7 activations whatever the file; the pt file holds its
  // 8-bit weights (the dyn and qdq files hold 7-bit weights).
  "sparsebert": ["int8-pt"],
  "ort-node": ["int8-pt", "int8-dyn", "int8-qdq"],
  "ort-py": ["int8-pt", "int8-dyn", "int8-qdq"],
  "openvino": ["int8-pt", "int8-dyn", "int8-qdq"],
  // DeepSparse 1.8.0 aborts at compile time on MatMulInteger graphs (int8-pt, int8-dyn).
  "deepsparse": ["int8-qdq"],
  // onnx2torch has no int8 converters: tried once, the failure is reported.
  "torch": ["int8-qdq"],
});

/** How each runtime loads and runs a model (for the report). */
export const RUNTIME_NOTES: Readonly<Record<RuntimeName, string>> = Object.freeze({
  "sparsebert":
    "Deno subprocess (bench/compare/deno_runner.ts): hub/load.ts imports the ONNX file, " +
    "BertEncoder runs it; per linear: sparse kernel when the measured sparsity (fp32: element, " +
    "int8: 4x1 block) reaches the threshold, dense kernel otherwise; int8 weights are taken " +
    "from the file as they are",
  "ort-node": "onnxruntime-node in a Deno subprocess: intraOpNumThreads = threads, " +
    "interOpNumThreads 1, sequential, graph optimization all",
  "ort-py": "onnxruntime (PyPI) via bench/peers/peer_runner.py: intra_op_num_threads = threads, " +
    "inter_op 1, sequential, ORT_ENABLE_ALL",
  "openvino": "OpenVINO (PyPI) reads the ONNX file, shapes fixed to [batch, seq], " +
    "INFERENCE_NUM_THREADS = threads x instances, NUM_STREAMS = instances, f32 precision hint",
  "deepsparse":
    "DeepSparse 1.8.0 (last PyPI release, own Python 3.11 venv) compile_model with fixed " +
    "input shapes, num_cores = threads x instances; int8 only as static QDQ (it aborts on " +
    "MatMulInteger graphs); on AVX2 without VNNI its int8 is emulated",
  "torch": "PyTorch (PyPI, optional: --torch) through onnx2torch; fp32 only (no int8 converters)",
});

/** A group of measurements: one model, its variants, each run in each scenario. */
export interface LatencyBlock {
  /** Model key. */
  model: string;
  /** Variants. */
  variants: Variant[];
  /** Scenarios. */
  scenarios: Scenario[];
  /**
   * Int8 layouts given to each runtime: `all` it accepts (default), or `best`: the fastest
   * layout it had on an earlier int8 group of the same model (every accepted layout when
   * there is none).
   */
  forms?: "all" | "best";
  /** Rounds, instead of the plan's. */
  rounds?: number;
  /** Turn time (ms), instead of the plan's. */
  roundMs?: number;
}

/** Instances (processes or streams) x threads per instance. */
export interface InstanceConfig {
  /** Concurrent instances. */
  instances: number;
  /** Threads per instance. */
  threads: number;
}

/**
 * The latency-bound throughput search of one model. It runs right after the model's last
 * latency block: on the weights of each listed variant (its sparsity and pattern), every
 * runtime runs its fastest precision and layout of the latency groups of the same model,
 * sequence length and batch (the listed variant's own precision and first layout when it had
 * none).
 */
export interface BoundBlock {
  /** Model key. */
  model: string;
  /** The weights searched (sparsity and pattern; precision is the fallback). */
  variants: Variant[];
  /** Sequence length. */
  seq: number;
  /** Batch sizes tried. */
  batches: number[];
  /** Instance x thread configurations tried. */
  configs: InstanceConfig[];
  /** p90 bound per call (ms); default the model's. */
  boundMs?: number;
}

/** A whole run: what to measure and how long. */
export interface Plan {
  /** Run size (`"file"`: a user's file, {@linkcode filePlan}). */
  name: "quick" | "default" | "full" | "file";
  /** Latency measurements, most important first (the budget cuts from the end). */
  latency: LatencyBlock[];
  /** Latency-bound throughput searches. */
  bound: BoundBlock[];
  /** Interleaved rounds per scenario. */
  rounds: number;
  /** Target time of one contestant's turn in a round (ms). */
  roundMs: number;
  /** Untimed iterations when a contestant starts. */
  warmup: number;
  /** Pause before each turn so that the previous runtime's threads go idle (ms). */
  settleMs: number;
  /**
   * Timed seconds after which a contestant takes no more turns in a group (it keeps 2 rounds
   * at least): bounds the time a very slow runtime (DeepSparse's emulated int8 on BERT-Large)
   * adds to a group.
   */
  maxContestantS: number;
  /** Seconds of each configuration's turn in the bound search (split over rounds). */
  boundSeconds: number;
  /** Wall-clock budget (s): a step estimated to end past it is skipped and reported. */
  budgetS: number;
  /** The model and scenario of the latency-vs-sparsity chart. */
  chart: { model: string; scenario: Scenario };
}

const fp32 = (s = 0, p: Pattern = "4x1"): Variant => variant("fp32", s, p);
const int8 = (s = 0, p: Pattern = "4x1"): Variant => variant("int8", s, p);
const both = (s = 0, p: Pattern = "4x1"): Variant[] => [fp32(s, p), int8(s, p)];

/** Every sparsity level and pattern of issue 6, both precisions. */
function allVariants(): Variant[] {
  const out = both(0);
  for (const p of ["4x1", "unstructured"] as const) {
    for (const s of [0.7, 0.8, 0.9]) out.push(...both(s, p));
  }
  return out;
}

export function allScenarios(maxSeq = 512): Scenario[] {
  const out: Scenario[] = [];
  for (const seq of [128, 384]) {
    if (seq > maxSeq) continue;
    for (const batch of [1, 8]) {
      for (const threads of [1, 2]) out.push({ seq, batch, threads });
    }
  }
  return out;
}

const PRIMARY: Scenario = { seq: 128, batch: 1, threads: 2 };

/**
 * The plans. `quick` is a smoke test (tiny generated model, dense and 90% 4x1, one scenario,
 * short rounds). `default` is sized for about 22 minutes on a 2-core machine with the model
 * files already prepared: the acceptance scenario (BERT-Base, seq 128, batch 1, 2 threads)
 * over the 4x1 sparsity sweep with longer rounds, the bound search on BERT-Base,
 * all-MiniLM-L6-v2 (real weights) and DistilBERT dense and at 90% 4x1, and one more scenario
 * per axis (1 thread, batch 8, seq 384) on all-MiniLM-L6-v2. Unstructured sparsity, BERT-Mini
 * and BERT-Large are in `full` only.
 * `full` is every model x variant x scenario of issue 6 (hours).
 */
export function planFor(name: Plan["name"]): Plan {
  if (name === "quick") {
    return {
      name,
      latency: [{
        model: "bert-tiny",
        variants: [...both(0), ...both(0.9)],
        scenarios: [{ seq: 64, batch: 1, threads: 1 }],
      }],
      bound: [{
        model: "bert-tiny",
        variants: [int8(0.9)],
        seq: 64,
        batches: [1],
        configs: [{ instances: 1, threads: 1 }, { instances: 2, threads: 1 }],
      }],
      rounds: 2,
      roundMs: 100,
      warmup: 2,
      settleMs: 50,
      maxContestantS: 5,
      boundSeconds: 0.4,
      budgetS: 170,
      chart: { model: "bert-tiny", scenario: { seq: 64, batch: 1, threads: 1 } },
    };
  }
  if (name === "default") {
    return {
      name,
      latency: [
        {
          model: "bert-base",
          variants: [...both(0), ...both(0.9)],
          scenarios: [PRIMARY],
          rounds: 6,
          roundMs: 400,
        },
        {
          model: "bert-base",
          variants: [...both(0.8), ...both(0.7)],
          scenarios: [PRIMARY],
          forms: "best",
        },
        { model: "all-minilm-l6-v2", variants: [...both(0), ...both(0.9)], scenarios: [PRIMARY] },
        {
          // Both precisions of both weights in every scenario: the row is each runtime's
          // best form of the same weights (dense and 90%), fp32 and int8 alike.
          model: "all-minilm-l6-v2",
          variants: [...both(0), ...both(0.9)],
          scenarios: [
            { seq: 128, batch: 1, threads: 1 },
            { seq: 128, batch: 8, threads: 2 },
            { seq: 384, batch: 1, threads: 2 },
          ],
          forms: "best",
          rounds: 3,
        },
        {
          model: "distilbert",
          variants: [...both(0), ...both(0.9)],
          scenarios: [PRIMARY],
          rounds: 3,
        },
      ],
      bound: [{
        model: "bert-base",
        variants: [fp32(0), int8(0.9)],
        seq: 128,
        batches: [1],
        configs: [{ instances: 1, threads: 2 }, { instances: 2, threads: 1 }],
      }],
      rounds: 4,
      roundMs: 300,
      warmup: 2,
      settleMs: 200,
      maxContestantS: 20,
      boundSeconds: 2,
      budgetS: 22 * 60,
      chart: { model: "bert-base", scenario: PRIMARY },
    };
  }
  if (name === "full") {
    const models = ["bert-base", "all-minilm-l6-v2", "distilbert", "bert-mini", "bert-large"];
    return {
      name,
      latency: models.map((model) => ({
        model,
        variants: allVariants(),
        scenarios: [PRIMARY, ...allScenarios().filter((s) => scenarioKey(s) !== "s128-b1-t2")],
      })),
      bound: models.map((model) => ({
        model,
        variants: [fp32(0), int8(0), fp32(0.9), int8(0.9)],
        seq: 128,
        batches: [1, 8],
        configs: [
          { instances: 1, threads: 1 },
          { instances: 1, threads: 2 },
          { instances: 2, threads: 1 },
        ],
      })),
      rounds: 7,
      roundMs: 500,
      warmup: 3,
      settleMs: 200,
      maxContestantS: 60,
      boundSeconds: 4,
      budgetS: Infinity,
      chart: { model: "bert-base", scenario: PRIMARY },
    };
  }
  throw new RangeError(`Unknown plan '${name}', expected quick, default or full`);
}

/** Throws when a plan names an unknown model or an impossible scenario. */
export function checkPlan(plan: Plan): void {
  const checkCount = (what: string, v: number, max: number): void => {
    if (!Number.isInteger(v) || v < 1 || v > max) {
      throw new RangeError(`${what} must be an integer in [1, ${max}], got '${v}'`);
    }
  };
  for (const block of plan.latency) {
    const def = modelDef(block.model);
    block.variants.forEach(checkVariant);
    if (block.rounds !== undefined) checkCount("Rounds", block.rounds, 1000);
    if (block.roundMs !== undefined && !(block.roundMs > 0)) {
      throw new RangeError(`Round time must be positive, got '${block.roundMs}'`);
    }
    if (block.forms !== undefined && block.forms !== "all" && block.forms !== "best") {
      throw new RangeError(`Block forms must be all or best, got '${block.forms}'`);
    }
    for (const s of block.scenarios) {
      checkCount("Sequence length", s.seq, def.maxSeq);
      checkCount("Batch", s.batch, 1024);
      checkCount("Threads", s.threads, 256);
    }
  }
  for (const block of plan.bound) {
    const def = modelDef(block.model);
    block.variants.forEach(checkVariant);
    checkCount("Sequence length", block.seq, def.maxSeq);
    block.batches.forEach((b) => checkCount("Batch", b, 1024));
    for (const c of block.configs) {
      checkCount("Instances", c.instances, 64);
      checkCount("Threads", c.threads, 256);
    }
  }
  checkCount("Rounds", plan.rounds, 1000);
  if (
    !(plan.roundMs > 0) || !(plan.boundSeconds > 0) || !(plan.budgetS > 0) ||
    !(plan.maxContestantS > 0)
  ) {
    throw new RangeError("Round time, bound-search time, time cap and budget must be positive");
  }
}

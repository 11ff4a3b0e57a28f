/**
 * `deno task cli sparsify`: dense model in, 4x1-sparse int8 ONNX out, quality recovered by
 * distillation from the dense model (compress/sparsify.ts; the trainer runs on JAX in
 * `.cache/venv/train`).
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions, UsageError } from "./_command.ts";
import {
  applyResult,
  checkTeacher,
  prepareBundle,
  readBundle,
  resolveTrainOptions,
  runTrainer,
  type TrainEvent,
  trainingTexts,
  type TrainOptions,
  trainPython,
  updateBundleOptions,
} from "../compress/sparsify.ts";
import { buildCorpus, DEFAULT_CORPUS } from "../compress/corpus.ts";
import { readTexts } from "../compress/calibrate.ts";
import { DEFAULT_RETRIEVAL_SET } from "../compress/evaluate.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { exists } from "../formats/fs.ts";
import {
  choiceOption,
  numberOption,
  resolveModelPath,
  withProgress,
  writeModelOutput,
} from "./_model_tools.ts";

/** One-line summary. */
export const SUMMARY = "Distill a dense model into a 4x1-sparse int8 model (JAX trainer)";

/** Help text. */
export const HELP = `Usage: deno task cli sparsify --model IN --out OUT --sparsity S [options]

Prunes the encoder's linears to 4x1 blocks (4 output channels x 1 input channel) at sparsity S
in every linear (or over all of them, --scope global), recovering quality by distillation from the dense model on unlabeled English
text (pooled-embedding cosine + similarity-matrix loss and every layer's hidden states), with a
cubic pruning schedule from the starting sparsity to S; then quantizes to int8 (cli quantize,
dynamic per-token activations). Writes OUT (int8) and the sparse fp32 model beside it as
<OUT stem>.fp32.onnx, same graph as the input with zeros in the pruned blocks.

Training runs in the JAX venv .cache/venv/train (deno task setup:train installs it). The texts
default to WordNet's glosses and examples (Debian package wordnet-base, built into
${DEFAULT_CORPUS} on first use); texts overlapping the evaluation texts are refused.

Options:
  --model IN            fp32 .onnx file, folder with model.onnx, or cached model name
  --out OUT             output .onnx file (int8; with --no-int8 the sparse fp32 model)
  --sparsity S          target fraction of zero 4x1 blocks, 0 < S < 1
  --scope SCOPE         per-layer (default: every linear at S) | global (the blocks of all
                        linears ranked together, S over all; each keeps 2% of its blocks;
                        needs --init-sparsity below S or --init dense: the OBS start is per
                        layer)
  --init I              obs (default: start from the OBS one-shot pruning) | dense
  --init-sparsity S0    OBS starting sparsity, cubic schedule from S0 to S (default S)
  --prune-fraction F    fraction of the steps the schedule takes (default 0.5)
  --corpus FILE         training texts, one per line (default ${DEFAULT_CORPUS})
  --build-corpus        (re)build the default corpus; without --model, only that
  --eval-texts FILE     texts that must not be trained on (default ${DEFAULT_RETRIEVAL_SET})
  --max-texts N         training texts sampled from the corpus (default 100000)
  --max-length N        tokens per text, longer ones cut (default 64)
  --obs-texts N         corpus texts OBS calibrates on (default 64)
  --time-budget MIN     training wall-time limit in minutes (default 30); the step count is
                        fitted to it after the first timed steps
  --steps N             train exactly N steps (still stopped by --time-budget)
  --batch-size N        texts per step (default 32)
  --lr X                peak learning rate (default 5e-4, AdamW, cosine decay)
  --hidden-weight X     weight of the hidden-state loss (default 1)
  --work DIR            work folder: bundle, checkpoints, logs (default OUT.work)
  --resume              continue the run in the work folder from its last checkpoint
  --qat                 quantization-aware training: int8 fake quantization (per-channel
                        weights, per-token activations, straight-through gradients) in the
                        student; also on --resume, to fine-tune a sparse run for int8
  --qat-qmax N          activation steps of --qat: 255 (default, AVX-512 VNNI kernels) | 127
  --no-int8             stop after the sparse fp32 model
  --threads N           ONNX Runtime threads for OBS and quantize checks (default 1)
  --json                print the report as JSON (no progress)
  -h, --help            show this help

Evaluate the result against the dense model with
  deno task cli evaluate --model IN --variant OUT`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "out", "sparsity", "scope", "init", "init-sparsity", "prune-fraction"),
  ...stringOptions("corpus", "eval-texts", "max-texts", "max-length", "obs-texts"),
  ...stringOptions("time-budget", "steps", "batch-size", "lr", "hidden-weight", "work"),
  ...stringOptions("threads"),
  ...flagOptions("build-corpus", "resume", "no-int8", "json", "qat"),
  ...stringOptions("qat-qmax"),
} as const;

type Values = Partial<Record<keyof typeof OPTIONS, string | boolean>>;

function intOption(flag: string, value: string | boolean | undefined, min = 1): number | undefined {
  const n = numberOption(flag, value as string | undefined);
  if (n !== undefined && !(Number.isInteger(n) && n >= min)) {
    throw new UsageError(`${flag} must be an integer >= ${min}, got "${value}"`);
  }
  return n;
}

/** The parsed sparsify options (exported for the tests). */
export interface SparsifyPlan {
  model?: string;
  out?: string;
  train: TrainOptions;
  corpus: string;
  evalTexts: string;
  maxTexts: number;
  maxLength: number;
  obsTexts: number;
  work?: string;
  resume: boolean;
  int8: boolean;
  buildCorpus: boolean;
  threads?: number;
}

/** Checks the options and fills in the defaults; throws a {@linkcode UsageError} on a bad one. */
export function parseSparsifyOptions(values: Values): SparsifyPlan {
  const str = (k: keyof typeof OPTIONS): string | undefined => values[k] as string | undefined;
  const buildOnly = values["build-corpus"] === true && str("model") === undefined;
  if (!buildOnly) {
    if (!str("model")) throw new UsageError("--model is required");
    if (!str("out")) throw new UsageError("--out is required");
  }
  const sparsity = numberOption("--sparsity", str("sparsity"));
  if (sparsity === undefined && !buildOnly) throw new UsageError("--sparsity is required");
  if (sparsity !== undefined && !(sparsity > 0 && sparsity < 1)) {
    throw new UsageError(`--sparsity must be in (0, 1), got "${str("sparsity")}"`);
  }
  const init = choiceOption("--init", str("init"), ["obs", "dense"] as const) ?? "obs";
  const scope = choiceOption("--scope", str("scope"), ["per-layer", "global"] as const) ??
    "per-layer";
  const initSparsity = numberOption("--init-sparsity", str("init-sparsity"));
  if (init === "dense" && initSparsity !== undefined) {
    throw new UsageError("--init-sparsity is only used by --init obs");
  }
  const budget = numberOption("--time-budget", str("time-budget"));
  if (budget !== undefined && !(budget > 0)) {
    throw new UsageError(`--time-budget must be a positive number of minutes, got "${budget}"`);
  }
  const lr = numberOption("--lr", str("lr"));
  const hiddenWeight = numberOption("--hidden-weight", str("hidden-weight"));
  if (hiddenWeight !== undefined && !(hiddenWeight >= 0)) {
    throw new UsageError(`--hidden-weight must be >= 0, got "${hiddenWeight}"`);
  }
  const partial: Partial<TrainOptions> & { sparsity: number } = {
    sparsity: sparsity ?? 0.5,
    init,
    scope,
    qat: values.qat === true,
  };
  const qatQmax = intOption("--qat-qmax", values["qat-qmax"]);
  if (qatQmax !== undefined) partial.qatActivationQmax = qatQmax;
  if (initSparsity !== undefined) partial.initSparsity = initSparsity;
  if (budget !== undefined) partial.timeBudgetSeconds = budget * 60;
  const steps = intOption("--steps", values.steps);
  if (steps !== undefined) partial.steps = steps;
  const batch = intOption("--batch-size", values["batch-size"]);
  if (batch !== undefined) partial.batchSize = batch;
  if (lr !== undefined) partial.learningRate = lr;
  if (hiddenWeight !== undefined) partial.hiddenWeight = hiddenWeight;
  const pf = numberOption("--prune-fraction", str("prune-fraction"));
  if (pf !== undefined) partial.pruneFraction = pf;
  let train: TrainOptions;
  try {
    train = resolveTrainOptions(partial);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const maxLength = intOption("--max-length", values["max-length"], 8) ?? 64;
  return {
    model: str("model"),
    out: str("out"),
    train,
    corpus: str("corpus") ?? DEFAULT_CORPUS,
    evalTexts: str("eval-texts") ?? DEFAULT_RETRIEVAL_SET,
    maxTexts: intOption("--max-texts", values["max-texts"], 16) ?? 100000,
    maxLength,
    obsTexts: intOption("--obs-texts", values["obs-texts"]) ?? 64,
    work: str("work"),
    resume: values.resume === true,
    int8: values["no-int8"] !== true,
    buildCorpus: values["build-corpus"] === true,
    threads: intOption("--threads", values.threads),
  };
}

/** `dir/model.onnx` -> `dir/model.fp32.onnx`. */
export function fp32Path(out: string): string {
  return out.endsWith(".onnx") ? `${out.slice(0, -5)}.fp32.onnx` : `${out}.fp32.onnx`;
}

async function quantize(
  fp32: string,
  out: string,
  calibration: string,
  threads: number | undefined,
): Promise<Record<string, unknown>> {
  const args = ["run", "-A", new URL("./cli.ts", import.meta.url).pathname, "quantize"];
  args.push("--model", fp32, "--out", out, "--calibration", calibration, "--json");
  if (threads !== undefined) args.push("--threads", String(threads));
  const r = await new Deno.Command(Deno.execPath(), { args, stdout: "piped", stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(r.stdout);
  let parsed: Record<string, unknown>;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new Error(
      `cli quantize failed (exit ${r.code}): ${new TextDecoder().decode(r.stderr).trim()}`,
    );
  }
  if (parsed.ok !== true) throw new Error(`cli quantize failed: ${parsed.error}`);
  return parsed;
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, ({ values }) => {
    const json = values.json;
    const plan = parseSparsifyOptions(values);
    const t0 = performance.now();
    const log = (line: string): void => {
      if (!json) console.error(line);
    };
    return withProgress(json, async (progress) => {
      if (plan.buildCorpus) {
        const c = await buildCorpus(DEFAULT_CORPUS, { force: true });
        log(`corpus: ${c.texts} texts in ${c.path}`);
        if (plan.model === undefined) {
          if (json) console.log(JSON.stringify({ ok: true, corpus: c }, null, 2));
          return 0;
        }
      }
      const out = plan.out!;
      const work = plan.work ?? `${out}.work`;
      let python: string;
      let input: string;
      let info: Record<string, unknown> = {};
      if (plan.resume) {
        const bundle = await readBundle(work);
        input = bundle.input;
        python = await trainPython();
        if (bundle.options.sparsity !== plan.train.sparsity) {
          throw new Error(
            `--resume: the run in "${work}" targets sparsity ${bundle.options.sparsity}, not ${plan.train.sparsity}`,
          );
        }
        if (!await exists(`${work}/checkpoint.npz`)) {
          throw new Error(`--resume: no checkpoint in "${work}" yet; run without --resume`);
        }
        // A resumed run keeps its recipe; --steps (more steps), --time-budget (for this
        // invocation) and --qat (fine-tuning for int8) may change.
        const patch: Partial<TrainOptions> = {};
        if (values.steps !== undefined) patch.steps = plan.train.steps;
        if (values.qat === true) patch.qat = true;
        if (values["qat-qmax"] !== undefined) {
          patch.qatActivationQmax = plan.train.qatActivationQmax;
        }
        if (values["time-budget"] !== undefined) {
          patch.timeBudgetSeconds = plan.train.timeBudgetSeconds;
        }
        await updateBundleOptions(work, patch);
      } else {
        input = await resolveModelPath(plan.model);
        if (plan.corpus === DEFAULT_CORPUS && !await exists(DEFAULT_CORPUS)) {
          log(`building the corpus ${DEFAULT_CORPUS} (apt-get download wordnet-base)`);
          await buildCorpus(DEFAULT_CORPUS);
        }
        const evaluation = await readTexts(plan.evalTexts);
        const texts = await trainingTexts(plan.corpus, evaluation, {
          maxTexts: plan.maxTexts,
          seed: plan.train.seed,
          evaluationName: plan.evalTexts,
        });
        python = await trainPython();
        log(`${texts.length} training texts from ${plan.corpus}; preparing ${work}`);
        const b = await prepareBundle(input, texts, work, {
          ...plan.train,
          maxLength: plan.maxLength,
          obsTexts: plan.obsTexts,
          onProgress: progress.onProgress,
        });
        progress.done();
        if (b.obsTokens) {
          log(
            `OBS start at ${plan.train.initSparsity}: ${b.obsTokens} calibration tokens, ${
              b.obsSeconds.toFixed(1)
            } s`,
          );
        }
        info = { texts: b.texts, tokens: b.tokens, obsTokens: b.obsTokens };
        await Deno.writeTextFile(`${work}/quantize_texts.txt`, texts.slice(0, 32).join("\n"));
      }
      const onEvent = (e: TrainEvent): void => {
        if (e.event === "step") {
          progress.onProgress("train", e.step as number, e.totalSteps as number);
          if ((e.step as number) % 100 === 0) {
            progress.done();
            log(
              `step ${e.step}/${e.totalSteps} loss ${(e.loss as number).toFixed(4)} (cos ${
                (e.cos as number).toFixed(4)
              }, hidden ${(e.hidden as number).toFixed(4)}) sparsity ${
                (e.sparsity as number).toFixed(3)
              } ${((e.elapsed as number) / 60).toFixed(1)} min`,
            );
          }
        } else if (e.event === "valid") {
          progress.done();
          log(`step ${e.step}: validation loss ${(e.loss as number).toFixed(4)}`);
        } else if (e.event === "plan") {
          log(
            `${e.totalSteps} steps fit the budget (${
              (e.secondsPerStep as number).toFixed(2)
            } s/step)`,
          );
        } else if (e.event === "start" || e.event === "resumed" || e.event === "budget") {
          progress.done();
          log(`trainer: ${JSON.stringify(e)}`);
        }
      };
      const done = await runTrainer(work, { resume: plan.resume, python, onEvent });
      progress.done();
      const forwardCheck = await checkTeacher(input, work, plan.threads);
      if (forwardCheck.minCosine < 0.999) {
        log(
          `warning: the trainer's teacher embeddings differ from ONNX Runtime's (min cosine ${
            forwardCheck.minCosine.toFixed(5)
          }): its forward pass does not match this model`,
        );
      }
      const analysis = await analyzeOnnx(input);
      await applyResult(analysis, work, input);
      const fp32 = plan.int8 ? fp32Path(out) : out;
      const written = await writeModelOutput(fp32, analysis.source, analysis);
      log(`wrote ${fp32} (${(written.bytes / 2 ** 20).toFixed(1)} MiB)`);
      let quant: Record<string, unknown> | null = null;
      if (plan.int8) {
        quant = await quantize(fp32, out, `${work}/quantize_texts.txt`, plan.threads);
        log(`wrote ${out} (int8)`);
      }
      const report = {
        ok: true,
        input,
        output: out,
        fp32,
        work,
        sparsity: plan.train.sparsity,
        pattern: "4x1",
        init: plan.train.init,
        training: done,
        forwardCheck,
        ...info,
        int8: quant === null ? null : { bytes: quant.bytes, ortCheck: quant.ortCheck ?? null },
        wallSeconds: (performance.now() - t0) / 1000,
      };
      if (json) console.log(JSON.stringify(report, null, 2));
      else {
        console.log(
          `sparsified ${input} -> ${out}: 4x1 sparsity ${
            (done.sparsity as number).toFixed(4)
          }, ${done.steps} steps, validation loss ${
            (done.startValidLoss as number).toFixed(4)
          } -> ${(done.validLoss as number).toFixed(4)}, ${
            (report.wallSeconds / 60).toFixed(1)
          } min\nevaluate: deno task cli evaluate --model ${input} --variant ${out}`,
        );
      }
      return 0;
    });
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

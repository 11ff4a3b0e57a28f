/**
 * `deno task cli run`: runs a pipeline on texts given on the command line.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import {
  type ClassificationResult,
  declaredPooling,
  FEATURE_POOLING,
  type FeaturePooling,
  pipeline,
  type PipelineTask,
  type TokenClassificationResult,
} from "../pipelines/pipeline.ts";
import type { QuestionAnsweringResult } from "../pipelines/logits.ts";

/** One-line summary. */
export const SUMMARY = "Run a model on texts: embeddings, classification, tagging, QA";

/** Help text. */
export const HELP =
  `Usage: deno task cli run --model PATH|NAME [options] --text "..." [--text "..."]

Loads a model (an .onnx file, a Hugging Face folder with config.json + model.safetensors, or a
known model name such as all-minilm-l6-v2) and runs a pipeline on the texts.

Options:
  --model M          model file, folder or registry name (required)
  --task T           feature-extraction (default) | text-classification |
                     token-classification | question-answering
  --text S           a text; repeat for a batch (for question-answering: the context)
  --question S       the question (question-answering)
  --pooling P        mean | cls | max | mean_sqrt_len | weightedmean | lasttoken | none
                     (feature-extraction; default: what the model declares
                     in its sentence-transformers files or registry entry, else mean)
  --no-normalize     keep the raw pooled vectors (default: L2-normalised, unless the model
                     declares no Normalize module)
  --tokenizer PATH   tokenizer.json to use (default: tokenizer.json, <stem>-tokenizer.json or
                     <stem>.tokenizer.json beside the model)
  --top-k N          labels or answers to print (default 1)
  --max-length N     longest tokenized text (default: the model's limit)
  --truncation       cut over-long texts instead of failing
  --threads N        kernel threads (default: physical cores)
  --json             print one JSON object with the full result
  -h, --help         show this help

Errors (missing or truncated file, a graph that is not a BERT-family encoder, a text over the
limit) print one line and exit with status 1.`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "question", "pooling", "tokenizer", "top-k", "max-length"),
  ...stringOptions("threads"),
  ...flagOptions("no-normalize", "truncation", "json"),
  task: { type: "string", default: "feature-extraction" },
  text: { type: "string", multiple: true },
} as const;

const TASKS: PipelineTask[] = [
  "feature-extraction",
  "text-classification",
  "token-classification",
  "question-answering",
];

function positiveInt(name: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    throw new Error(`--${name} must be a positive integer, got "${value}"`);
  }
  return n;
}

function preview(values: Float32Array, count = 6): string {
  const shown = Array.from(values.subarray(0, count), (v) => v.toFixed(5)).join(", ");
  return `[${shown}${values.length > count ? ", ..." : ""}]`;
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
    return await run(values);
  });
}

async function run(values: {
  model?: string;
  task: string;
  text?: string[];
  question?: string;
  pooling?: string;
  tokenizer?: string;
  "no-normalize": boolean;
  "top-k"?: string;
  "max-length"?: string;
  truncation: boolean;
  threads?: string;
  json: boolean;
}): Promise<number> {
  if (values.model === undefined) throw new Error("--model is required (a file, folder or name)");
  const task = values.task as PipelineTask;
  if (!TASKS.includes(task)) {
    throw new Error(`Unknown task "${values.task}": expected one of ${TASKS.join(", ")}`);
  }
  const texts = values.text ?? [];
  if (texts.length === 0) throw new Error("--text is required (repeat it for a batch)");
  if (task === "question-answering" && values.question === undefined) {
    throw new Error("--question is required for question-answering");
  }
  if (
    values.pooling !== undefined &&
    !(FEATURE_POOLING as readonly string[]).includes(values.pooling)
  ) {
    throw new Error(`--pooling must be ${FEATURE_POOLING.join(", ")}; got "${values.pooling}"`);
  }
  const topK = positiveInt("top-k", values["top-k"]) ?? 1;
  const started = performance.now();
  const pipe = await pipeline(task, values.model, {
    maxLength: positiveInt("max-length", values["max-length"]),
    threads: positiveInt("threads", values.threads),
    truncation: values.truncation,
    tokenizer: values.tokenizer,
    log: (line) => console.error(line),
  });
  try {
    const loadMs = performance.now() - started;
    const t0 = performance.now();
    let result: unknown;
    switch (task) {
      case "feature-extraction": {
        const declared = pipe.model.embedding ?? null;
        const pooling = (values.pooling as FeaturePooling | undefined) ??
          (declared === null ? "mean" : declaredPooling(declared));
        const normalize = !values["no-normalize"] && (declared?.normalize ?? true);
        const out = await (pipe as Awaited<ReturnType<typeof pipeline<"feature-extraction">>>)(
          texts,
          { pooling, normalize },
        );
        const from = values.pooling !== undefined || declared === null
          ? ""
          : `, declared by ${
            declared.source === "registry" ? "the registry entry" : declared.source
          }`;
        result = { ...out, pooling, normalize };
        if (!values.json) {
          const width = out.dims.at(-1)!;
          const rows = out.data.length / width;
          console.log(`dims [${out.dims.join(", ")}] (${pooling} pooling${from})`);
          for (let r = 0; r < rows; r++) {
            const row = out.data.subarray(r * width, (r + 1) * width);
            const norm = Math.sqrt(row.reduce((s, v) => s + v * v, 0));
            console.log(`${String(r).padStart(3)}  norm ${norm.toFixed(4)}  ${preview(row)}`);
          }
        }
        break;
      }
      case "text-classification": {
        const out = await (pipe as Awaited<ReturnType<typeof pipeline<"text-classification">>>)(
          texts,
          { topK: Math.max(topK, 1) },
        );
        const rows = (topK === 1
          ? (out as ClassificationResult[]).map((r) => [r])
          : out) as ClassificationResult[][];
        result = rows;
        if (!values.json) {
          rows.forEach((labels, i) => {
            console.log(
              `${String(i).padStart(3)}  ${
                labels.map((l) =>
                  `${l.label} ${l.score.toFixed(4)}`
                ).join("  ")
              }`,
            );
          });
        }
        break;
      }
      case "token-classification": {
        const out = await (pipe as Awaited<ReturnType<typeof pipeline<"token-classification">>>)(
          texts,
        ) as TokenClassificationResult[][];
        result = out;
        if (!values.json) {
          out.forEach((entities, i) => {
            console.log(`${String(i).padStart(3)}  ${entities.length} tagged word pieces`);
            for (const e of entities) {
              console.log(
                `     ${String(e.index).padStart(4)}  ${e.word}  ${e.entity} ${e.score.toFixed(4)}`,
              );
            }
          });
        }
        break;
      }
      default: {
        const qa = pipe as Awaited<ReturnType<typeof pipeline<"question-answering">>>;
        const answers: QuestionAnsweringResult[] = [];
        for (const context of texts) {
          const out = await qa(values.question!, context, { topK });
          answers.push(...(Array.isArray(out) ? out : [out]));
        }
        result = answers;
        if (!values.json) {
          for (const a of answers) console.log(`${a.score.toFixed(4)}  ${a.answer}`);
        }
      }
    }
    const runMs = performance.now() - t0;
    if (values.json) {
      const data = result as { data?: Float32Array };
      const body = data.data instanceof Float32Array
        ? { ...data, data: Array.from(data.data) }
        : result;
      console.log(JSON.stringify({
        task,
        model: pipe.model.path,
        result: body,
        timing: { loadMs, runMs },
      }));
    } else {
      console.error(`loaded in ${loadMs.toFixed(0)} ms, ran in ${runMs.toFixed(1)} ms`);
    }
    return 0;
  } finally {
    pipe.dispose();
  }
}

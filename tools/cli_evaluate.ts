/**
 * `deno task cli evaluate`: how much a sparse / int8 variant of a model loses against it:
 * embedding cosine per text, nearest-neighbour agreement and topic accuracy on a labelled
 * retrieval set, and (generated models, or with --layers) the largest error per layer.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import { DEFAULT_RETRIEVAL_SET, evaluate, type EvaluateReport } from "../compress/evaluate.ts";
import { INT8_ACTIVATIONS } from "../encoder/linear_kinds.ts";
import {
  checkTextsFile,
  choiceOption,
  numberOption,
  resolveModelPath,
  withProgress,
} from "./_model_tools.ts";

/** One-line summary. */
export const SUMMARY = "Compare a sparse/int8 variant to its model (cosine, retrieval)";

/** Help text. */
export const HELP = `Usage: deno task cli evaluate --model A --variant B [options]

Embeds every text with A and with B and reports the cosine similarity of B's pooled embedding
to A's (min, mean, median, how many under 0.99 and 0.999, the worst texts). On a labelled
retrieval set (default: data/retrieval_set.json, 300 sentences in 30 topics) it also ranks the
documents for every query with both models: recall@1 and recall@5 of B's neighbours against
A's, and the topic accuracy (top-1, precision@5) of each. Models without a tokenizer (generated
test models) get random token ids and a per-layer max error report.

Options:
  --model A             reference: .onnx file, folder with model.onnx, or cached model name
  --variant B           the variant (same architecture)
  --texts FILE          retrieval set JSON, JSON array of texts, or one text per line
                        (default ${DEFAULT_RETRIEVAL_SET.replace(/.*\/data\//, "data/")})
  --pooling P           auto (default: the model's pooling config, cls for bge, else mean) |
                        mean | cls
  --runtime R           auto (default: sparsebert when its kernel library loads, else ONNX
                        Runtime) | sparsebert | ort
  --kernels K           sparsebert runtime: auto (default: int8 kernels for int8 weights,
                        dense fp32 otherwise) | fp32 (dequantized weights on dense fp32)
  --int8-activations A  per-token (default: the kernels' codes, 7-bit, or 8-bit with AVX-512
                        VNNI, one range per token) | ort (ONNX
                        Runtime's u8 per-tensor numerics for quantize_dynamic layers, to
                        reproduce ORT's output on the same file)
  --reference-runtime R runtime for A only: sparsebert | ort (default: --runtime); with
                        --variant = --model, measures sparsebert against ONNX Runtime
  --batch-size N        texts per batch (default 16; 1 makes dynamic per-tensor
                        quantization independent of the other texts)
  --layers              also report each layer's max output error (ONNX Runtime, 64 texts)
  --min-cosine C        exit with status 3 when a text's cosine is below C
  --threads N           threads (default 1)
  --json                print the report as JSON (no progress)
  -h, --help            show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "variant", "texts", "pooling", "runtime", "reference-runtime"),
  ...stringOptions("kernels", "int8-activations", "batch-size", "min-cosine", "threads"),
  ...flagOptions("layers", "json"),
} as const;

function formatReport(r: EvaluateReport): string {
  const c = r.cosine;
  const lines = [
    `model:   ${r.model}`,
    `variant: ${r.variant} (${r.variantInfo.int8}/${r.variantInfo.linears} linears int8, element sparsity ${
      r.variantInfo.meanElementSparsity.toFixed(3)
    }, 4x1 block sparsity ${r.variantInfo.meanBlockSparsity.toFixed(3)})`,
    `runtime: ${r.runtime}${
      r.referenceRuntime !== r.runtime ? ` (reference: ${r.referenceRuntime})` : ""
    }${
      r.kernels ? ` (${Object.entries(r.kernels).map(([k, n]) => `${n} ${k}`).join(", ")})` : ""
    }, pooling ${r.pooling}, batch ${r.batchSize}, texts: ${r.texts}`,
    `cosine over ${c.count}: min ${c.min.toFixed(5)}, mean ${c.mean.toFixed(5)}, median ${
      c.median.toFixed(5)
    }; ${c.below099} under 0.99, ${c.below0999} under 0.999`,
    `worst: ${c.worst.map((w) => `${w.cosine.toFixed(4)} "${w.text}"`).join("; ")}`,
  ];
  if (r.retrieval) {
    const q = r.retrieval;
    lines.push(
      `retrieval (${q.queries} queries x ${q.documents} documents): recall@1 ${
        q.recallAt1.toFixed(3)
      }, recall@5 ${q.recallAt5.toFixed(3)} of B's neighbours vs A's`,
      `topic accuracy: A top-1 ${q.accuracyA.top1.toFixed(3)} p@5 ${
        q.accuracyA.precisionAt5.toFixed(3)
      }; B top-1 ${q.accuracyB.top1.toFixed(3)} p@5 ${q.accuracyB.precisionAt5.toFixed(3)}`,
    );
  }
  if (r.layers) {
    lines.push("layer  max abs error  mean abs error  max |A|");
    for (const l of r.layers) {
      lines.push(
        `${String(l.layer).padStart(5)}  ${l.maxAbsError.toExponential(3).padStart(13)}  ${
          l.meanAbsError.toExponential(3).padStart(14)
        }  ${l.maxAbsReference.toFixed(3)}`,
      );
    }
  }
  return lines.join("\n");
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, ({ values }) => {
    const json = values.json;
    return withProgress(json, async (progress) => {
      const pooling = choiceOption("--pooling", values.pooling, ["auto", "mean", "cls"] as const);
      const runtime = choiceOption(
        "--runtime",
        values.runtime,
        [
          "auto",
          "sparsebert",
          "ort",
        ] as const,
      );
      const minCosine = numberOption("--min-cosine", values["min-cosine"]);
      await checkTextsFile(values.texts);
      const model = await resolveModelPath(values.model, "--model");
      const variant = await resolveModelPath(values.variant, "--variant");
      const report = await evaluate(model, variant, {
        texts: values.texts,
        pooling,
        runtime,
        referenceRuntime: choiceOption(
          "--reference-runtime",
          values["reference-runtime"],
          [
            "sparsebert",
            "ort",
          ] as const,
        ),
        kernels: choiceOption("--kernels", values.kernels, ["auto", "fp32"] as const),
        int8Activations: choiceOption(
          "--int8-activations",
          values["int8-activations"],
          INT8_ACTIVATIONS,
        ),
        batchSize: numberOption("--batch-size", values["batch-size"]),
        layers: values.layers,
        threads: numberOption("--threads", values.threads),
        onProgress: progress.onProgress,
        onNote: (line) => {
          if (!json) console.error(`note: ${line}`);
        },
      });
      progress.done();
      console.log(json ? JSON.stringify({ ok: true, ...report }, null, 2) : formatReport(report));
      if (minCosine !== undefined && report.cosine.min < minCosine) {
        if (!json) {
          console.error(`error: min cosine ${report.cosine.min.toFixed(5)} is below ${minCosine}`);
        }
        return 3;
      }
      return 0;
    });
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

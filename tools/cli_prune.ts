/**
 * `deno task cli prune`: zero a fraction of the encoder's linear weights (magnitude, Wanda or
 * OBS, unstructured or 4x1 blocks, per layer or global) and write the same ONNX graph with the
 * zeros.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { pruneAnalysis, type PruneReport, resolvePruneOptions } from "../compress/prune.ts";
import {
  calibrationBatches,
  checkTextsFile,
  choiceOption,
  numberOption,
  resolveModelPath,
  withProgress,
  writeModelOutput,
} from "./_model_tools.ts";

/** One-line summary. */
export const SUMMARY = "Prune encoder linears to a target sparsity (ONNX with zeros)";

/** Help text. */
export const HELP = `Usage: deno task cli prune --model IN --out OUT --sparsity S [options]

Zeroes a fraction of the encoder's linear weights (Q, K, V, attention output, feed-forward)
and writes the same ONNX graph with the zeros in its initializers, so every runtime runs the
same weights. Int8 models keep their int8 weights (pruned entries become the zero point).
OBS also updates the kept weights to make up for the pruned ones (fp32 models only).

Options:
  --model IN            .onnx file, folder with model.onnx, or cached model name
  --out OUT             output .onnx file (tokenizer.json is copied next to it)
  --sparsity S          target fraction of zero units, 0 <= S < 1 (e.g. 0.9)
  --pattern P           4x1 (default: 4 output channels x 1 input channel) | unstructured
  --per-layer           every linear reaches the sparsity (default)
  --global              one threshold over all encoder linears (not with obs)
  --method M            magnitude (default) | wanda (|W| x input activation norm) |
                        obs (SparseGPT: Hessian of the inputs, compensating update)
  --calibration FILE    texts for wanda and obs: one per line, or a JSON array /
                        retrieval set; "random" for random token ids (models without a
                        tokenizer)
  --obs-inputs I        obs: sequential (default: each linear's inputs from the model
                        with the linears before it pruned) | dense (from the dense model)
  --max-texts N         calibration texts used (default 64)
  --threads N           ONNX Runtime threads for calibration (default 1)
  --json                print the report as JSON (no progress)
  -h, --help            show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "out", "sparsity", "pattern", "method", "calibration"),
  ...stringOptions("max-texts", "threads", "obs-inputs"),
  ...flagOptions("per-layer", "global", "json"),
} as const;

function formatReport(r: PruneReport): string {
  const lines = [
    `wrote ${r.output} (${
      (r.bytes / 2 ** 20).toFixed(1)
    } MiB): ${r.method}, ${r.pattern}, ${r.scope}, target ${r.sparsity}` +
    (r.calibrationTokens ? `, ${r.calibrationTokens} calibration tokens` : ""),
    "layer linear            shape         before(elem/4x1)  after(elem/4x1)",
  ];
  for (const l of r.linears) {
    lines.push(
      `${String(l.layer).padStart(5)} ${l.linear.padEnd(17)} ${
        `[${l.shape[0]}, ${l.shape[1]}]`.padEnd(13)
      } ${l.before.element.toFixed(3)}/${l.before.block4x1.toFixed(3)}       ${
        l.after.element.toFixed(3)
      }/${l.after.block4x1.toFixed(3)}`,
    );
  }
  lines.push(
    `total: element sparsity ${r.total.element.toFixed(4)}, 4x1 block sparsity ${
      r.total.block4x1.toFixed(4)
    }`,
  );
  return lines.join("\n");
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, ({ values }) => {
    const json = values.json;
    return withProgress(json, async (progress) => {
      if (values["per-layer"] && values.global) {
        throw new Error("Choose one of --per-layer and --global");
      }
      if (!values.out) throw new Error("--out is required");
      const sparsity = numberOption("--sparsity", values.sparsity);
      if (sparsity === undefined) throw new Error("--sparsity is required");
      const method = choiceOption(
        "--method",
        values.method,
        ["magnitude", "wanda", "obs"] as const,
      );
      const calibrated = method === "wanda" || method === "obs";
      if (!calibrated && values.calibration !== undefined) {
        throw new Error("--calibration is only used by --method wanda or obs");
      }
      if (method !== "obs" && values["obs-inputs"] !== undefined) {
        throw new Error("--obs-inputs is only used by --method obs");
      }
      const options = {
        sparsity,
        scope: values.global ? "global" as const : "per-layer" as const,
        pattern: choiceOption("--pattern", values.pattern, ["4x1", "unstructured"] as const),
        method,
        obsInputs: choiceOption(
          "--obs-inputs",
          values["obs-inputs"],
          ["sequential", "dense"] as const,
        ),
        threads: numberOption("--threads", values.threads),
        onProgress: progress.onProgress,
      };
      // Validate before the (slow) load; the calibration texts are read after it.
      resolvePruneOptions(options, { calibration: false });
      if (calibrated && values.calibration === undefined) {
        throw new Error(`--method ${method} needs --calibration FILE (or --calibration random)`);
      }
      await checkTextsFile(values.calibration);
      const input = await resolveModelPath(values.model);
      const analysis = await analyzeOnnx(input);
      const source = analysis.source;
      const calibration = calibrated
        ? await calibrationBatches(values.calibration, analysis.weights, false, {
          maxTexts: numberOption("--max-texts", values["max-texts"]),
        })
        : null;
      const report = await pruneAnalysis(analysis, source, input, {
        ...options,
        calibration: calibration?.batches,
      });
      const output = values.out;
      const { bytes, tokenizer } = await writeModelOutput(output, source, analysis);
      progress.done();
      const full: PruneReport & { calibration?: string; tokenizer?: string } = {
        input,
        output,
        ...report,
        bytes,
      };
      if (calibration) full.calibration = calibration.source;
      if (tokenizer) full.tokenizer = tokenizer;
      console.log(json ? JSON.stringify({ ok: true, ...full }, null, 2) : formatReport(full));
      return 0;
    });
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

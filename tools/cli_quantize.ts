/**
 * `deno task cli quantize`: int8 weights for the encoder's linears and int8 activations
 * (dynamic per token / per tensor, or static from calibration texts), written as ONNX that
 * ONNX Runtime and sparsebert's importer load, with a per-layer error report.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import { OrtModel } from "../compress/calibrate.ts";
import { poolEmbeddings } from "../compress/evaluate.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { quantizeAnalysis, type QuantizeReport } from "../compress/quantize_model.ts";
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
export const SUMMARY = "Quantize encoder linears to int8 (ONNX), with per-layer error";

/** Help text. */
export const HELP = `Usage: deno task cli quantize --model IN --out OUT [options]

Quantizes the encoder's linear weights to int8 (symmetric, one scale per output channel) and
their input activations, and writes ONNX that ONNX Runtime and sparsebert load. Reports each
linear's error (max abs and relative) on calibration inputs against fp32, and checks that ONNX
Runtime runs the output.

Schemes (none saturates the int16 pair sums of AVX2 u8 x s8 kernels):
  dynamic, per-token (default)  u7 activations per token, 8-bit weights (written with standard
                                ONNX ops + MatMulInteger so every runtime computes the same;
                                sparsebert runs them with its kernels' codes: 8-bit on VNNI)
  dynamic, per-tensor           ORT quantize_dynamic layout (DynamicQuantizeLinear +
                                MatMulInteger), u8 activations, 7-bit weights
  static                        calibrated u8 scales, 7-bit weights; QDQ at opset >= 13,
                                QuantizeLinear + MatMulInteger below

Options:
  --model IN              .onnx file, folder with model.onnx, or cached model name
  --out OUT               output .onnx file (tokenizer.json is copied next to it)
  --activations A         dynamic (default) | static
  --granularity G         per-token (default) | per-tensor (dynamic only)
  --weight-bits B         8 | 7 (default: 8 per-token, 7 otherwise)
  --calibration FILE      texts (one per line, or JSON array / retrieval set), or "random";
                          required for static; default for the error report: 32 texts of
                          data/retrieval_set.json (random ids for models without a tokenizer)
  --max-texts N           calibration texts used (default 32)
  --error-tokens N        token rows per linear in the error report (default 64)
  --requantize            re-quantize weights that are already int8 (default: keep them)
  --no-check              skip the ONNX Runtime check of the output
  --threads N             ONNX Runtime threads (default 1)
  --json                  print the report as JSON (no progress)
  -h, --help              show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "out", "activations", "granularity", "weight-bits"),
  ...stringOptions("calibration", "max-texts", "error-tokens", "threads"),
  ...flagOptions("requantize", "no-check", "json"),
} as const;

interface CliReport extends QuantizeReport {
  calibration: string | null;
  tokenizer?: string;
  ortCheck?: { sequences: number; minCosine: number; meanCosine: number };
}

function formatReport(r: CliReport): string {
  const lines = [
    `wrote ${r.output} (${
      (r.bytes / 2 ** 20).toFixed(1)
    } MiB): ${r.activations} ${r.granularity} ` +
    `u${
      r.activationQmax === 127 ? 7 : 8
    } activations, ${r.weightBits}-bit weights, ${r.format} layout, ` +
    `${r.linears} linears (${r.keptInt8} kept their int8 weights)`,
  ];
  for (const w of r.warnings) lines.push(`warning: ${w}`);
  if (r.errors.length) {
    lines.push(`per-linear error on ${r.calibration}:`);
    lines.push("layer linear            shape          max abs err   rel err   tokens");
    for (const e of r.errors) {
      lines.push(
        `${String(e.layer).padStart(5)} ${e.linear.padEnd(17)} ${
          `[${e.shape[0]}, ${e.shape[1]}]`.padEnd(14)
        } ${e.maxAbsError.toExponential(3).padStart(11)} ${
          e.relativeError.toExponential(2).padStart(9)
        } ${String(e.tokens).padStart(8)}`,
      );
    }
  }
  if (r.ortCheck) {
    lines.push(
      `ONNX Runtime runs the output: pooled cosine to the input model on ${r.ortCheck.sequences} sequences min ${
        r.ortCheck.minCosine.toFixed(5)
      }, mean ${r.ortCheck.meanCosine.toFixed(5)}`,
    );
  }
  return lines.join("\n");
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, ({ values }) => {
    const json = values.json;
    return withProgress(json, async (progress) => {
      if (!values.out) throw new Error("--out is required");
      const activations = choiceOption(
        "--activations",
        values.activations,
        [
          "dynamic",
          "static",
        ] as const,
      ) ?? "dynamic";
      const granularity = choiceOption(
        "--granularity",
        values.granularity,
        [
          "per-token",
          "per-tensor",
        ] as const,
      );
      if (activations === "static" && granularity !== undefined) {
        throw new Error("--granularity applies to dynamic activations only");
      }
      const bits = numberOption("--weight-bits", values["weight-bits"]);
      if (bits !== undefined && bits !== 7 && bits !== 8) {
        throw new Error(`--weight-bits must be 7 or 8, got "${values["weight-bits"]}"`);
      }
      if (activations === "static" && values.calibration === undefined) {
        throw new Error("--activations static needs --calibration FILE (or --calibration random)");
      }
      const threads = numberOption("--threads", values.threads);
      const errorTokens = numberOption("--error-tokens", values["error-tokens"]);
      await checkTextsFile(values.calibration);
      const input = await resolveModelPath(values.model);
      const analysis = await analyzeOnnx(input);
      const calibration = await calibrationBatches(values.calibration, analysis.weights, true, {
        maxTexts: numberOption("--max-texts", values["max-texts"]) ?? 32,
      });
      const { model, report } = await quantizeAnalysis(analysis, input, {
        activations,
        granularity,
        weightBits: bits as 7 | 8 | undefined,
        calibration: calibration?.batches,
        requantize: values.requantize,
        errorTokens,
        threads,
        onProgress: progress.onProgress,
      });
      const output = values.out;
      const { bytes, tokenizer } = await writeModelOutput(output, model, analysis);
      const full: CliReport = {
        input,
        output,
        ...report,
        bytes,
        calibration: calibration?.source ?? null,
      };
      if (tokenizer) full.tokenizer = tokenizer;
      if (!values["no-check"] && calibration) {
        full.ortCheck = await ortCheck(input, output, calibration.batches.slice(0, 2), threads);
      }
      progress.done();
      console.log(json ? JSON.stringify({ ok: true, ...full }, null, 2) : formatReport(full));
      return 0;
    });
  });
}

/** Loads the output in ONNX Runtime and compares mean-pooled outputs with the input model's. */
async function ortCheck(
  input: string,
  output: string,
  batches: import("../compress/calibrate.ts").EncoderBatch[],
  threads: number | undefined,
): Promise<{ sequences: number; minCosine: number; meanCosine: number }> {
  const a = await OrtModel.create(input, { threads });
  const b = await OrtModel.create(output, { threads });
  try {
    const cos: number[] = [];
    for (const batch of batches) {
      const name = a.outputNames[0];
      const ya = poolEmbeddings((await a.run(batch, [name]))[name].data, batch, "mean");
      const yb = poolEmbeddings((await b.run(batch, [name]))[name].data, batch, "mean");
      ya.forEach((v, i) => {
        let d = 0;
        for (let k = 0; k < v.length; k++) d += v[k] * yb[i][k];
        cos.push(d);
      });
    }
    return {
      sequences: cos.length,
      minCosine: Math.min(...cos),
      meanCosine: cos.reduce((s, x) => s + x, 0) / cos.length,
    };
  } finally {
    await a.release();
    await b.release();
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));

/**
 * How far the int8 kernels move a model's embeddings, with the attention in fp32 and in int8,
 * and how far the opt-in bf16 weights (`precision: "bf16"`) move them:
 * the cosine of each text's pooled embedding against the all-fp32 run of the same model, on the
 * loaded kernel variant (7-bit activation codes on AVX2 and the baseline, 8-bit with AVX-512
 * VNNI; `SPARSEBERT_ISA=avx2` measures the other side by side).
 *
 *   deno task bench:accuracy [--models all-minilm-l6-v2,bge-small-en-v15] [--json]
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions, UsageError } from "../tools/_command.ts";
import { kernels } from "../ffi/library.ts";
import { int8ActivationQmax } from "../ops/quantize.ts";
import { bf16Hardware } from "../ops/linear_bf16.ts";
import type { AttentionPrecision } from "../ops/attention.ts";
import { pipeline } from "../pipelines/pipeline.ts";
import { DEFAULT_RETRIEVAL_SET, detectPooling, readEvaluationTexts } from "../compress/evaluate.ts";
import { resolveModelPath } from "../tools/_model_tools.ts";

const HELP = `Usage: deno task bench:accuracy [options]

Embeds the texts with each model four ways on the loaded kernel variant: all fp32, int8 linears
with fp32 attention, int8 linears with int8 attention, bf16-weight linears (fp32 attention), and
reports the cosine of the other runs' pooled embeddings to the fp32 run's (min and mean over the
texts, and the texts whose cosine is below 1 - 1e-4). The int8 activation codes are
the variant's own (7 bits on AVX2 and the baseline, 8 bits with AVX-512 VNNI; force one with
SPARSEBERT_ISA).

Options:
  --models LIST   registry names or paths, comma separated
                  (default all-minilm-l6-v2,bge-small-en-v15)
  --texts FILE    retrieval set or texts (default data/retrieval_set.json)
  --threads N     kernel threads (default 2)
  --json          print the JSON result instead of the table
  -h, --help      show this help`;

/** Cosines of one int8 or bf16 configuration against the all-fp32 run. */
export interface AccuracyRow {
  model: string;
  /** The linears' weights: int8, or fp32 rounded to bf16. */
  weights: "int8" | "bf16";
  attention: AttentionPrecision;
  minCosine: number;
  meanCosine: number;
  /** Texts whose cosine is below 1 - 1e-4 (the bar for a lossless default). */
  belowLossless: number;
}

const LOSSLESS = 1 - 1e-4;

async function embed(
  model: string,
  texts: string[],
  pooling: "mean" | "cls",
  kernelsKind: "dense-f32" | "dense-i8" | "dense-bf16",
  attention: AttentionPrecision,
  threads: number,
): Promise<{ data: Float32Array; dim: number }> {
  using p = await pipeline("feature-extraction", model, {
    kernels: { kernels: kernelsKind },
    attentionPrecision: attention,
    threads,
  });
  const { data, dims } = await p(texts, { pooling, normalize: true });
  return { data, dim: dims[1] };
}

function cosines(a: Float32Array, b: Float32Array, dim: number): number[] {
  const out: number[] = [];
  for (let i = 0; i < a.length / dim; i++) {
    let s = 0;
    for (let d = 0; d < dim; d++) s += a[i * dim + d] * b[i * dim + d];
    out.push(s);
  }
  return out;
}

function main(): Promise<number> {
  return runCommand(Deno.args, {
    help: HELP,
    parse: { options: { ...stringOptions("models", "texts", "threads"), ...flagOptions("json") } },
  }, async ({ values }) => {
    const models = (values.models ?? "all-minilm-l6-v2,bge-small-en-v15").split(",");
    const threads = Number(values.threads ?? "2");
    if (!Number.isInteger(threads) || threads < 1 || threads > 64) {
      throw new UsageError(`--threads needs an integer in 1..64, got "${values.threads}"`);
    }
    const set = await readEvaluationTexts(values.texts ?? DEFAULT_RETRIEVAL_SET);
    const texts = Array.isArray(set) ? set : set.items.map((item) => item.text);
    const rows: AccuracyRow[] = [];
    for (const name of models) {
      const model = await resolveModelPath(name.trim());
      const pooling = await detectPooling(model);
      const reference = await embed(model, texts, pooling, "dense-f32", "fp32", threads);
      const runs = [["int8", "fp32"], ["int8", "int8"], ["bf16", "fp32"]] as const;
      for (const [weights, attention] of runs) {
        const kind = weights === "int8" ? "dense-i8" : "dense-bf16";
        const run = await embed(model, texts, pooling, kind, attention, threads);
        const c = cosines(reference.data, run.data, reference.dim);
        rows.push({
          model: name.trim(),
          weights,
          attention,
          minCosine: Math.min(...c),
          meanCosine: c.reduce((s, v) => s + v, 0) / c.length,
          belowLossless: c.filter((v) => v < LOSSLESS).length,
        });
      }
    }
    const result = {
      benchmark: "int8_accuracy",
      command: `deno task bench:accuracy ${Deno.args.join(" ")}`.trim(),
      isa: kernels().isa,
      activationQmax: int8ActivationQmax(),
      bf16Kernel: bf16Hardware() ? "vdpbf16ps" : "emulated",
      texts: texts.length,
      rows,
    };
    if (values.json) {
      console.log(JSON.stringify(result, null, 2));
      return 0;
    }
    console.log(
      `${result.isa}, activation codes 0..${result.activationQmax}, bf16 ${result.bf16Kernel}, ` +
        `${texts.length} texts, cosine of each run to the all-fp32 run`,
    );
    console.log("model                 weights  attention  min cosine  mean cosine  < 1-1e-4");
    for (const r of rows) {
      console.log(
        `${r.model.padEnd(21)} ${r.weights.padEnd(8)} ${r.attention.padEnd(10)} ${
          r.minCosine.toFixed(5).padStart(10)
        } ${r.meanCosine.toFixed(6).padStart(12)} ${String(r.belowLossless).padStart(9)}`,
      );
    }
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main());

/**
 * `deno task cli compile`: packs a model's linear layers with the kernels chosen per layer and
 * writes a compiled `.sbert` file that loads with no import or repacking.
 *
 * @module
 */
import { compileModel } from "../formats/compiled.ts";
import { summarizeDecisions } from "../encoder/kernel_choice.ts";
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import { KERNEL_KINDS, type KernelKind } from "../ops/linear.ts";
import { loadModel } from "../hub/load.ts";

/** One-line summary. */
export const SUMMARY = "Pack a model with per-layer kernels into a compiled .sbert file";

/** Help text. */
export const HELP = `Usage: deno task cli compile --model PATH|NAME --out FILE.sbert [options]

Chooses a kernel per linear layer (dense/sparse, fp32/int8: from sparsity and a quick
autotune, cached in .cache/autotune.json), packs every layer and writes one file holding the
packed weights, the fp32 embeddings, norms and heads, and the tokenizer. Load it anywhere a
model path is taken (run, inspect, pipeline()).

Options:
  --model M        model file, folder or registry name (required)
  --out FILE       compiled file to write (required)
  --kernels K      auto (default) | ${KERNEL_KINDS.join(" | ")}
  --precision P    auto (default: int8 where the model has int8 weights) | fp32 | int8 | bf16
  --no-autotune    choose by sparsity threshold only
  --json           print one JSON object
  -h, --help       show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model", "out"),
  ...flagOptions("no-autotune", "json"),
  kernels: { type: "string", default: "auto" },
  precision: { type: "string", default: "auto" },
} as const;

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
    if (values.model === undefined) throw new Error("--model is required (a file, folder or name)");
    if (values.out === undefined) throw new Error("--out is required (the .sbert file to write)");
    const log = values.json ? undefined : (line: string) => console.error(line);
    const t0 = performance.now();
    const { weights, path } = await loadModel(values.model, { log });
    const result = await compileModel(weights, values.out, {
      kernels: {
        kernels: values.kernels as "auto" | KernelKind,
        precision: values.precision as "auto",
        autotune: !values["no-autotune"],
        log,
      },
    });
    const seconds = (performance.now() - t0) / 1000;
    if (values.json) {
      console.log(JSON.stringify({ source: path, ...result, seconds }, null, 2));
      return 0;
    }
    console.log(
      `Wrote ${result.path}: ${(result.bytes / 2 ** 20).toFixed(1)} MiB ` +
        `(packed ${(result.packedBytes / 2 ** 20).toFixed(1)} MiB) in ${seconds.toFixed(1)} s`,
    );
    console.log(`Kernels: ${JSON.stringify(summarizeDecisions(result.decisions))}`);
    for (const d of result.decisions) {
      console.log(`${String(d.layer).padStart(5)}  ${d.role.padEnd(17)} ${d.reason}`);
    }
    return 0;
  });
}

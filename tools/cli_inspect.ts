/**
 * `deno task cli inspect`: what a model file holds: architecture, layers, shapes, parameter
 * count and the measured sparsity of every linear weight.
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions } from "./_command.ts";
import { BertEncoder } from "../encoder/bert.ts";
import type { KernelDecision, Precision } from "../encoder/kernel_choice.ts";
import { KERNEL_KINDS, type KernelKind } from "../ops/linear.ts";
import { loadModel } from "../hub/load.ts";
import { measureSparsity } from "../encoder/quantized.ts";
import { type BertWeights, type DenseWeight, parameterCount } from "../encoder/weights.ts";

/** One-line summary. */
export const SUMMARY = "Show a model's layers, shapes, parameter count and sparsity";

/** Help text. */
export const HELP = `Usage: deno task cli inspect --model PATH|NAME [--json]

Loads a model (an .onnx file, a Hugging Face folder or a known model name) and prints its
architecture, every linear layer with its shape, int8 form and sparsity (fraction of zero
weights and of zero 4x1 blocks), the heads and the parameter count, and the kernel chosen for
every linear layer and why (for a compiled .sbert file: the choice stored in it; otherwise
chosen now, with the autotune cached in .cache/autotune.json).

Options:
  --model M   model file, folder or registry name (required)
  --kernels K     kernel choice to show: auto (default) | ${KERNEL_KINDS.join(" | ")}
  --precision P   auto (default) | fp32 | int8 | bf16
  --json      print one JSON object
  -h, --help  show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = {
  ...stringOptions("model"),
  ...flagOptions("json"),
  kernels: { type: "string", default: "auto" },
  precision: { type: "string", default: "auto" },
} as const;

/** One linear weight in the report. */
export interface LinearReport {
  /** Layer index, or null for the pooler and head. */
  layer: number | null;
  /** Which weight. */
  name: string;
  /** `[out, in]`. */
  shape: [number, number];
  /** Fraction of zero weights. */
  sparsity: number;
  /** Fraction of all-zero 4x1 blocks. */
  blockSparsity: number;
  /** Whether the file holds it as int8. */
  int8: boolean;
}

/** Everything `inspect` reports. */
export interface InspectReport {
  /** The file or folder loaded. */
  path: string;
  /** `onnx` or `safetensors`. */
  format: string;
  /** Architecture. */
  config: BertWeights["config"];
  /** fp32 parameters (embeddings, layers, pooler, head). */
  parameters: number;
  /** Every linear weight, encoder layers first. */
  linears: LinearReport[];
  /** The task head, if any: its kind and output count. */
  head: { kind: string; labels: number } | null;
  /** Whether a BERT tanh pooler is present. */
  pooler: boolean;
  /** Zero fraction over all encoder linear weights: elements and 4x1 blocks. */
  sparsity: { encoder: number; encoderBlocks: number };
  /** The kernel of every encoder linear layer and why. */
  kernels?: KernelDecision[];
}

/** Builds the report of loaded weights. */
export function inspectWeights(weights: BertWeights, path: string): InspectReport {
  const linears: LinearReport[] = [];
  const add = (layer: number | null, name: string, d: DenseWeight): void => {
    const s = d.sparsity ?? measureSparsity(d.weight, d);
    linears.push({
      layer,
      name,
      shape: [d.out, d.in],
      sparsity: s.element,
      blockSparsity: s.block4x1,
      int8: d.quantized !== undefined,
    });
  };
  weights.layers.forEach((l, i) => {
    add(i, "query", l.query);
    add(i, "key", l.key);
    add(i, "value", l.value);
    add(i, "attention.output", l.attentionOutput);
    add(i, "intermediate", l.intermediate);
    add(i, "output", l.output);
  });
  let zeros = 0;
  let blocks = 0;
  let total = 0;
  for (const l of linears) {
    const n = l.shape[0] * l.shape[1];
    zeros += l.sparsity * n;
    blocks += l.blockSparsity * n;
    total += n;
  }
  if (weights.pooler) add(null, "pooler", weights.pooler);
  if (weights.preClassifier) add(null, "pre_classifier", weights.preClassifier);
  if (weights.head) add(null, `head (${weights.head.kind})`, weights.head.dense);
  return {
    path,
    format: weights.source.format,
    config: weights.config,
    parameters: parameterCount(weights),
    linears,
    head: weights.head ? { kind: weights.head.kind, labels: weights.head.dense.out } : null,
    pooler: weights.pooler !== null,
    sparsity: { encoder: zeros / total, encoderBlocks: blocks / total },
  };
}

function pct(value: number): string {
  return `${(100 * value).toFixed(1)}%`.padStart(6);
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
    if (values.model === undefined) throw new Error("--model is required (a file, folder or name)");
    const model = await loadModel(values.model, {
      kernels: {
        kernels: values.kernels as "auto" | KernelKind,
        precision: values.precision as Precision,
      },
    });
    const { weights, path } = model;
    const report = inspectWeights(weights, path);
    if (model.fuseQkv !== undefined) {
      // A compiled file: its layers are packed; report the choice stored in it.
      report.linears = report.linears.filter((l) => l.layer === null);
    } else {
      new BertEncoder(weights, { linear: model.linear })[Symbol.dispose]();
      await model.saveKernelCache?.();
    }
    report.kernels = model.kernelDecisions;
    if (values.json) {
      console.log(JSON.stringify(report, null, 2));
      return 0;
    }
    const c = report.config;
    console.log(`Model:       ${report.path} (${report.format})`);
    console.log(
      `Type:        ${c.modelType}, ${c.numLayers} layers, hidden ${c.hiddenSize}, ${c.numHeads} heads ` +
        `(head size ${
          c.hiddenSize / c.numHeads
        }), intermediate ${c.intermediateSize}, ${c.hiddenAct}`,
    );
    console.log(
      `Embeddings:  vocab ${c.vocabSize}, positions ${c.maxPositionEmbeddings}, token types ${c.typeVocabSize}`,
    );
    console.log(`Parameters:  ${report.parameters.toLocaleString("en-US")}`);
    console.log(
      `Sparsity:    ${pct(report.sparsity.encoder).trim()} of encoder linear weights are zero, ` +
        `${pct(report.sparsity.encoderBlocks).trim()} of 4x1 blocks`,
    );
    console.log(
      `Heads:       pooler ${report.pooler ? "yes" : "no"}, ${
        report.head ? `${report.head.kind} (${report.head.labels} outputs)` : "no task head"
      }`,
    );
    console.log("");
    console.log("layer  linear              shape          zeros  4x1 blocks  int8");
    for (const l of report.linears) {
      console.log(
        `${String(l.layer ?? "-").padStart(5)}  ${l.name.padEnd(18)}  ${
          `[${l.shape[0]}, ${l.shape[1]}]`.padEnd(13)
        }  ${pct(l.sparsity)}  ${pct(l.blockSparsity)}      ${l.int8 ? "yes" : "no"}`,
      );
    }
    console.log("");
    console.log("layer  linear             kernel      why");
    for (const d of report.kernels ?? []) {
      console.log(
        `${String(d.layer).padStart(5)}  ${d.role.padEnd(17)}  ${d.kind.padEnd(10)}  ${d.reason}`,
      );
    }
    return 0;
  });
}

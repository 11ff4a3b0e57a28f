/**
 * `deno task bench:load`: how long a model takes to become runnable, and what it keeps
 * resident, when imported from ONNX (import, quantize/pack, kernel choice) against when loaded
 * from its compiled `.sbert` file (headers checked, fp32 tensors read, packed weights mapped).
 *
 * Each measurement is a fresh process (so no page of the first load helps the second beyond the
 * OS page cache, which both share), run in alternation (import, compiled, import, ...): load
 * time is from the start of the load call to a built encoder; the first forward pass (seq 128,
 * batch 1) is timed separately, since a mapped file faults its pages in there. Resident memory
 * is the process's RSS after that forward pass minus its RSS just before loading (runtime and
 * kernel library already in), set against what the model needs: packed weight bytes, fp32
 * tensors (embeddings, norms) and the planned workspaces.
 *
 * @module
 */
import { compileModel, loadCompiled } from "../formats/compiled.ts";
import { loadModel } from "../hub/load.ts";
import { BertEncoder } from "../encoder/bert.ts";
import { setThreads } from "../ffi/library.ts";
import { stats } from "./_timing.ts";
import { flagOptions, integerOption, runCommand, stringOptions } from "../tools/_command.ts";

const HELP = `Usage: deno task bench:load [options]

Load time and resident memory: ONNX import vs the compiled .sbert file (fresh process each,
alternating). Compiles the model first (cached next to --out-dir).

Options:
  --model FILE     ONNX model (default .cache/bench-models/bert-base/int8-pt-s90-4x1.onnx,
                   written by \`deno task bench:compare\`)
  --repeats N      processes per side (default 5)
  --threads N      kernel threads (default 2)
  --out-dir DIR    where the .sbert file goes (default .cache/bench-load)
  --json           print the JSON report instead of the table
  -h, --help       show this help`;

const DEFAULT_MODEL = ".cache/bench-models/bert-base/int8-pt-s90-4x1.onnx";
const SEQ = 128;

/** One child process's figures. */
interface Sample {
  side: "import" | "compiled";
  loadMs: number;
  firstForwardMs: number;
  rssGrowthBytes: number;
  packedBytes: number;
  plainBytes: number;
  workspaceBytes: number;
}

function plainBytesOf(weights: BertEncoderWeights): number {
  let bytes = weights.wordEmbeddings.byteLength + weights.positionEmbeddings.byteLength +
    (weights.tokenTypeEmbeddings?.byteLength ?? 0) + 2 * weights.embeddingNorm.gamma.byteLength;
  for (const l of weights.layers) {
    bytes += 2 * l.attentionNorm.gamma.byteLength + 2 * l.outputNorm.gamma.byteLength;
  }
  return bytes;
}

type BertEncoderWeights = ConstructorParameters<typeof BertEncoder>[0];

async function child(side: Sample["side"], file: string, threads: number): Promise<Sample> {
  setThreads(threads);
  const before = Deno.memoryUsage().rss;
  const t0 = performance.now();
  const model = side === "compiled"
    ? await loadCompiled(file)
    : await loadModel(file, { kernels: { precision: "int8", autotune: false } });
  const encoder = new BertEncoder(model.weights, {
    ...(model.linear ? { linear: model.linear } : {}),
    ...(model.fuseQkv !== undefined ? { fuseQkv: model.fuseQkv } : {}),
  });
  const loadMs = performance.now() - t0;
  const ids = new Int32Array(SEQ).map((_, i) => 1000 + i);
  const t1 = performance.now();
  encoder.forward({ inputIds: ids, batch: 1, seq: SEQ });
  const firstForwardMs = performance.now() - t1;
  const rssGrowthBytes = Deno.memoryUsage().rss - before;
  return {
    side,
    loadMs,
    firstForwardMs,
    rssGrowthBytes,
    packedBytes: encoder.linears().reduce((sum, l) => sum + l.packedBytes, 0),
    plainBytes: plainBytesOf(model.weights),
    workspaceBytes: encoder.workspaceBytes,
  };
}

async function spawnChild(side: Sample["side"], file: string, threads: number): Promise<Sample> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--child",
      side,
      "--file",
      file,
      "--threads",
      String(threads),
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `${side} child failed: ${new TextDecoder().decode(out.stderr).trim().split("\n").pop()}`,
    );
  }
  return JSON.parse(text.trim().split("\n").pop()!) as Sample;
}

function main(): Promise<number> {
  const options = {
    ...stringOptions("child", "file"),
    ...flagOptions("json"),
    model: { type: "string", default: DEFAULT_MODEL },
    repeats: { type: "string", default: "5" },
    threads: { type: "string", default: "2" },
    "out-dir": { type: "string", default: ".cache/bench-load" },
  } as const;
  return runCommand(Deno.args, { help: HELP, parse: { options } }, async ({ values }) => {
    const threads = integerOption("threads", values.threads);
    if (values.child !== undefined) {
      const side = values.child as Sample["side"];
      console.log(JSON.stringify(await child(side, values.file!, threads)));
      return 0;
    }
    return await measure({
      ...values,
      threads,
      repeats: integerOption("repeats", values.repeats, 1, 1000),
    });
  });
}

/** Compiles the model, then times both sides in alternating fresh processes. */
async function measure(
  values: { model: string; "out-dir": string; json: boolean; threads: number; repeats: number },
): Promise<number> {
  const { model, threads, repeats } = values;
  try {
    await Deno.stat(model);
  } catch {
    throw new Error(
      `no model at "${model}". Write the benchmark models with \`deno task bench:compare --quick\`, or pass --model FILE.onnx`,
    );
  }
  const log = values.json ? () => {} : (line: string) => console.error(line);
  await Deno.mkdir(values["out-dir"], { recursive: true });
  const base = model.split("/").pop()!.replace(/\.onnx$/, "");
  const compiled = `${values["out-dir"]}/${base}.sbert`;
  log(`Compiling ${model} -> ${compiled} ...`);
  {
    const { weights } = await loadModel(model);
    await compileModel(weights, compiled, { kernels: { precision: "int8", autotune: false } });
  }
  const samples: Sample[] = [];
  for (let r = 0; r < repeats; r++) {
    for (const side of ["import", "compiled"] as const) {
      const s = await spawnChild(side, side === "import" ? model : compiled, threads);
      log(
        `  ${r + 1}/${repeats} ${side.padEnd(8)} load ${s.loadMs.toFixed(0)} ms, first forward ${
          s.firstForwardMs.toFixed(0)
        } ms, RSS +${(s.rssGrowthBytes / 2 ** 20).toFixed(0)} MiB`,
      );
      samples.push(s);
    }
  }
  const summary = (side: Sample["side"]) => {
    const mine = samples.filter((s) => s.side === side);
    const needed = mine[0].packedBytes + mine[0].plainBytes + mine[0].workspaceBytes;
    const median = (key: "loadMs" | "firstForwardMs" | "rssGrowthBytes") =>
      stats(mine.map((s) => s[key])).median;
    return {
      loadMs: median("loadMs"),
      firstForwardMs: median("firstForwardMs"),
      rssGrowthBytes: median("rssGrowthBytes"),
      packedBytes: mine[0].packedBytes,
      plainBytes: mine[0].plainBytes,
      workspaceBytes: mine[0].workspaceBytes,
      rssOverNeeded: median("rssGrowthBytes") / needed,
    };
  };
  const imported = summary("import");
  const loaded = summary("compiled");
  const report = {
    model,
    compiled,
    threads,
    repeats,
    seq: SEQ,
    import: imported,
    compiledLoad: loaded,
    loadSpeedup: imported.loadMs / loaded.loadMs,
    samples,
    command: `deno task bench:load ${Deno.args.join(" ")}`.trim(),
    date: new Date().toISOString(),
  };
  const outFile = `bench/results/compiled-load-${report.date.replaceAll(":", "-")}.json`;
  await Deno.mkdir("bench/results", { recursive: true });
  await Deno.writeTextFile(outFile, JSON.stringify(report, null, 2) + "\n");
  if (values.json) {
    console.log(JSON.stringify(report, null, 2));
    return 0;
  }
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  console.log(`\nMedians of ${repeats} fresh processes per side, ${threads} threads (${model}):`);
  console.log("| side | load ms | first forward ms | RSS growth MiB | needed MiB | RSS / needed |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const [name, s] of [["ONNX import", imported], ["compiled .sbert", loaded]] as const) {
    const needed = s.packedBytes + s.plainBytes + s.workspaceBytes;
    console.log(
      `| ${name} | ${s.loadMs.toFixed(0)} | ${s.firstForwardMs.toFixed(0)} | ${
        mib(s.rssGrowthBytes)
      } | ${mib(needed)} (packed ${mib(s.packedBytes)}, fp32 ${mib(s.plainBytes)}, workspace ${
        mib(s.workspaceBytes)
      }) | ${s.rssOverNeeded.toFixed(2)}x |`,
    );
  }
  console.log(`Load speed-up of the compiled file: ${report.loadSpeedup.toFixed(1)}x`);
  console.log(`JSON: ${outFile}`);
  return 0;
}

if (import.meta.main) Deno.exit(await main());

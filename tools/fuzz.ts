/**
 * `deno task fuzz --minutes N`: the suite's fuzz targets (tests/fuzz/targets.ts: ONNX,
 * safetensors, .sbert, tokenizer.json, and HTTP bodies against a real server) in rounds with
 * fresh seeds until the time is up. Prints each round's counts; exits 1 on any finding, with the
 * seed that replays it (SPARSEBERT_FUZZ_SEED for tests/fuzz_test.ts).
 *
 * @module
 */
import { flagOptions, runCommand, stringOptions, UsageError } from "./_command.ts";
import { spawnServer } from "../serve/spawn.ts";
import {
  allTargets,
  fuzz,
  type FuzzFinding,
  type FuzzTarget,
  httpTarget,
} from "../tests/fuzz/targets.ts";

const HELP = `Usage: deno task fuzz [--minutes N] [--seed S] [--json]

Runs the fuzz targets (ONNX, safetensors, compiled .sbert and its packed weights through a
forward, tokenizer.json, HTTP bodies against a server on 127.0.0.1) in rounds of fresh seeds
until N minutes (default 5) have passed. Every case must end in a result or a clear error; a crash ends the run with a signal.

Options:
  --minutes N   how long (default 5)
  --seed S      first seed (default from the clock; round r uses S + r)
  --json        print one JSON summary at the end
  -h, --help    show this help`;

/** Cases per target and round: a round takes a few seconds. */
const ROUND: Record<string, number> = {
  "onnx": 1000,
  "safetensors": 2000,
  "sbert": 200,
  "sbert-packed": 200,
  "tokenizer.json": 200,
  "http": 200,
};

function main(): Promise<number> {
  const options = {
    minutes: { type: "string", default: "5" },
    ...stringOptions("seed"),
    ...flagOptions("json"),
  } as const;
  return runCommand(Deno.args, { help: HELP, parse: { options } }, ({ values }) => fuzzFor(values));
}

async function fuzzFor(values: { minutes: string; seed?: string; json: boolean }): Promise<number> {
  const minutes = Number(values.minutes);
  if (!(minutes > 0)) {
    throw new UsageError(`--minutes must be a positive number, got "${values.minutes}"`);
  }
  const first = values.seed === undefined ? Date.now() % 1_000_000 : Number(values.seed);
  const server = await spawnServer({
    config: {
      limits: { maxBodyBytes: 64 * 1024, maxInputs: 16, maxTextChars: 2000, bodyTimeoutMs: 2000 },
      models: [{ name: "minilm", model: "all-minilm-l6-v2", maxLength: 64, maxWaitMs: 1 }],
    },
  });
  const targets: FuzzTarget[] = [...await allTargets(), httpTarget(server.url)];
  const totals = new Map<string, { cases: number; errors: number }>();
  const findings: FuzzFinding[] = [];
  const end = Date.now() + minutes * 60_000;
  let round = 0;
  try {
    while (Date.now() < end && findings.length === 0) {
      const seed = first + round++;
      for (const target of targets) {
        const stats = await fuzz(target, seed, ROUND[target.name]);
        const t = totals.get(target.name) ?? { cases: 0, errors: 0 };
        totals.set(target.name, { cases: t.cases + stats.cases, errors: t.errors + stats.errors });
        findings.push(...stats.findings);
      }
      if (!values.json) {
        const done = [...totals].map(([name, t]) => `${name} ${t.cases}`).join(", ");
        console.error(`round ${round} (seed ${seed}): ${done}; findings ${findings.length}`);
      }
    }
  } finally {
    for (const t of targets) await t.close?.();
    await server.stop();
  }
  const summary = {
    minutes,
    firstSeed: first,
    rounds: round,
    totals: Object.fromEntries(totals),
    findings,
  };
  if (values.json) console.log(JSON.stringify(summary));
  else {
    for (const f of findings) {
      console.error(`FINDING ${f.target} seed ${f.seed} case ${f.index}: ${f.kind}: ${f.message}`);
    }
    console.error(`fuzz: ${round} rounds in ${minutes} min, ${findings.length} findings`);
  }
  return findings.length === 0 ? 0 : 1;
}

if (import.meta.main) Deno.exit(await main());

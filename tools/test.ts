/**
 * The whole test suite, as `deno task test` runs it on a fresh clone and in CI:
 *   1. set-up (pinned Zig, kernel libraries ReleaseFast + ReleaseSafe, models),
 *   2. every test file on the best kernel variant (ReleaseFast),
 *   3. every kernel test file (those importing tests/harness.ts) on each other variant this CPU
 *      can run, and on every runnable variant of the ReleaseSafe build,
 *   4. a summary with the variants that could not run here and a closing
 *      `tests: N passed, N failed` line.
 *
 * @module
 */
import {
  cpuModel,
  cpuSupports,
  describeFeatures,
  ISA_VARIANTS,
  type IsaVariant,
  probeCpuFeatures,
} from "../ffi/library.ts";
import { ROOT } from "./_toolchain.ts";
import { setup } from "./setup.ts";
import { flagOptions, runCommand, stringOptions } from "./_command.ts";

const HELP = `Usage: deno task test [options] [-- deno test args]

Runs set-up, then all tests on the best kernel variant, then the kernel tests on every other
runnable variant and on the ReleaseSafe build.

Options:
  --no-setup    skip set-up (toolchain, build, models)
  --quick       only the best variant (no per-variant or ReleaseSafe passes)
  --filter S    pass --filter S to deno test
  -h, --help    show this help`;

interface PassResult {
  label: string;
  passed: number;
  failed: number;
  ok: boolean;
}

async function testFiles(): Promise<{ all: string[]; kernel: string[] }> {
  const all: string[] = [];
  const kernel: string[] = [];
  for await (const entry of Deno.readDir(`${ROOT}/tests`)) {
    if (!entry.isFile || !entry.name.endsWith("_test.ts")) continue;
    const path = `tests/${entry.name}`;
    all.push(path);
    const text = await Deno.readTextFile(`${ROOT}/${path}`);
    if (/from "\.\/harness\.ts"/.test(text)) kernel.push(path);
  }
  return { all: all.sort(), kernel: kernel.sort() };
}

async function denoTest(
  label: string,
  files: string[],
  env: Record<string, string>,
  extra: string[],
): Promise<PassResult> {
  console.log(`\n=== ${label}: ${files.length} file(s) ===`);
  const child = new Deno.Command(Deno.execPath(), {
    args: ["test", "-A", "--no-prompt", ...extra, ...files],
    cwd: ROOT,
    env: { ...env, NO_COLOR: "1" },
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  let text = "";
  const decoder = new TextDecoder();
  for await (const chunk of child.stdout) {
    text += decoder.decode(chunk, { stream: true });
    await Deno.stdout.write(chunk);
  }
  const status = await child.status;
  // Deno's summary: "ok | 12 passed (3 steps) | 0 failed (1s)" or "FAILED | 3 passed | 1 failed".
  const summary = [...text.matchAll(/\| (\d+) passed[^|]*\| (\d+) failed/g)].at(-1);
  const passed = summary ? Number(summary[1]) : 0;
  const failed = summary ? Number(summary[2]) : (status.success ? 0 : 1);
  return { label, passed, failed, ok: status.success };
}

/** The options of {@linkcode testAll}. */
interface TestOptions {
  "no-setup": boolean;
  quick: boolean;
  filter?: string;
}

async function testAll(values: TestOptions, positionals: string[]): Promise<number> {
  if (!values["no-setup"]) await setup();
  const extra = [...(values.filter ? ["--filter", values.filter] : []), ...positionals];
  const { all, kernel } = await testFiles();
  const features = probeCpuFeatures(`${ROOT}/build/fast/lib`);
  const runnable = ISA_VARIANTS.filter((isa) => cpuSupports(features, isa));
  const skipped = ISA_VARIANTS.filter((isa) => !cpuSupports(features, isa));
  // SPARSEBERT_ISA (inherited by every pass) narrows the run to that variant, as a user's would.
  const forced = Deno.env.get("SPARSEBERT_ISA") as IsaVariant | undefined;
  if (forced !== undefined && !runnable.includes(forced)) {
    throw new Error(
      `SPARSEBERT_ISA="${forced}" is not a variant this CPU runs (${runnable.join(", ")})`,
    );
  }
  const aboveForced = forced === undefined ? [] : runnable.splice(runnable.indexOf(forced) + 1);
  const best = forced ?? runnable.at(-1)!;
  const results: PassResult[] = [];
  results.push(await denoTest(`all tests, ${best}, ReleaseFast`, all, {}, extra));
  if (!values.quick) {
    for (const isa of runnable) {
      if (isa !== best) {
        results.push(
          await denoTest(`kernel tests, ${isa}, ReleaseFast`, kernel, {
            SPARSEBERT_ISA: isa,
          }, extra),
        );
      }
    }
    for (const isa of runnable) {
      results.push(
        await denoTest(`kernel tests, ${isa}, ReleaseSafe`, kernel, {
          SPARSEBERT_ISA: isa,
          SPARSEBERT_LIB_DIR: `${ROOT}/build/safe/lib`,
        }, extra),
      );
    }
  }
  console.log("\n=== summary ===");
  console.log(`CPU: ${cpuModel() ?? "unknown model"}; features: ${describeFeatures(features)}`);
  const ran = values.quick
    ? `${best} (ReleaseFast only: --quick)`
    : `${runnable.join(", ")} (ReleaseFast and ReleaseSafe)`;
  console.log(`kernel variants run: ${ran}`);
  for (const r of results) {
    console.log(`${r.ok ? "ok    " : "FAILED"} ${r.label}: ${r.passed} passed, ${r.failed} failed`);
  }
  for (const isa of aboveForced) {
    console.log(`skipped ${isa}: SPARSEBERT_ISA=${forced} limits the run`);
  }
  if (skipped.length + aboveForced.length === 0) {
    console.log("skipped variants: none, this CPU runs every variant built");
  }
  for (const isa of skipped) {
    console.log(`skipped ${isa}: this CPU lacks it (built, not run; nothing claims it passed)`);
  }
  const passed = results.reduce((s, r) => s + r.passed, 0);
  const failed = results.reduce((s, r) => s + r.failed, 0);
  console.log(`tests: ${passed} passed, ${failed} failed`);
  return results.every((r) => r.ok) ? 0 : 1;
}

function main(args: string[]): Promise<number> {
  const parse = {
    allowPositionals: true,
    options: { ...flagOptions("no-setup", "quick"), ...stringOptions("filter") },
  };
  return runCommand(
    args,
    { help: HELP, parse },
    ({ values, positionals }) => testAll(values, positionals),
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));

/**
 * `deno task cli info`: what the kernel library sees and uses on this machine.
 *
 * @module
 */
import { flagOptions, runCommand } from "./_command.ts";
import {
  type CpuFeatureReport,
  cpuFeatureReport,
  cpuModel,
  cpuSupports,
  defaultLibraryDir,
  describeFeatures,
  ISA_VARIANTS,
  kernels,
  libraryFileName,
  threads,
} from "../ffi/library.ts";
import { ZIG_VERSION, zigVersion } from "./_toolchain.ts";

/** One-line summary. */
export const SUMMARY = "CPU features, kernel variants built and loaded, threads, versions";

/** Help text. */
export const HELP = `Usage: deno task cli info [--json]

Prints the CPU features seen (cpuid + XCR0), the kernel variants built and whether this CPU can
run each, the variant loaded and why, the worker thread count and the Zig and Deno versions.

Environment: SPARSEBERT_ISA (force a variant), SPARSEBERT_LIB (explicit library file),
SPARSEBERT_LIB_DIR (build folder), SPARSEBERT_THREADS (thread count).

Options:
  --json      print one JSON object
  -h, --help  show this help`;

/** The options `HELP` describes, as `parseArgs` takes them. */
const OPTIONS = flagOptions("json");

/** Everything `info` reports. */
export interface InfoReport {
  /** The CPU: model name, the features that matter here, and the raw probe's names. */
  cpu: { model: string | null; features: CpuFeatureReport; probed: string[] };
  /** Each variant of the build folder: built or not, and whether this CPU can run it. */
  variants: { isa: string; path: string; built: boolean; runnable: boolean }[];
  /** The variant loaded and why it was chosen. */
  loaded: { isa: string; path: string; reason: string };
  threads: number;
  versions: { deno: string; zig: string | null; zigRequired: string };
}

/** Collects the report. */
export async function info(): Promise<InfoReport> {
  const lib = kernels();
  const dir = defaultLibraryDir();
  const variants = ISA_VARIANTS.map((isa) => {
    const path = `${dir}/${libraryFileName(isa)}`;
    let built = false;
    try {
      built = Deno.statSync(path).isFile;
    } catch { /* not built */ }
    return { isa, path, built, runnable: cpuSupports(lib.cpuFeatures, isa) };
  });
  return {
    cpu: {
      model: cpuModel(),
      features: cpuFeatureReport(lib.cpuFeatures),
      probed: describeFeatures(lib.cpuFeatures).split(" "),
    },
    variants,
    loaded: { isa: lib.isa, path: lib.path, reason: lib.reason },
    threads: threads(),
    versions: { deno: Deno.version.deno, zig: await zigVersion(), zigRequired: ZIG_VERSION },
  };
}

/** Runs the command. */
export function main(args: string[]): Promise<number> {
  return runCommand(args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
    const report = await info();
    if (values.json) {
      console.log(JSON.stringify(report, null, 2));
      return 0;
    }
    console.log(`CPU:       ${report.cpu.model ?? "unknown"}`);
    const features = Object.entries(report.cpu.features).map(([name, on]) =>
      `${name} ${on ? "yes" : "no"}`
    );
    console.log(`Features:  ${features.join(", ")}`);
    console.log("Variants:");
    for (const v of report.variants) {
      const state = !v.built ? "not built" : v.runnable ? "runnable" : "built, CPU lacks it";
      console.log(`  ${v.isa.padEnd(11)} ${state.padEnd(20)} ${v.path}`);
    }
    console.log(`Loaded:    ${report.loaded.isa} (${report.loaded.path})`);
    console.log(`Why:       ${report.loaded.reason}`);
    console.log(`Threads:   ${report.threads}`);
    console.log(
      `Versions:  Deno ${report.versions.deno}, Zig ${
        report.versions.zig ?? "not installed"
      } (build.zig requires ${report.versions.zigRequired})`,
    );
    return 0;
  });
}

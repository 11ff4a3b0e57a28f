/**
 * `deno task release --out DIR`: everything a static web host needs for
 * `import { pipeline } from "<base>/mod.ts"`: the module sources that `mod.ts` imports, the
 * ReleaseFast kernel library of every ISA variant in `lib/`, and `SHA256SUMS`. Serving DIR at
 * any base URL makes the import work; the libraries are checked against the digests pinned in
 * `ffi/checksums.ts` before a user's cache keeps them.
 *
 * @module
 */
import { LIBRARY_SHA256, RELEASE_VERSION } from "../ffi/checksums.ts";
import { sha256Hex } from "../ffi/download.ts";
import { ISA_VARIANTS, type IsaVariant, libraryFileName } from "../ffi/library.ts";
import { ROOT } from "./_toolchain.ts";
import { build } from "./build.ts";
import { flagOptions, runCommand, stringOptions, UsageError } from "./_command.ts";

const HELP = `Usage: deno task release --out DIR [options]

Builds the ReleaseFast kernel libraries and writes a release folder: the module sources of
mod.ts, lib/libsparsebert_<isa>.so for every variant, SHA256SUMS and release.json. The
libraries must equal the digests pinned in ffi/checksums.ts (Zig builds are reproducible);
--pin rewrites that file from this build instead (commit it).

Options:
  --out DIR    folder to write (created; files in it are replaced)
  --pin        pin this build's digests in ffi/checksums.ts first
  --no-build   use the libraries already in build/fast/lib
  --json       print one JSON object instead of progress
  -h, --help   show this help`;

/** Where `pinDigests` writes. */
export const CHECKSUMS_FILE = `${ROOT}/ffi/checksums.ts`;

/** SHA-256 of each variant's library in `dir`. */
export async function libraryDigests(dir: string): Promise<Record<IsaVariant, string>> {
  const out = {} as Record<IsaVariant, string>;
  for (const isa of ISA_VARIANTS) {
    out[isa] = await sha256Hex(await Deno.readFile(`${dir}/${libraryFileName(isa)}`));
  }
  return out;
}

/** Variants whose digest in `digests` differs from the pinned one. */
export function unpinned(digests: Record<IsaVariant, string>): IsaVariant[] {
  return ISA_VARIANTS.filter((isa) => digests[isa] !== LIBRARY_SHA256[isa]);
}

/** Rewrites `ffi/checksums.ts` with `digests`, keeping its header. */
export async function pinDigests(digests: Record<IsaVariant, string>): Promise<void> {
  const text = await Deno.readTextFile(CHECKSUMS_FILE);
  const start = text.indexOf("export const LIBRARY_SHA256");
  if (start < 0) throw new Error(`${CHECKSUMS_FILE} has no LIBRARY_SHA256 table`);
  const table = ISA_VARIANTS.map((isa) => `  ${isa}: "${digests[isa]}",\n`).join("");
  await Deno.writeTextFile(
    CHECKSUMS_FILE,
    `${
      text.slice(0, start)
    }export const LIBRARY_SHA256: Readonly<Record<string, string>> = {\n${table}};\n`,
  );
}

/** Local files of `mod.ts`'s module graph, relative to the repository root. */
export async function moduleFiles(): Promise<string[]> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", `${ROOT}/mod.ts`],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`deno info failed: ${new TextDecoder().decode(out.stderr)}`);
  const graph = JSON.parse(new TextDecoder().decode(out.stdout)) as {
    modules: { specifier: string }[];
  };
  const root = new URL(`file://${ROOT}/`);
  return graph.modules.map((m) => m.specifier).filter((s) => s.startsWith(root.href))
    .map((s) => decodeURIComponent(s.slice(root.href.length))).sort();
}

/** What {@linkcode writeRelease} wrote. */
export interface ReleaseReport {
  /** The release folder. */
  out: string;
  /** Module version (`ffi/checksums.ts`). */
  version: string;
  /** Module sources copied, relative to `out`. */
  sources: string[];
  /** Library digests by variant (equal to the pinned ones). */
  libraries: Record<IsaVariant, string>;
  /** Whether this run rewrote `ffi/checksums.ts`. */
  pinned: boolean;
}

/** Options of {@linkcode writeRelease}. */
export interface ReleaseOptions {
  /** Folder to write. */
  out: string;
  /** Pin this build's digests first. */
  pin?: boolean;
  /** Skip the build and use `build/fast/lib` as it is. */
  noBuild?: boolean;
  /** Progress lines; default stderr. */
  log?: (line: string) => void;
}

/** Builds (unless told not to), checks or pins the digests, and writes the release folder. */
export async function writeRelease(options: ReleaseOptions): Promise<ReleaseReport> {
  const log = options.log ?? ((line: string) => console.error(line));
  if (!options.noBuild) await build({ fastOnly: true, log });
  const libDir = `${ROOT}/build/fast/lib`;
  const digests = await libraryDigests(libDir);
  const stale = unpinned(digests);
  let pinned = false;
  if (stale.length > 0 && options.pin) {
    await pinDigests(digests);
    pinned = true;
    log(`Pinned new digests for ${stale.join(", ")} in ffi/checksums.ts (commit it)`);
  } else if (stale.length > 0) {
    throw new Error(
      `The built ${stale.map(libraryFileName).join(", ")} differ from the digests pinned in ` +
        `ffi/checksums.ts (${stale.map((isa) => `${isa}: built ${digests[isa]}`).join("; ")}). ` +
        `Run \`deno task release --pin --out DIR\` after a kernel change, and commit the file.`,
    );
  }
  const out = options.out.replace(/\/$/, "");
  const sources = await moduleFiles();
  const sums: string[] = [];
  for (const rel of sources) {
    const data = await Deno.readFile(`${ROOT}/${rel}`);
    await Deno.mkdir(`${out}/${rel.split("/").slice(0, -1).join("/") || "."}`, { recursive: true });
    await Deno.writeFile(`${out}/${rel}`, data);
    sums.push(`${await sha256Hex(data)}  ${rel}`);
  }
  await Deno.mkdir(`${out}/lib`, { recursive: true });
  for (const isa of ISA_VARIANTS) {
    const name = libraryFileName(isa);
    await Deno.copyFile(`${libDir}/${name}`, `${out}/lib/${name}`);
    sums.push(`${digests[isa]}  lib/${name}`);
  }
  await Deno.writeTextFile(`${out}/SHA256SUMS`, sums.join("\n") + "\n");
  const report: ReleaseReport = {
    out,
    version: RELEASE_VERSION,
    sources,
    libraries: digests,
    pinned,
  };
  await Deno.writeTextFile(`${out}/release.json`, JSON.stringify(report, null, 2) + "\n");
  log(`Wrote ${sources.length} module files and ${ISA_VARIANTS.length} libraries to ${out}`);
  return report;
}

/** Runs `deno task release` with `args`; resolves to the exit code. */
export function main(args: string[]): Promise<number> {
  const options = { ...stringOptions("out"), ...flagOptions("pin", "no-build", "json") };
  return runCommand(args, { help: HELP, parse: { options } }, async ({ values }) => {
    if (values.out === undefined) throw new UsageError("--out DIR is required");
    const report = await writeRelease({
      out: values.out,
      pin: values.pin,
      noBuild: values["no-build"],
      log: values.json ? () => {} : undefined,
    });
    if (values.json) console.log(JSON.stringify(report));
    return 0;
  });
}

if (import.meta.main) Deno.exit(await main(Deno.args));

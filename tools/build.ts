/**
 * Builds the kernel libraries with the pinned Zig: ReleaseFast into `build/fast/lib` (what the
 * library loads) and ReleaseSafe into `build/safe/lib` (what the tests also run, so bounds and
 * overflow bugs trap).
 *
 *   deno task build [--fast-only] [--json]
 *
 * @module
 */
import { flagOptions, runCommand } from "./_command.ts";
import { ensureZig, ROOT, run } from "./_toolchain.ts";

const HELP = `Usage: deno task build [options]

Installs the pinned Zig if needed and builds libsparsebert_{baseline,avx2,avx512vnni}.so.

Options:
  --fast-only   build only the ReleaseFast libraries (build/fast/lib)
  --json        print one JSON line with the outputs instead of progress
  -h, --help    show this help`;

/** Builds the libraries; returns the folders written. */
export async function build(
  options: { fastOnly?: boolean; log?: (line: string) => void } = {},
): Promise<string[]> {
  const log = options.log ?? ((line: string) => console.error(line));
  const zig = await ensureZig(log);
  const modes: [string, string][] = [["ReleaseFast", "build/fast"]];
  if (!options.fastOnly) modes.push(["ReleaseSafe", "build/safe"]);
  const dirs: string[] = [];
  for (const [mode, prefix] of modes) {
    log(`Building kernels (${mode}) into ${prefix}/lib ...`);
    // Build into a staging prefix, then rename each library into place: a process that has
    // the old file loaded keeps its inode (overwriting a loaded .so in place crashes it).
    const staging = `${ROOT}/build/.staging-${mode}-${Deno.pid}`;
    try {
      await run(zig, ["build", `-Doptimize=${mode}`, "--prefix", staging], { quiet: true });
      const dir = `${ROOT}/${prefix}/lib`;
      await Deno.mkdir(dir, { recursive: true });
      for await (const entry of Deno.readDir(`${staging}/lib`)) {
        await Deno.rename(`${staging}/lib/${entry.name}`, `${dir}/${entry.name}`);
      }
      dirs.push(dir);
    } finally {
      await Deno.remove(staging, { recursive: true }).catch(() => {});
    }
  }
  return dirs;
}

if (import.meta.main) {
  const spec = { help: HELP, parse: { options: flagOptions("fast-only", "json") } };
  Deno.exit(
    await runCommand(Deno.args, spec, async ({ values }) => {
      const dirs = await build({
        fastOnly: values["fast-only"],
        log: values.json ? () => {} : undefined,
      });
      if (values.json) console.log(JSON.stringify({ ok: true, dirs }));
      return 0;
    }),
  );
}

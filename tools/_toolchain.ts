/**
 * Pinned toolchains installed into the git-ignored `.tools/` folder: Zig from PyPI (`ziglang`)
 * and a local Deno from npm. Shared by `tools/setup.ts`, `tools/build.ts` and `tools/test.ts`;
 * `run`, `pipInstall`, `freshVenv` and `venvSetupMain` also serve the tools that set up Python
 * venvs.
 *
 * @module
 */
import { flagOptions, runCommand } from "./_command.ts";

/** The Zig release `build.zig` accepts. */
export const ZIG_VERSION = "0.15.2";
/** The Deno release the README's commands run. */
export const DENO_VERSION = "2.9.6";

/** Repository root (this file lives in `tools/`). */
export const ROOT: string = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
/** Where the pinned Zig is installed. */
export const ZIG_DIR = `${ROOT}/.tools/zig`;
/** The pinned Zig binary. */
export const ZIG_BIN = `${ZIG_DIR}/ziglang/zig`;
/** Where the local Deno is installed. */
export const DENO_DIR = `${ROOT}/.tools`;

/** Runs a command, streaming its output unless `quiet`; throws with its stderr on failure. */
export async function run(
  cmd: string,
  args: string[],
  options: { cwd?: string; env?: Record<string, string>; quiet?: boolean } = {},
): Promise<string> {
  let child;
  try {
    child = new Deno.Command(cmd, {
      args,
      cwd: options.cwd ?? ROOT,
      env: options.env,
      stdout: "piped",
      stderr: "piped",
    }).spawn();
  } catch (cause) {
    throw new Error(`Could not start "${cmd}": ${(cause as Error).message}`, { cause });
  }
  const [out, err] = await Promise.all([
    pump(child.stdout, options.quiet ? null : Deno.stdout),
    pump(child.stderr, options.quiet ? null : Deno.stderr),
  ]);
  const status = await child.status;
  if (!status.success) {
    throw new Error(
      `"${cmd} ${args.join(" ")}" failed with exit code ${status.code}\n${err.slice(-4000)}`,
    );
  }
  return out;
}

/** `python -m pip install --quiet --disable-pip-version-check ...args`, quiet unless it fails. */
export async function pipInstall(python: string, args: string[]): Promise<void> {
  await run(python, ["-m", "pip", "install", "--quiet", "--disable-pip-version-check", ...args], {
    quiet: true,
  });
}

/** Creates an empty Python venv at `dir` with the machine's `python3`, replacing what is there. */
export async function freshVenv(dir: string): Promise<void> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.mkdir(dir.slice(0, dir.lastIndexOf("/")), { recursive: true });
  await run("python3", ["-m", "venv", dir], { quiet: true });
}

/**
 * The command line of a tool that sets up a Python venv with `setup` (it returns the venv's
 * Python): `--help`; `--json` prints one line `{"ok": true, "python": ..., ...details}` instead
 * of progress; otherwise `ok: <python><note>` goes to stderr. Resolves to the exit code.
 */
export function venvSetupMain(
  args: string[],
  help: string,
  setup: (log?: (line: string) => void) => Promise<string>,
  report: { details: () => Promise<Record<string, unknown>>; note?: string },
): Promise<number> {
  const spec = { help, parse: { options: flagOptions("json") } };
  return runCommand(args, spec, async ({ values }) => {
    const python = await setup(values.json ? () => {} : undefined);
    if (values.json) console.log(JSON.stringify({ ok: true, python, ...await report.details() }));
    else console.error(`ok: ${python}${report.note ?? ""}`);
    return 0;
  });
}

/** Where streamed output goes (Deno.stdout / Deno.stderr). */
interface Sink {
  write(data: Uint8Array): Promise<number>;
}

async function pump(stream: ReadableStream<Uint8Array>, sink: Sink | null): Promise<string> {
  const decoder = new TextDecoder();
  let text = "";
  for await (const chunk of stream) {
    text += decoder.decode(chunk, { stream: true });
    if (sink !== null) await writeAll(sink, chunk);
  }
  return text;
}

async function writeAll(sink: Sink, data: Uint8Array): Promise<void> {
  let written = 0;
  while (written < data.length) written += await sink.write(data.subarray(written));
}

/** Version the installed pinned Zig reports, or null when it is missing or broken. */
export async function zigVersion(): Promise<string | null> {
  try {
    const out = await new Deno.Command(ZIG_BIN, { args: ["version"], stdout: "piped" }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/** Installs the pinned Zig from PyPI unless it is already there; returns the binary path. */
export async function ensureZig(log: (line: string) => void): Promise<string> {
  if (await zigVersion() === ZIG_VERSION) return ZIG_BIN;
  log(`Installing Zig ${ZIG_VERSION} from PyPI (ziglang) into .tools/zig ...`);
  await Deno.remove(ZIG_DIR, { recursive: true }).catch(() => {});
  await pipInstall("python3", ["--no-deps", "--target", ZIG_DIR, `ziglang==${ZIG_VERSION}`]);
  const version = await zigVersion();
  if (version !== ZIG_VERSION) {
    throw new Error(`Installed Zig reports version "${version}", expected ${ZIG_VERSION}`);
  }
  return ZIG_BIN;
}

/**
 * Installs npm `packages` into `prefix` (`npm install --no-save --ignore-scripts`) unless every
 * path of `present` exists; `what` names them in the progress line.
 */
export async function ensureNpmTools(options: {
  prefix: string;
  packages: string[];
  present: string[];
  what: string;
  log: (line: string) => void;
}): Promise<void> {
  try {
    await Promise.all(options.present.map((p) => Deno.stat(p)));
    return;
  } catch {
    options.log(
      `Installing ${options.what} from npm into ${
        options.prefix.slice(ROOT.length + 1)
      }/node_modules ...`,
    );
  }
  await run("npm", [
    "install",
    "--silent",
    "--no-save",
    "--ignore-scripts",
    "--prefix",
    options.prefix,
    ...options.packages,
  ], { quiet: true });
}

/** Installs a local Deno from npm (used by scripts and editors) unless present. */
export async function ensureLocalDeno(log: (line: string) => void): Promise<string> {
  const bin = `${DENO_DIR}/node_modules/@deno/linux-x64-glibc/deno`;
  await ensureNpmTools({
    prefix: DENO_DIR,
    packages: [`deno@${DENO_VERSION}`],
    present: [bin],
    what: `Deno ${DENO_VERSION}`,
    log,
  });
  return bin;
}

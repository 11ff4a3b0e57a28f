/**
 * Creates the Python venvs of the benchmark peers and checks that each runtime imports and runs.
 *
 * ```sh
 * deno run -A tools/peers/setup_peers.ts            # peers + deepsparse venvs
 * deno run -A tools/peers/setup_peers.ts --torch    # also PyTorch + onnx2torch (several GB)
 * deno run -A tools/peers/setup_peers.ts --json     # machine-readable summary on stdout
 * ```
 *
 * - `.cache/venv/peers`: Python 3.11 with tools/peers/requirements-peers.txt (onnxruntime,
 *   openvino, onnx, numpy); `--torch` adds tools/peers/requirements-torch.txt.
 * - `.cache/venv/deepsparse`: Python 3.11 with tools/peers/requirements-deepsparse.txt (the last
 *   DeepSparse release that installs, 1.8.0, with numpy<2 and onnx 1.14).
 *
 * A venv whose requirements did not change since the last successful install is not reinstalled
 * (a hash stamp is kept in the venv). Every runtime is then checked with
 * `peer_runner.py --self-test`. A failure (install or run) is recorded, never fatal for the other
 * peers: the result goes to `.cache/venv/status.json` (read it with `readPeerSetupStatus` from
 * bench/peers/mod.ts) so the comparison harness reports a failed peer with its error. pip logs go
 * to `.cache/venv/<venv>.install.log`. The exit code is 0 unless `--strict` is given and a
 * requested runtime failed.
 *
 * @module
 */

import { flagOptions, runCommand, stringOptions, UsageError } from "../_command.ts";
import { exists } from "../../formats/fs.ts";
import {
  DEFAULT_VENV_ROOT,
  PEER_RUNTIMES,
  type PeerError,
  type PeerRuntime,
  type PeerRuntimeStatus,
  type PeerSetupStatus,
  type PeerVenv,
  peerVenv,
  readPeerSetupStatus,
  runPeerOnce,
} from "../../bench/peers/mod.ts";

const HERE = new URL("./", import.meta.url);
const REQUIREMENTS: Record<PeerVenv | "torch", string> = {
  peers: decodeURIComponent(new URL("requirements-peers.txt", HERE).pathname),
  deepsparse: decodeURIComponent(new URL("requirements-deepsparse.txt", HERE).pathname),
  torch: decodeURIComponent(new URL("requirements-torch.txt", HERE).pathname),
};
const TORCH_NOTE = "PyPI has no CPU-only torch wheel for Linux x86_64: torch 2.15.0 there " +
  "requires the CUDA 13 packages (cuda-toolkit, nvidia-cudnn-cu13, nvidia-nccl-cu13, triton; " +
  "several GB) and does not import without them";

const HELP = `Usage: deno run -A tools/peers/setup_peers.ts [options]

Creates the Python venvs of the benchmark peers under .cache/venv/ and checks each runtime.

Options:
  --only LIST      venvs to set up, comma-separated: peers,deepsparse (default both)
  --torch          also install PyTorch + onnx2torch into the peers venv (3+ GB of CUDA
                   packages: PyPI has no CPU-only torch wheel for Linux)
  --force          delete and recreate the venvs
  --no-check       skip the per-runtime self-test
  --python PATH    Python 3.11 interpreter (default: python3.11, then python3)
  --venv-root DIR  where the venvs go (default .cache/venv)
  --strict         exit 1 when a requested runtime fails
  --json           print the status JSON on stdout (progress stays on stderr)
  -h, --help       show this help

The status of every runtime (ok, versions, or the stage and error of its failure) is written to
<venv-root>/status.json for the comparison harness.
`;

interface Options {
  only: PeerVenv[];
  torch: boolean;
  force: boolean;
  check: boolean;
  python: string | null;
  venvRoot: string;
  strict: boolean;
  json: boolean;
}

function progress(venv: string, message: string): void {
  console.error(`[${venv}] ${message}`);
}

interface Captured {
  code: number;
  output: string;
}

/** Runs a command, appending its output to `log`; never throws for a non-zero exit. */
async function capture(cmd: string, args: string[], log: string | null): Promise<Captured> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    return { code: 127, output: `cannot run '${cmd}': ${(err as Error).message}` };
  }
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  if (log) await Deno.writeTextFile(log, `$ ${cmd} ${args.join(" ")}\n${text}\n`, { append: true });
  return { code: out.code, output: text };
}

/** Finds a Python 3.11 interpreter; returns its path and version or an error. */
async function findPython(explicit: string | null): Promise<{ path: string; version: string }> {
  const candidates = explicit ? [explicit] : ["python3.11", "python3"];
  const seen: string[] = [];
  for (const c of candidates) {
    const r = await capture(
      c,
      ["-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
      null,
    );
    if (r.code !== 0) {
      seen.push(`'${c}' does not run`);
      continue;
    }
    const version = r.output.trim();
    if (version.startsWith("3.11.")) return { path: c, version };
    seen.push(`'${c}' is Python ${version}`);
  }
  throw new Error(
    `No Python 3.11 found (${seen.join("; ")}): DeepSparse supports Python 3.8 to 3.11 only; ` +
      "pass --python PATH",
  );
}

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The last lines of a pip log that say why it failed. */
function pipFailure(output: string): string {
  const lines = output.split("\n").map((l) => l.trim()).filter((l) => l !== "");
  const errors = lines.filter((l) => l.startsWith("ERROR:") || l.startsWith("error:"));
  return (errors.length ? errors.slice(-3) : lines.slice(-3)).join(" | ");
}

/** Creates/updates one venv. Returns null on success, else the error. */
async function installVenv(
  venv: PeerVenv,
  requirements: string[],
  options: Options,
  python: string,
): Promise<string | null> {
  const dir = `${options.venvRoot}/${venv}`;
  const log = `${options.venvRoot}/${venv}.install.log`;
  const stamp = `${dir}/.sparsebert-requirements.sha256`;
  await Deno.writeTextFile(log, `# ${new Date().toISOString()}\n`);
  if (options.force && await exists(dir)) {
    progress(venv, `removing ${dir}`);
    await Deno.remove(dir, { recursive: true });
  }
  const venvPython = `${dir}/bin/python`;
  if (!await exists(venvPython)) {
    progress(venv, `creating venv with ${python}`);
    const r = await capture(python, ["-m", "venv", dir], log);
    if (r.code !== 0) return `python -m venv failed: ${pipFailure(r.output)}`;
  }
  let text = "";
  for (const f of requirements) text += await Deno.readTextFile(f);
  const hash = await sha256(text);
  if (await exists(stamp) && (await Deno.readTextFile(stamp)).trim() === hash) {
    progress(venv, "requirements unchanged, skipping pip");
    return null;
  }
  await Deno.remove(stamp).catch(() => {});
  for (const f of requirements) {
    progress(venv, `pip install -r ${f.slice(f.lastIndexOf("/") + 1)} (log: ${log})`);
    const t0 = performance.now();
    const r = await capture(
      venvPython,
      [
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "-r",
        f,
      ],
      log,
    );
    if (r.code !== 0) return `pip install -r ${f} failed: ${pipFailure(r.output)}`;
    progress(venv, `installed in ${((performance.now() - t0) / 1000).toFixed(0)} s`);
  }
  await Deno.writeTextFile(stamp, hash + "\n");
  return null;
}

async function checkRuntime(runtime: PeerRuntime, venvRoot: string): Promise<PeerRuntimeStatus> {
  const venv = peerVenv(runtime);
  try {
    const { info, result } = await runPeerOnce({
      runtime,
      selfTest: true,
      batch: 1,
      seq: 16,
      threads: 1,
      venvRoot,
      iterations: 3,
      warmup: 1,
      startTimeoutMs: 180_000,
      timeoutMs: 60_000,
    });
    progress(
      venv,
      `${runtime}: ok (${
        Object.entries(info.versions).map(([k, v]) => `${k} ${v}`).join(", ")
      }; self-test ${result.medianMs.toFixed(2)} ms)`,
    );
    return { ok: true, venv, versions: info.versions };
  } catch (err) {
    const e = err as PeerError;
    const status: PeerRuntimeStatus = {
      ok: false,
      venv,
      stage: e.stage ?? "run",
      error: e.message,
      detail: e.stderr ? e.stderr.slice(-4000) : undefined,
    };
    return status;
  }
}

/** The command line's options, as `parseArgs` gives them. */
interface Values {
  only: string;
  torch: boolean;
  force: boolean;
  "no-check": boolean;
  python?: string;
  "venv-root": string;
  strict: boolean;
  json: boolean;
}

function toOptions(values: Values): Options {
  const only = values.only.split(",").map((s) => s.trim()).filter((s) => s !== "");
  for (const v of only) {
    if (v !== "peers" && v !== "deepsparse") {
      throw new UsageError(`Unknown venv '${v}' in --only, expected peers or deepsparse`);
    }
  }
  if (values.torch && !only.includes("peers")) {
    throw new UsageError("--torch installs into the peers venv: add peers to --only");
  }
  return {
    only: only as PeerVenv[],
    torch: values.torch,
    force: values.force,
    check: !values["no-check"],
    python: values.python ?? null,
    venvRoot: values["venv-root"].replace(/\/+$/, ""),
    strict: values.strict,
    json: values.json,
  };
}

/** Runs the setup; returns the status written to `<venvRoot>/status.json`. */
export async function setupPeers(options: Options): Promise<PeerSetupStatus> {
  await Deno.mkdir(options.venvRoot, { recursive: true });
  const runtimes = {} as Record<PeerRuntime, PeerRuntimeStatus>;
  let pythonLabel = "";
  let python: { path: string; version: string } | null = null;
  let pythonError: string | null = null;
  try {
    python = await findPython(options.python);
    pythonLabel = `${python.path} (${python.version})`;
  } catch (err) {
    pythonError = (err as Error).message;
    pythonLabel = "none";
  }
  const venvErrors: Partial<Record<PeerVenv, string>> = {};
  for (const venv of options.only) {
    if (python === null) {
      venvErrors[venv] = pythonError!;
      continue;
    }
    const reqs = [REQUIREMENTS[venv]];
    if (venv === "peers" && options.torch) {
      progress(venv, `--torch: ${TORCH_NOTE}; installing them anyway`);
      reqs.push(REQUIREMENTS.torch);
    }
    const error = await installVenv(venv, reqs, options, python.path);
    if (error) {
      venvErrors[venv] = error;
      progress(venv, `install FAILED: ${error}`);
    }
  }
  const previous = await readPeerSetupStatus(options.venvRoot).catch(() => null);
  for (const runtime of PEER_RUNTIMES) {
    const venv = peerVenv(runtime);
    if (!options.only.includes(venv)) {
      // Keep what an earlier run found for the venvs this run leaves alone.
      runtimes[runtime] = previous?.runtimes?.[runtime] ??
        { ok: false, venv, stage: "skipped", error: `--only left out ${venv}` };
      continue;
    }
    if (venvErrors[venv]) {
      runtimes[runtime] = { ok: false, venv, stage: "install", error: venvErrors[venv] };
      continue;
    }
    if (!options.check) {
      runtimes[runtime] = { ok: false, venv, stage: "skipped", error: "--no-check given" };
      continue;
    }
    const status = await checkRuntime(runtime, options.venvRoot);
    if (runtime === "torch" && !status.ok && !options.torch && status.stage === "import") {
      progress(venv, "torch: not installed (pass --torch)");
      runtimes[runtime] = {
        ok: false,
        venv,
        stage: "skipped",
        error: `Not installed: pass --torch to setup_peers.ts (${TORCH_NOTE})`,
      };
      continue;
    }
    if (!status.ok) progress(venv, `${runtime}: FAILED at ${status.stage}: ${status.error}`);
    runtimes[runtime] = status;
  }
  const status: PeerSetupStatus = { date: new Date().toISOString(), python: pythonLabel, runtimes };
  const file = `${options.venvRoot}/status.json`;
  const tmp = `${file}.tmp-${Deno.pid}`;
  await Deno.writeTextFile(tmp, JSON.stringify(status, null, 2) + "\n");
  await Deno.rename(tmp, file);
  return status;
}

/** Runs the command line; returns the exit code. */
export function main(args: string[]): Promise<number> {
  const options = {
    ...stringOptions("python"),
    ...flagOptions("torch", "force", "no-check", "strict", "json"),
    only: { type: "string", default: "peers,deepsparse" },
    "venv-root": { type: "string", default: DEFAULT_VENV_ROOT },
  } as const;
  return runCommand(
    args,
    { help: HELP, parse: { options } },
    ({ values }) => run(toOptions(values)),
  );
}

async function run(options: Options): Promise<number> {
  const status = await setupPeers(options);
  if (options.json) console.log(JSON.stringify(status, null, 2));
  else {
    for (const [runtime, s] of Object.entries(status.runtimes)) {
      const what = s.ok
        ? `ok (${Object.entries(s.versions ?? {}).map(([k, v]) => `${k} ${v}`).join(", ")})`
        : `${s.stage === "skipped" ? "skipped" : "FAILED"}: ${s.error}`;
      console.log(`${runtime.padEnd(10)} ${what}`);
    }
    console.log(`status written to ${options.venvRoot}/status.json`);
  }
  const failed = PEER_RUNTIMES.filter((r) => {
    const s = status.runtimes[r];
    return !s.ok && s.stage !== "skipped";
  });
  return options.strict && failed.length > 0 ? 1 : 0;
}

if (import.meta.main) Deno.exit(await main(Deno.args));

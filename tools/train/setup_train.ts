/**
 * Creates the training venv of `deno task cli sparsify` (`.cache/venv/train`: JAX for CPU and
 * optax from PyPI, pinned in tools/train/requirements-train.txt) and checks that JAX runs.
 *
 * ```sh
 * deno task setup:train            # create or update; skipped when the requirements are unchanged
 * deno task setup:train --force    # delete and recreate
 * ```
 *
 * Why JAX and not PyTorch: PyPI has no CPU-only torch wheel for Linux x86_64 (torch there pulls
 * the CUDA packages, several GB; download.pytorch.org is not reachable here), while `jax` +
 * `jaxlib` for CPU are about 630 MB with scipy, and XLA compiles the whole training step.
 *
 * @module
 */

import { flagOptions, runCommand, stringOptions } from "../_command.ts";
import { exists } from "../../formats/fs.ts";
import { TRAIN_VENV } from "../../compress/sparsify.ts";

const REQUIREMENTS = decodeURIComponent(
  new URL("requirements-train.txt", import.meta.url).pathname,
);

const HELP = `Usage: deno task setup:train [options]

Creates the JAX training venv of "deno task cli sparsify" (${TRAIN_VENV}) from
tools/train/requirements-train.txt (PyPI, about 630 MB) and checks that JAX runs.

Options:
  --python PATH    Python 3.10+ interpreter (default: python3.11, then python3)
  --venv DIR       where the venv goes (default ${TRAIN_VENV})
  --force          delete and recreate the venv
  --json           print the result as JSON
  -h, --help       show this help`;

const OPTIONS = {
  ...stringOptions("python", "venv"),
  ...flagOptions("force", "json"),
} as const;

async function run(cmd: string, args: string[], log: string): Promise<string> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new Error(`Cannot run ${cmd}: ${(err as Error).message}`, { cause: err });
  }
  const text = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
  await Deno.writeTextFile(log, `$ ${cmd} ${args.join(" ")}\n${text}\n`, { append: true });
  if (!out.success) {
    const tail = text.trim().split("\n").slice(-3).join(" | ");
    throw new Error(`${cmd} ${args.join(" ")} failed (exit ${out.code}; log ${log}): ${tail}`);
  }
  return text;
}

async function findPython(given: string | undefined): Promise<string> {
  for (const c of given ? [given] : ["python3.11", "python3"]) {
    try {
      const out = await new Deno.Command(c, {
        args: ["-c", "import sys; print(sys.version_info[0] * 100 + sys.version_info[1])"],
        stdout: "piped",
        stderr: "null",
      }).output();
      if (out.success && Number(new TextDecoder().decode(out.stdout)) >= 310) return c;
    } catch {
      // try the next one
    }
  }
  throw new Error("No Python 3.10+ found: pass --python PATH");
}

/** Creates or updates the venv; resolves to JAX's version and devices. */
export async function setupTrainVenv(
  options: { python?: string; venv?: string; force?: boolean } = {},
): Promise<{ venv: string; installed: boolean; check: string }> {
  const venv = options.venv ?? TRAIN_VENV;
  const log = `${venv}.install.log`;
  await Deno.mkdir(venv.slice(0, venv.lastIndexOf("/")) || ".", { recursive: true });
  await Deno.writeTextFile(log, `# ${new Date().toISOString()}\n`);
  if (options.force && await exists(venv)) await Deno.remove(venv, { recursive: true });
  const python = `${venv}/bin/python`;
  if (!await exists(python)) {
    const base = await findPython(options.python);
    console.error(`[train] creating ${venv} with ${base}`);
    await run(base, ["-m", "venv", venv], log);
  }
  const req = await Deno.readTextFile(REQUIREMENTS);
  const stamp = `${venv}/.sparsebert-requirements`;
  let installed = false;
  if (!await exists(stamp) || await Deno.readTextFile(stamp) !== req) {
    console.error(`[train] pip install -r ${REQUIREMENTS} (log ${log})`);
    await run(python, [
      "-m",
      "pip",
      "install",
      "--disable-pip-version-check",
      "-r",
      REQUIREMENTS,
    ], log);
    await Deno.writeTextFile(stamp, req);
    installed = true;
  }
  const check = (await run(python, [
    "-c",
    "import jax, jax.numpy as jnp, optax; " +
    "assert float(jax.jit(lambda x: (x * x).sum())(jnp.arange(4.0))) == 14.0; " +
    "print(f'jax {jax.__version__} optax {optax.__version__} {jax.devices()}')",
  ], log)).trim().split("\n").at(-1)!;
  return { venv, installed, check };
}

if (import.meta.main) {
  Deno.exit(
    await runCommand(Deno.args, { help: HELP, parse: { options: OPTIONS } }, async ({ values }) => {
      const r = await setupTrainVenv({
        python: values.python,
        venv: values.venv,
        force: values.force,
      });
      if (values.json) console.log(JSON.stringify({ ok: true, ...r }));
      else console.log(`${r.venv}: ${r.check}${r.installed ? " (installed)" : ""}`);
      return 0;
    }),
  );
}

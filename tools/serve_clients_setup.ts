/**
 * Sets up the Python client used by the server's client tests: a venv under
 * `.cache/venv/serve-clients` with `tritonclient[http]` from PyPI (pinned). Idempotent: a
 * venv that already imports the pinned version is left alone.
 *
 *   deno run -A tools/serve_clients_setup.ts [--json]
 *
 * @module
 */
import { parseArgs } from "node:util";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");

/** The pinned client release. */
export const TRITONCLIENT_VERSION = "2.73.0";
/** The venv folder. */
export const CLIENTS_VENV = `${ROOT}/.cache/venv/serve-clients`;
/** The venv's Python. */
export const CLIENTS_PYTHON = `${CLIENTS_VENV}/bin/python`;

const HELP = `Usage: deno run -A tools/serve_clients_setup.ts [--json]

Creates .cache/venv/serve-clients with tritonclient[http]==${TRITONCLIENT_VERSION} (PyPI), used
by tests/serve_clients_test.ts to call the server's KServe v2 route. Idempotent.

Options:
  --json      print one JSON line with the python path and versions
  -h, --help  show this help`;

async function run(cmd: string, args: string[]): Promise<void> {
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  } catch (err) {
    throw new Error(`Could not start "${cmd}": ${(err as Error).message}`, { cause: err });
  }
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-4).join("\n");
    throw new Error(`"${cmd} ${args.join(" ")}" failed with exit code ${out.code}:\n${text}`);
  }
}

async function installedVersion(): Promise<string | null> {
  try {
    const out = await new Deno.Command(CLIENTS_PYTHON, {
      args: [
        "-c",
        "import tritonclient.http, importlib.metadata as m; print(m.version('tritonclient'))",
      ],
      stdout: "piped",
      stderr: "null",
    }).output();
    return out.success ? new TextDecoder().decode(out.stdout).trim() : null;
  } catch {
    return null;
  }
}

/**
 * Makes sure the venv exists with the pinned tritonclient; returns its Python.
 *
 * @throws Error with pip's message when the install fails (e.g. offline).
 */
export async function ensureServeClients(
  log: (line: string) => void = (line) => console.error(line),
): Promise<string> {
  if (await installedVersion() === TRITONCLIENT_VERSION) return CLIENTS_PYTHON;
  log(`Creating ${CLIENTS_VENV} with tritonclient[http]==${TRITONCLIENT_VERSION} ...`);
  await Deno.remove(CLIENTS_VENV, { recursive: true }).catch(() => {});
  await Deno.mkdir(`${ROOT}/.cache/venv`, { recursive: true });
  await run("python3", ["-m", "venv", CLIENTS_VENV]);
  await run(CLIENTS_PYTHON, [
    "-m",
    "pip",
    "install",
    "--quiet",
    "--disable-pip-version-check",
    `tritonclient[http]==${TRITONCLIENT_VERSION}`,
  ]);
  const version = await installedVersion();
  if (version !== TRITONCLIENT_VERSION) {
    throw new Error(
      `tritonclient in ${CLIENTS_VENV} reports version "${version}", expected ${TRITONCLIENT_VERSION}`,
    );
  }
  return CLIENTS_PYTHON;
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(HELP);
  } else {
    try {
      const python = await ensureServeClients(values.json ? () => {} : undefined);
      if (values.json) {
        console.log(JSON.stringify({ ok: true, python, tritonclient: TRITONCLIENT_VERSION }));
      } else {
        console.error(`ok: ${python} (tritonclient ${TRITONCLIENT_VERSION})`);
      }
    } catch (error) {
      console.error(`serve clients setup failed: ${(error as Error).message}`);
      Deno.exit(1);
    }
  }
}

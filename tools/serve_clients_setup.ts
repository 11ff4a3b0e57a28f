/**
 * Sets up the Python clients used by the server's client tests: a venv under
 * `.cache/venv/serve-clients` with `tritonclient[http]` and `tei-client` (a client of Hugging
 * Face's text-embeddings-inference) from PyPI, pinned. Idempotent: a venv that already imports
 * the pinned versions is left alone.
 *
 *   deno run -A tools/serve_clients_setup.ts [--json]
 *
 * @module
 */
import { freshVenv, pipInstall, ROOT, venvSetupMain } from "./_toolchain.ts";

/** The pinned client release. */
export const TRITONCLIENT_VERSION = "2.73.0";
/** The pinned TEI client release. */
export const TEI_CLIENT_VERSION = "0.2.4";
/** The venv folder. */
export const CLIENTS_VENV = `${ROOT}/.cache/venv/serve-clients`;
/** The venv's Python. */
export const CLIENTS_PYTHON = `${CLIENTS_VENV}/bin/python`;

const HELP = `Usage: deno run -A tools/serve_clients_setup.ts [--json]

Creates .cache/venv/serve-clients with tritonclient[http]==${TRITONCLIENT_VERSION} and
tei-client==${TEI_CLIENT_VERSION} (PyPI), used by tests/serve_clients_test.ts to call the
server's KServe v2 and TEI routes. Idempotent.

Options:
  --json      print one JSON line with the python path and versions
  -h, --help  show this help`;

async function installedVersion(): Promise<string | null> {
  try {
    const out = await new Deno.Command(CLIENTS_PYTHON, {
      args: [
        "-c",
        "import tritonclient.http, tei_client, importlib.metadata as m; " +
        "print(m.version('tritonclient') + ' ' + m.version('tei-client'))",
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
  const wanted = `${TRITONCLIENT_VERSION} ${TEI_CLIENT_VERSION}`;
  if (await installedVersion() === wanted) return CLIENTS_PYTHON;
  log(
    `Creating ${CLIENTS_VENV} with tritonclient[http]==${TRITONCLIENT_VERSION} and ` +
      `tei-client==${TEI_CLIENT_VERSION} ...`,
  );
  await freshVenv(CLIENTS_VENV);
  await pipInstall(CLIENTS_PYTHON, [
    `tritonclient[http]==${TRITONCLIENT_VERSION}`,
    `tei-client==${TEI_CLIENT_VERSION}`,
  ]);
  const version = await installedVersion();
  if (version !== wanted) {
    throw new Error(
      `${CLIENTS_VENV} reports versions "${version}", expected "${wanted}" (tritonclient, tei-client)`,
    );
  }
  return CLIENTS_PYTHON;
}

if (import.meta.main) {
  const versions = { tritonclient: TRITONCLIENT_VERSION, teiClient: TEI_CLIENT_VERSION };
  const note = ` (tritonclient ${TRITONCLIENT_VERSION}, tei-client ${TEI_CLIENT_VERSION})`;
  const report = { details: () => Promise.resolve(versions), note };
  Deno.exit(await venvSetupMain(Deno.args, HELP, ensureServeClients, report));
}

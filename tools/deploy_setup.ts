/**
 * Sets up the offline validator of the deploy/ manifests: a venv under `.cache/venv/deploy`
 * with the pinned packages of `tools/requirements-deploy.txt` (kubernetes-validate and the
 * KServe SDK, from PyPI), used by tests/deploy_test.ts through tests/deploy_validate.py.
 * Idempotent: a venv whose packages already match every pin is left alone.
 *
 *   deno run -A tools/deploy_setup.ts [--json]
 *
 * @module
 */
import { freshVenv, pipInstall, ROOT, venvSetupMain } from "./_toolchain.ts";

/** The pinned requirements (the full closure, installed with --no-deps). */
export const DEPLOY_REQUIREMENTS = `${ROOT}/tools/requirements-deploy.txt`;
/** The venv folder. */
export const DEPLOY_VENV = `${ROOT}/.cache/venv/deploy`;
/** The venv's Python. */
export const DEPLOY_PYTHON = `${DEPLOY_VENV}/bin/python`;

const HELP = `Usage: deno run -A tools/deploy_setup.ts [--json]

Creates .cache/venv/deploy with the pins of tools/requirements-deploy.txt (kubernetes-validate,
kserve SDK; PyPI), used by tests/deploy_test.ts to validate deploy/ offline. Idempotent.

Options:
  --json      print one JSON line with the python path and the pins
  -h, --help  show this help`;

/**
 * Reads the `name==version` pins of the requirements file.
 *
 * @throws Error quoting the line when one is not an exact pin.
 */
export async function deployPins(): Promise<Record<string, string>> {
  const pins: Record<string, string> = {};
  const text = await Deno.readTextFile(DEPLOY_REQUIREMENTS);
  for (const raw of text.split("\n")) {
    const line = raw.replace(/#.*/, "").trim();
    if (line === "") continue;
    const match = /^([A-Za-z0-9._-]+)==([A-Za-z0-9._+-]+)$/.exec(line);
    if (match === null) {
      throw new Error(`${DEPLOY_REQUIREMENTS}: expected "name==version", got "${line}"`);
    }
    pins[match[1]] = match[2];
  }
  return pins;
}

/** Names of the pins the venv does not satisfy (all of them when there is no venv). */
async function unmetPins(pins: Record<string, string>): Promise<string[]> {
  // importlib.metadata normalizes names, so "typing_extensions" finds "typing-extensions".
  const script = [
    "import json, sys, importlib.metadata as m",
    "pins = json.loads(sys.argv[1])",
    "def version(name):",
    "    try: return m.version(name)",
    "    except m.PackageNotFoundError: return None",
    "print(json.dumps([n for n, v in pins.items() if version(n) != v]))",
  ].join("\n");
  try {
    const out = await new Deno.Command(DEPLOY_PYTHON, {
      args: ["-c", script, JSON.stringify(pins)],
      stdout: "piped",
      stderr: "null",
    }).output();
    if (!out.success) return Object.keys(pins);
    return JSON.parse(new TextDecoder().decode(out.stdout)) as string[];
  } catch {
    return Object.keys(pins);
  }
}

/**
 * Makes sure `.cache/venv/deploy` has every pin of tools/requirements-deploy.txt; returns its
 * Python. Creates the venv when missing, reinstalls when a pin changed.
 *
 * @throws Error with pip's message when the install fails (e.g. offline).
 */
export async function setupDeployValidator(
  log: (line: string) => void = (line) => console.error(line),
): Promise<string> {
  const pins = await deployPins();
  const unmet = await unmetPins(pins);
  if (unmet.length === 0) return DEPLOY_PYTHON;
  try {
    await Deno.stat(DEPLOY_PYTHON);
    log(`Updating ${DEPLOY_VENV} (${unmet.join(", ")}) ...`);
  } catch {
    log(`Creating ${DEPLOY_VENV} with kubernetes-validate and the KServe SDK (PyPI) ...`);
    await freshVenv(DEPLOY_VENV);
  }
  await pipInstall(DEPLOY_PYTHON, ["--no-deps", "-r", DEPLOY_REQUIREMENTS]);
  const still = await unmetPins(pins);
  if (still.length > 0) {
    throw new Error(
      `${DEPLOY_VENV} still lacks the pinned "${still.join('", "')}" after pip install`,
    );
  }
  log(`Deploy validator ready: ${DEPLOY_PYTHON}`);
  return DEPLOY_PYTHON;
}

if (import.meta.main) {
  const details = async () => ({ pins: await deployPins() });
  Deno.exit(await venvSetupMain(Deno.args, HELP, setupDeployValidator, { details }));
}

// deploy/: the Kubernetes and KServe manifests validate offline against real schemas
// (kubernetes-validate's strict Kubernetes JSON schemas, the KServe SDK's API models), broken
// ones are rejected, and the pieces agree with each other and with serve/main.ts.
import assert from "node:assert/strict";
import { parse, parseAllDocuments } from "yaml"; // npm:yaml@2.9.1 via deno.json
import { configFromArgs } from "../serve/main.ts";
import { setupDeployValidator } from "../tools/deploy_setup.ts";

const ROOT = new URL("../", import.meta.url).pathname.replace(/\/$/, "");
const VALIDATOR = `${ROOT}/tests/deploy_validate.py`;
const KUBERNETES_VERSION = "1.34";
const MANIFEST_DIRS = ["deploy/kubernetes", "deploy/kserve"];

interface ValidatedDocument {
  file: string;
  index: number;
  apiVersion: string | null;
  kind: string | null;
  name: string | null;
  validator: string;
  errors: string[];
}

interface ValidatorReport {
  kubernetes: string;
  kubernetesValidate: string;
  kserve: string;
  documents: ValidatedDocument[];
}

// Loose shapes of the parsed manifests: the validator checks the schema, these checks only
// read a few fields.
// deno-lint-ignore no-explicit-any
type Manifest = any;

async function manifestFiles(): Promise<string[]> {
  const files: string[] = [];
  for (const dir of MANIFEST_DIRS) {
    for await (const entry of Deno.readDir(`${ROOT}/${dir}`)) {
      if (entry.isFile && /\.ya?ml$/.test(entry.name)) files.push(`${ROOT}/${dir}/${entry.name}`);
    }
  }
  return files.sort();
}

async function validate(python: string, files: string[]): Promise<[number, ValidatorReport]> {
  const out = await new Deno.Command(python, {
    args: [VALIDATOR, "--kubernetes-version", KUBERNETES_VERSION, ...files],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const stdout = new TextDecoder().decode(out.stdout);
  const stderr = new TextDecoder().decode(out.stderr);
  assert.ok(out.code === 0 || out.code === 1, `validator crashed (exit ${out.code}): ${stderr}`);
  return [out.code, JSON.parse(stdout) as ValidatorReport];
}

async function load(path: string): Promise<Manifest> {
  return parse(await Deno.readTextFile(`${ROOT}/${path}`));
}

/** The hpa.yaml text with its commented queue-depth metric switched on. */
function uncommentQueueDepth(text: string): string {
  const lines = text.split("\n");
  const begin = lines.findIndex((l) => l.trim() === "# BEGIN queue-depth");
  const end = lines.findIndex((l) => l.trim() === "# END queue-depth");
  assert.ok(begin >= 0 && end > begin, "hpa.yaml keeps the queue-depth block between markers");
  for (let i = begin + 1; i < end; i++) lines[i] = lines[i].replace(/^(\s*)# /, "$1");
  return lines.join("\n");
}

// Installed on first use (idempotent), so the test runs in a fresh clone.
let validatorPython: Promise<string> | null = null;
function validatorReady(): Promise<string> {
  validatorPython ??= setupDeployValidator((line) => console.error(line));
  return validatorPython;
}

/** The text with one exact edit applied; fails when the text no longer has `from`. */
function edit(text: string, from: string, to: string): string {
  assert.ok(text.includes(from), `the manifest still contains ${JSON.stringify(from)}`);
  return text.replace(from, to);
}

Deno.test("deploy: every manifest validates against the Kubernetes and KServe schemas", async () => {
  const python = await validatorReady();
  const files = await manifestFiles();
  const [code, report] = await validate(python, files);
  const failures = report.documents.filter((d) => d.errors.length > 0);
  assert.deepEqual(failures, [], "no manifest has validation errors");
  assert.equal(code, 0);
  assert.match(report.kubernetes, /^1\.34\./);
  assert.equal(report.kserve, "0.21.0");
  const kinds = Object.fromEntries(report.documents.map((d) => [d.kind, d.validator]));
  assert.deepEqual(kinds, {
    Deployment: "kubernetes-validate",
    Service: "kubernetes-validate",
    HorizontalPodAutoscaler: "kubernetes-validate",
    ServingRuntime: "kserve",
    InferenceService: "kserve",
  });
  // Every document of every file was seen (a file the validator skipped would be missing).
  let count = 0;
  for (const file of files) {
    count += parseAllDocuments(await Deno.readTextFile(file)).filter((d) => d.contents).length;
  }
  assert.equal(report.documents.length, count);

  // The commented queue-depth metric is valid too once switched on.
  const dir = await Deno.makeTempDir();
  try {
    const hpa = uncommentQueueDepth(await Deno.readTextFile(`${ROOT}/deploy/kubernetes/hpa.yaml`));
    await Deno.writeTextFile(`${dir}/hpa.yaml`, hpa);
    const metrics = parse(hpa).spec.metrics as Manifest[];
    assert.deepEqual(metrics.map((m) => m.type), ["Resource", "Pods"]);
    assert.equal(metrics[1].pods.metric.name, "sparsebert_queue_depth");
    const [hpaCode, hpaReport] = await validate(python, [`${dir}/hpa.yaml`]);
    assert.deepEqual(hpaReport.documents[0].errors, []);
    assert.equal(hpaCode, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deploy: broken manifests are rejected, with the offending path", async () => {
  const python = await validatorReady();
  const read = (path: string) => Deno.readTextFile(`${ROOT}/${path}`);
  const deployment = await read("deploy/kubernetes/deployment.yaml");
  const isvc = await read("deploy/kserve/inferenceservice.yaml");
  const runtime = await read("deploy/kserve/servingruntime.yaml");
  const cases: [string, string, RegExp][] = [
    [
      "replicas-string",
      edit(deployment, "replicas: 2", 'replicas: "two"'),
      /\$\.spec\.replicas: 'two' is not of type 'integer'/,
    ],
    [
      "deployment-unknown-field",
      edit(deployment, "revisionHistoryLimit: 3", "revisionHistoryLimit: 3\n  replica: 2"),
      /'replica' was unexpected/,
    ],
    [
      "isvc-unknown-field",
      edit(isvc, "runtime: sparsebert", "runtime: sparsebert\n      modelFormatt: x"),
      /\$\.spec\.predictor\.model: unknown field "modelFormatt" in V1beta1ModelSpec/,
    ],
    [
      "isvc-wrong-type",
      edit(isvc, "scaleTarget: 70", 'scaleTarget: "70"'),
      /\$\.spec\.predictor\.scaleTarget: expected int, got "70"/,
    ],
    [
      // A Kubernetes type inside a KServe object is checked by the Kubernetes schema.
      "runtime-container-without-name",
      edit(runtime, "- name: kserve-container", "- nme: kserve-container"),
      /\$\.spec\.containers\[0\]: 'name' is a required property/,
    ],
    [
      "unknown-kind",
      "apiVersion: serving.kserve.io/v1beta1\nkind: InferenceServise\nmetadata: {name: x}\n",
      /no model for kind "InferenceServise"/,
    ],
    [
      "unknown-group",
      "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: x}\n",
      /Couldn't find schema for kind Widget/,
    ],
  ];
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, text] of cases) {
      await Deno.writeTextFile(`${dir}/${name}.yaml`, text);
    }
    const [code, report] = await validate(python, cases.map(([name]) => `${dir}/${name}.yaml`));
    assert.equal(code, 1, "the validator exits 1 when a document is invalid");
    for (const [name, , expected] of cases) {
      const doc = report.documents.find((d) => d.file === `${dir}/${name}.yaml`);
      assert.ok(doc, `${name}: validated`);
      assert.ok(
        doc.errors.some((e) => expected.test(e)),
        `${name}: expected an error matching ${expected}, got ${JSON.stringify(doc.errors)}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("deploy: probes, Service, HPA, image and runtime agree with the server", async () => {
  const deployment = await load("deploy/kubernetes/deployment.yaml");
  const service = await load("deploy/kubernetes/service.yaml");
  const hpa = await load("deploy/kubernetes/hpa.yaml");
  const runtime = await load("deploy/kserve/servingruntime.yaml");
  const isvc = await load("deploy/kserve/inferenceservice.yaml");

  const pod = deployment.spec.template;
  const container = pod.spec.containers[0];
  const port = container.ports[0];
  assert.equal(port.containerPort, 8080, "KServe's default port");
  const resolve = (p: number | string): number =>
    typeof p === "number"
      ? p
      : container.ports.find((x: Manifest) => x.name === p)?.containerPort ?? -1;
  assert.equal(container.readinessProbe.httpGet.path, "/v2/health/ready");
  assert.equal(resolve(container.readinessProbe.httpGet.port), 8080);
  assert.equal(container.livenessProbe.httpGet.path, "/v2/health/live");
  assert.equal(resolve(container.livenessProbe.httpGet.port), 8080);
  assert.deepEqual(deployment.spec.selector.matchLabels, service.spec.selector);
  for (const [key, value] of Object.entries(service.spec.selector)) {
    assert.equal(pod.metadata.labels[key], value, `Pod label ${key} matches the selector`);
  }
  assert.equal(resolve(service.spec.ports[0].targetPort), 8080, "the Service targets the port");
  assert.deepEqual(hpa.spec.scaleTargetRef, {
    apiVersion: "apps/v1",
    kind: "Deployment",
    name: deployment.metadata.name,
  });
  assert.ok(container.resources.requests.memory && container.resources.limits.memory);

  // The image's default command line, the Deployment's and the runtime's are one and the same,
  // and serve/main.ts accepts it.
  const dockerfile = await Deno.readTextFile(`${ROOT}/deploy/Dockerfile`);
  const cmd = /^CMD (\[.*\])$/m.exec(dockerfile);
  assert.ok(cmd, "the Dockerfile has an exec-form CMD");
  const imageArgs = JSON.parse(cmd[1]) as string[];
  assert.match(dockerfile, /^EXPOSE 8080$/m);
  assert.match(dockerfile, /^ENTRYPOINT \[.*"serve\/main\.ts"\]$/m);
  const kserveContainer = runtime.spec.containers[0];
  assert.equal(kserveContainer.name, "kserve-container");
  assert.deepEqual(container.args, imageArgs);
  assert.deepEqual(kserveContainer.args, imageArgs);
  const config = await configFromArgs(imageArgs);
  assert.ok(config !== null);
  assert.equal(config.host, "0.0.0.0");
  assert.equal(config.port, 8080);
  await assert.rejects(configFromArgs([...imageArgs, "--model_name", "x"]), /model_name/);

  // KServe routes /v2/models/<isvc name>/ to the runtime, so the names must agree.
  assert.equal(kserveContainer.ports[0].containerPort, 8080);
  assert.equal(kserveContainer.readinessProbe.httpGet.path, "/v2/health/ready");
  assert.equal(kserveContainer.livenessProbe.httpGet.path, "/v2/health/live");
  assert.deepEqual(runtime.spec.protocolVersions, ["v2"]);
  assert.equal(isvc.spec.predictor.model.runtime, runtime.metadata.name);
  assert.ok(
    runtime.spec.supportedModelFormats.some((f: Manifest) =>
      f.name === isvc.spec.predictor.model.modelFormat.name
    ),
    "the runtime supports the InferenceService's model format",
  );
  assert.equal(isvc.metadata.name, config.models[0].name, "served name = InferenceService name");
  assert.deepEqual(kserveContainer.resources, container.resources);
});

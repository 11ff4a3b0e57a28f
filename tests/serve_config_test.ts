// Server configuration: defaults, JSON and YAML files, command-line overrides, and errors that
// name the offending key.
import assert from "node:assert/strict";
import {
  ConfigError,
  defaultConfig,
  isLoopback,
  loadConfigFile,
  parseConfig,
} from "../serve/config.ts";
import { configFromArgs } from "../serve/main.ts";

Deno.test("serve config: the default serves MiniLM (int8 first) on 127.0.0.1:5543", () => {
  const config = defaultConfig();
  assert.equal(config.host, "127.0.0.1");
  assert.equal(config.port, 5543);
  assert.equal(config.models.length, 1);
  assert.equal(config.models[0].model, "all-minilm-l6-v2-q");
  assert.equal(config.models[0].fallback, "all-minilm-l6-v2");
  assert.equal(config.models[0].task, "feature-extraction");
  assert.deepEqual(parseConfig({}), config);
});

Deno.test("serve config: JSON and YAML files declare several models", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const yaml = `host: 127.0.0.1
port: 6001
threads: 1
limits:
  maxInputs: 8
models:
  - name: embed
    model: all-minilm-l6-v2
    maxLength: 128
    buckets: [32, 16]
    instances: 2
  - name: cls
    task: text-classification
    model: ./cls.onnx
    tokenizer: ./tokenizer.json
    kernel: dense-i8
`;
    await Deno.writeTextFile(`${dir}/serve.yaml`, yaml);
    const config = await loadConfigFile(`${dir}/serve.yaml`);
    assert.equal(config.port, 6001);
    assert.equal(config.threads, 1);
    assert.equal(config.limits.maxInputs, 8);
    assert.equal(config.limits.maxBodyBytes, 1 << 20);
    assert.deepEqual(config.models.map((m) => m.name), ["embed", "cls"]);
    assert.deepEqual(config.models[0].buckets, [16, 32, 128], "sorted, ending at maxLength");
    assert.equal(config.models[0].instances, 2);
    assert.equal(config.models[1].kernel, "dense-i8");
    assert.equal(config.models[1].fallback, null);
    assert.equal(config.models[0].model, "all-minilm-l6-v2", "registry names stay names");
    assert.equal(config.models[1].model, `${dir}/cls.onnx`, "paths are relative to the file");
    assert.equal(config.models[1].tokenizer, `${dir}/tokenizer.json`);
    await Deno.writeTextFile(`${dir}/serve.json`, JSON.stringify({ port: 6002 }));
    assert.equal((await loadConfigFile(`${dir}/serve.json`)).port, 6002);
    await Deno.writeTextFile(`${dir}/bad.yaml`, "models: [\n");
    await assert.rejects(loadConfigFile(`${dir}/bad.yaml`), /Cannot parse configuration/);
    await assert.rejects(loadConfigFile(`${dir}/missing.json`), /Cannot read configuration/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("serve config: errors name the key and quote the value", () => {
  const cases: [unknown, RegExp][] = [
    [[], /must be an object/],
    [{ prot: 1 }, /Unknown key "prot"/],
    [{ port: 70000 }, /"port" must be an integer in 0\.\.65535, got 70000/],
    [{ limits: { maxInputs: 0 } }, /"limits\.maxInputs" must be an integer/],
    [{ limits: { maxBody: 1 } }, /Unknown key "limits\.maxBody"/],
    [{ models: [] }, /"models" must be a non-empty list/],
    [{ models: [{}] }, /"models\[0\]\.model" is required/],
    [{ models: [{ model: "m", task: "translation" }] }, /"models\[0\]\.task" must be one of/],
    [{ models: [{ model: "m", kernel: "gpu" }] }, /"models\[0\]\.kernel" must be one of/],
    [{ models: [{ model: "m", maxBatch: 0 }] }, /"models\[0\]\.maxBatch" must be an integer/],
    [
      { models: [{ model: "m", maxLength: 64, buckets: [128] }] },
      /buckets" has 128, over maxLength 64/,
    ],
    [{ models: [{ model: "m", name: "a b" }] }, /"models\[0\]\.name" must be/],
    [{ models: [{ model: "a" }, { model: "b", name: "a" }] }, /uses the name "a", already used/],
    [{ log: "yes" }, /"log" must be true or false, got "yes"/],
    [
      { models: [{ model: "m", maxLength: 256, maxBatchTokens: 200 }] },
      /"models\[0\]\.maxBatchTokens" is 200, less than maxLength 256: an input of 256 tokens could never be batched/,
    ],
    [{ autoTruncate: 1 }, /"autoTruncate" must be true or false/],
  ];
  for (const [raw, message] of cases) {
    assert.throws(() => parseConfig(raw), (err: unknown) => {
      assert.ok(err instanceof ConfigError, `not a ConfigError: ${err}`);
      assert.match((err as Error).message, message);
      return true;
    });
  }
});

Deno.test("serve config: command-line options override the file", async () => {
  const config = await configFromArgs(["--port", "0", "--threads", "1", "--quiet"]);
  assert.ok(config !== null);
  assert.equal(config.port, 0);
  assert.equal(config.threads, 1);
  assert.equal(config.log, false);
  const custom = await configFromArgs(["--model", "bge-small-en-v15"]);
  assert.equal(custom?.models[0].name, "bge-small-en-v15");
  assert.equal(custom?.models[0].model, "bge-small-en-v15");
  assert.equal(await configFromArgs(["--help"]), null);
  await assert.rejects(configFromArgs(["--port", "x"]), /--port must be a non-negative integer/);
  const budget = await configFromArgs(["--max-batch-tokens", "4096", "--auto-truncate"]);
  assert.equal(budget?.models[0].maxBatchTokens, 4096);
  assert.equal(budget?.autoTruncate, true);
  assert.equal((await configFromArgs([]))?.models[0].maxBatchTokens, 32 * 256);
  await assert.rejects(
    configFromArgs(["--max-batch-tokens", "100"]),
    /maxBatchTokens" is 100, less than maxLength 256/,
  );
  assert.ok(isLoopback("127.0.0.1") && isLoopback("::1") && !isLoopback("0.0.0.0"));
});

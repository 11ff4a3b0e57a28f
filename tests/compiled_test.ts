import assert from "node:assert/strict";
import { BertEncoder } from "../models/bert.ts";
import {
  COMPILED_FORMAT_VERSION,
  CompiledModelError,
  compileModel,
  loadCompiled,
} from "../models/compiled.ts";
import { type KernelChoiceOptions, KernelChooser } from "../models/kernel_choice.ts";
import { loadModel } from "../models/load.ts";
import { importOnnx } from "../models/onnx_import.ts";
import { ensureTestModel } from "../tools/write_test_model.ts";

const dir = await Deno.makeTempDir({ prefix: "sbert_compiled_" });
const { path: onnx } = await ensureTestModel({
  preset: "bert-mini",
  config: { numLayers: 2, vocabSize: 512 },
  sparsity: 0.9,
});

// Every kernel kind appears once per layer.
const MIXED: KernelChoiceOptions = {
  cachePath: null,
  roles: {
    qkv: "sparse-i8",
    "attention-output": "dense-i8",
    intermediate: "sparse-f32",
    output: "dense-f32",
  },
};

function input(batch: number, seq: number): { inputIds: Int32Array; attentionMask: Int32Array } {
  const inputIds = new Int32Array(batch * seq).map((_, i) => (i * 37 + 11) % 512);
  const attentionMask = new Int32Array(batch * seq).fill(1);
  attentionMask.fill(0, batch * seq - 3);
  return { inputIds, attentionMask };
}

Deno.test("compiled model gives the same bits as the uncompiled one, every kernel kind", async () => {
  const weights = await importOnnx(onnx);
  const out = `${dir}/mixed.sbert`;
  const result = await compileModel(weights, out, { kernels: MIXED });
  assert.deepEqual(
    new Set(result.decisions.map((d) => d.kind)),
    new Set(["sparse-i8", "dense-i8", "sparse-f32", "dense-f32"]),
  );
  const chooser = new KernelChooser(MIXED);
  using reference = new BertEncoder(weights, { linear: chooser.factory });
  const model = await loadCompiled(out, { verify: true });
  using compiled = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv });
  model[Symbol.dispose](); // the encoder's ops keep the packed region alive
  const x = { ...input(2, 9), batch: 2, seq: 9 };
  const a = reference.forward(x);
  const b = compiled.forward(x);
  assert.deepEqual(
    new Uint32Array(b.buffer, b.byteOffset, b.length),
    new Uint32Array(a.buffer, a.byteOffset, a.length),
  );
  assert.deepEqual(compiled.linears().map((l) => l.kind), reference.linears().map((l) => l.kind));
  assert.equal(model.kernelDecisions.length, result.decisions.length);
  assert.match(model.kernelDecisions[0].reason, /forced for role qkv/);
});

Deno.test("loadModel recognises a compiled file and unfused QKV round trips", async () => {
  const weights = await importOnnx(onnx);
  const out = `${dir}/unfused.sbert`;
  const opts: KernelChoiceOptions = { cachePath: null, kernels: "dense-i8" };
  await compileModel(weights, out, { kernels: opts, fuseQkv: false });
  using reference = new BertEncoder(weights, {
    linear: new KernelChooser(opts).factory,
    fuseQkv: false,
  });
  const model = await loadModel(out);
  assert.equal(model.fuseQkv, false);
  using compiled = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv });
  const x = { ...input(1, 7), batch: 1, seq: 7 };
  assert.deepEqual(compiled.forward(x), reference.forward(x));
  // Building it fused asks for a layer the file does not hold.
  assert.throws(() => new BertEncoder(model.weights, { linear: model.linear }), /fuseQkv false/);
});

Deno.test("truncated, foreign, wrong-version and corrupt files fail clearly", async () => {
  const weights = await importOnnx(onnx);
  const good = `${dir}/good.sbert`;
  await compileModel(weights, good, { kernels: { cachePath: null, kernels: "dense-f32" } });
  const bytes = await Deno.readFile(good);
  const bad = `${dir}/bad.sbert`;
  const expectError = async (data: Uint8Array, pattern: RegExp, verify = false) => {
    await Deno.writeFile(bad, data);
    await assert.rejects(() => loadCompiled(bad, { verify }), (e: Error) => {
      assert.ok(e instanceof CompiledModelError, `${e}`);
      assert.match(e.message, pattern);
      return true;
    });
  };
  await expectError(
    bytes.subarray(0, bytes.length - 100),
    /is truncated: \d+ bytes, its header says/,
  );
  await expectError(bytes.subarray(0, 40), /is truncated/);
  await expectError(await Deno.readFile(onnx), /is not a sparsebert compiled model/);
  const version = bytes.slice();
  new DataView(version.buffer).setUint32(8, COMPILED_FORMAT_VERSION + 1, true);
  await expectError(version, /has format version 2; this build reads version 1/);
  const abi = bytes.slice();
  new DataView(abi.buffer).setUint32(12, 999, true);
  await expectError(abi, /kernel ABI version 999/);
  const header = bytes.slice();
  header[200] ^= 1;
  await expectError(header, /header checksum mismatch/);
  const data = bytes.slice();
  data[data.length - 70] ^= 1;
  await expectError(data, /data checksum mismatch/, true);
});

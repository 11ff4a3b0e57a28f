import assert from "node:assert/strict";
import { BertEncoder } from "../encoder/bert.ts";
import {
  COMPILED_FORMAT_VERSION,
  CompiledModelError,
  compileModel,
  loadCompiled,
} from "../formats/compiled.ts";
import { type KernelChoiceOptions, KernelChooser } from "../encoder/kernel_choice.ts";
import { loadModel } from "../hub/load.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { MappedFile, NativeBuffer } from "../ffi/memory.ts";
import { buildLinear, linearFromPacked } from "../encoder/linear_kinds.ts";
import type { DenseWeight } from "../encoder/weights.ts";
import { KERNEL_KINDS, type LinearOp } from "../ops/linear.ts";
import { SharedRegion } from "../ops/packed.ts";
import { quantizeWeights } from "../ops/quantize.ts";
import { SparseLinearI8 } from "../ops/sparse_linear_i8.ts";
import { randomBlockSparse } from "../ops/sparsity.ts";
import { ensureTestModel } from "./fixtures/write_test_model.ts";
import { variantLabel } from "./harness.ts";

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

/** The bit patterns of `y`: equal bits, not merely equal values (`-0` vs `0`, NaN payloads). */
function bits(y: Float32Array): Uint32Array {
  return new Uint32Array(y.buffer, y.byteOffset, y.length);
}

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
  assert.deepEqual(bits(b), bits(a));
  assert.deepEqual(compiled.linears().map((l) => l.kind), reference.linears().map((l) => l.kind));
  assert.equal(model.kernelDecisions.length, result.decisions.length);
  assert.match(model.kernelDecisions[0].reason, /forced for role qkv/);
});

Deno.test("compiled all-sparse-int8 model (fused feed-forward pairs) gives the uncompiled bits", async () => {
  const weights = await importOnnx(onnx);
  const sparse: KernelChoiceOptions = {
    cachePath: null,
    roles: {
      qkv: "sparse-i8",
      "attention-output": "sparse-i8",
      intermediate: "sparse-i8",
      output: "sparse-i8",
    },
  };
  const out = `${dir}/sparse_i8.sbert`;
  await compileModel(weights, out, { kernels: sparse });
  using reference = new BertEncoder(weights, { linear: new KernelChooser(sparse).factory });
  const model = await loadCompiled(out);
  using compiled = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv });
  model[Symbol.dispose]();
  const x = { ...input(3, 21), batch: 3, seq: 21 };
  const a = reference.forward(x);
  const b = compiled.forward(x);
  assert.deepEqual(bits(b), bits(a));
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

Deno.test("MappedFile maps a file's bytes copy-on-write and names a file it cannot map", async () => {
  const path = `${dir}/mapped.bin`;
  const content = new Uint8Array(10_000).map((_, i) => (i * 31) & 255);
  await Deno.writeFile(path, content);
  {
    using mapped = new MappedFile(path, content.length);
    assert.deepEqual(mapped.u8(), content);
    mapped.u8()[0] = 77; // a private map: the file keeps its byte
    assert.equal(mapped.u8()[0], 77);
  }
  assert.deepEqual(await Deno.readFile(path), content);
  assert.throws(
    () => new MappedFile(path, content.length + 1),
    /Cannot map 10001 bytes of ".*mapped\.bin"/,
  );
  assert.throws(
    () => new MappedFile(`${dir}/missing.bin`, 1),
    /Cannot map 1 bytes of ".*missing\.bin"/,
  );
  const m = new MappedFile(path, 16);
  m[Symbol.dispose]();
  m[Symbol.dispose]();
  assert.throws(() => m.u8(), /Mapped file used after it was disposed/);
});

Deno.test("a compiled model's packed weights are read from the file's map, not a copy", async () => {
  const weights = await importOnnx(onnx);
  const path = `${dir}/mapped.sbert`;
  const result = await compileModel(weights, path, {
    kernels: { cachePath: null, kernels: "sparse-i8" },
  });
  const x = { ...input(1, 8), batch: 1, seq: 8 };
  let expected: Float32Array;
  {
    using model = await loadCompiled(path);
    using encoder = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: true });
    expected = encoder.forward(x).slice();
  }
  using model = await loadCompiled(path);
  using encoder = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: true });
  // After the load and before any forward pass, overwrite the last layer's output bias where
  // its packed blob keeps it, in the file itself: a map of the file sees the new bytes (a
  // private map shares the page cache until this process writes a page); a copy read at load
  // time would not.
  const bytes = await Deno.readFile(path);
  const bias = weights.layers[weights.layers.length - 1].output.bias;
  const needle = new Uint8Array(bias.buffer, bias.byteOffset, bias.byteLength);
  assert.ok(bias.some((b) => b !== 0), "the test model's bias must not be all zeros");
  const packedStart = result.bytes - result.packedBytes;
  let at = -1;
  for (let i = packedStart; i + needle.length <= bytes.length && at < 0; i += 4) {
    if (needle.every((b, j) => bytes[i + j] === b)) at = i;
  }
  assert.ok(at >= packedStart, "the output bias is stored in the packed region");
  const file = await Deno.open(path, { write: true });
  try {
    await file.seek(at, Deno.SeekMode.Start);
    const shifted = bias.map((b) => b + 1);
    await file.write(new Uint8Array(shifted.buffer));
  } finally {
    file.close();
  }
  const changed = encoder.forward(x);
  assert.notDeepEqual(changed, expected);
});

/** A region holding copies of `ops`' packed bytes at 64-byte aligned offsets (after a gap). */
function regionOf(ops: LinearOp[]): { region: SharedRegion; offsets: number[] } {
  const offsets: number[] = [];
  let end = 64; // nothing at offset 0: the ops must honour their slice's offset
  for (const op of ops) {
    offsets.push(end);
    end += Math.ceil(op.packedBytes / 64) * 64;
  }
  const memory = new NativeBuffer(end);
  ops.forEach((op, i) => memory.u8().set(op.packedData(), offsets[i]));
  return { region: new SharedRegion(memory), offsets };
}

Deno.test("every linear kind built from its packed bytes computes the bits of the op built from the weight", () => {
  const [m, k, n] = [19, 40, 24];
  const weight: DenseWeight = {
    out: n,
    in: k,
    weight: randomBlockSparse({ out: n, in: k, sparsity: 0.6, seed: 5 }),
    bias: new Float32Array(n).map((_, i) => Math.cos(i)),
  };
  const x = new Float32Array(m * k).map((_, i) => Math.sin(i * 0.23));
  const built = KERNEL_KINDS.map((kind) => buildLinear(kind, weight, { activation: "gelu" }));
  const { region, offsets } = regionOf(built);
  const again = KERNEL_KINDS.map((kind, i) =>
    linearFromPacked(kind, {
      out: n,
      in: k,
      packed: { region, offset: offsets[i], bytes: built[i].packedBytes },
    }, { activation: "gelu" })
  );
  region[Symbol.dispose](); // the ops hold their own references
  try {
    for (let i = 0; i < KERNEL_KINDS.length; i++) {
      assert.equal(again[i].kind, KERNEL_KINDS[i]);
      assert.equal(again[i].packedBytes, built[i].packedBytes);
      assert.deepEqual(bits(again[i].forward(x, m)), bits(built[i].forward(x, m)), KERNEL_KINDS[i]);
    }
    const packed = { region, offset: 0, bytes: 64 };
    assert.throws(
      () => linearFromPacked("dense-f32", { out: n, in: k, packed }, { activation: "none" }),
      /packs to \d+ bytes, got 64/,
    );
    // Bytes of another shape: the kernel would size its reads and writes from the header.
    for (const kind of ["sparse-i8", "sparse-f32"] as const) {
      const i = KERNEL_KINDS.indexOf(kind);
      const swapped = { region, offset: offsets[i], bytes: built[i].packedBytes };
      assert.throws(
        () => linearFromPacked(kind, { out: k, in: n, packed: swapped }, { activation: "gelu" }),
        new RegExp(`Checking the packed ${kind} weight \\[${k}, ${n}\\] .* corrupt`),
      );
    }
  } finally {
    for (const op of [...built, ...again]) op[Symbol.dispose]();
  }
  assert.throws(() => again[0].forward(x, m), /used after it was disposed/);
});

Deno.test("sparse int8 ops built from packed bytes run fused with the two forwards' bits, and as the ops do", () => {
  const [m, k, n] = [37, 48, 80];
  const weight = (out: number, inFeatures: number, seed: number): DenseWeight => ({
    out,
    in: inFeatures,
    weight: randomBlockSparse({ out, in: inFeatures, sparsity: 0.75, seed }),
    bias: new Float32Array(out).map((_, i) => Math.sin(i + seed)),
  });
  const first = weight(n, k, 1);
  const second = weight(k, n, 2);
  const packedOp = (w: DenseWeight, activation: "gelu" | "none"): LinearOp => {
    using built = buildLinear("sparse-i8", w, { activation });
    const { region, offsets } = regionOf([built]);
    using _ = region;
    const packed = { region, offset: offsets[0], bytes: built.packedBytes };
    return linearFromPacked("sparse-i8", { out: w.out, in: w.in, packed }, { activation });
  };
  using a = packedOp(first, "gelu") as SparseLinearI8;
  using b = packedOp(second, "none") as SparseLinearI8;
  using opA = new SparseLinearI8(quantizeWeights(first), { activation: "gelu" });
  using opB = new SparseLinearI8(quantizeWeights(second));
  const x = new Float32Array(m * k).map((_, i) => Math.cos(i * 0.37) * 2);
  const residual = new Float32Array(m * k).map((_, i) => Math.sin(i * 0.11));
  assert.ok(a.stagesInto(b));
  assert.ok(!a.stagesInto(a), "80 outputs do not feed 48 inputs");
  const want = b.forward(a.forward(x, m), m, { residual });
  assert.deepEqual(bits(a.forwardThrough(b, x, m, { residual })), bits(want));
  assert.deepEqual(bits(opA.forwardThrough(opB, x, m, { residual })), bits(want));
  assert.throws(() => a.forwardThrough(a, x, m), /next op takes 48 features, this one gives 80/);
});

/** Byte offsets of the fields each corruption below edits, per blob magic (`kernels/*.zig`). */
const BLOB_EDITS: Record<string, { name: string; edit: (v: DataView, at: number) => void }[]> = {
  // sparse int8 (I8Header): n 8, k 12, group_ptr 32, group_k 40
  SBI8: [
    {
      name: "group index past k",
      edit: (v, at) => v.setUint16(at + tableAt(v, at, 40) + 2, 0xfff8, true),
    },
    {
      name: "group index off the k grid",
      edit: (v, at) => v.setUint16(at + tableAt(v, at, 40), 3, true),
    },
    {
      name: "group pointer past the groups",
      edit: (v, at) => v.setUint32(at + tableAt(v, at, 32) + 4, 0x7fffffff, true),
    },
    {
      name: "section offset moved",
      edit: (v, at) => v.setBigUint64(at + 40, v.getBigUint64(at + 40, true) + 64n, true),
    },
  ],
  // fp32 4x1 blocks: k 12, block_ptr 32, block_k 40
  SBB4: [
    {
      name: "block index past k",
      edit: (v, at) => v.setUint32(at + tableAt(v, at, 40), v.getUint32(at + 12, true), true),
    },
    {
      name: "block pointer decreasing",
      edit: (v, at) => v.setUint32(at + tableAt(v, at, 32) + 4, 0xffffffff, true),
    },
    {
      name: "section offset moved",
      edit: (v, at) => v.setBigUint64(at + 48, v.getBigUint64(at + 48, true) + 64n, true),
    },
  ],
  // fp32 CSR: k 12, row_ptr 24, col 32
  SBF3: [
    {
      name: "column past k",
      edit: (v, at) => v.setUint32(at + tableAt(v, at, 32), v.getUint32(at + 12, true), true),
    },
    {
      name: "row pointer decreasing",
      edit: (v, at) => v.setUint32(at + tableAt(v, at, 24) + 4, 0xffffffff, true),
    },
  ],
  // dense int8: weights offset 24
  SBG8: [
    {
      name: "section offset moved",
      edit: (v, at) => v.setBigUint64(at + 24, v.getBigUint64(at + 24, true) + 64n, true),
    },
  ],
};

function tableAt(v: DataView, at: number, field: number): number {
  return Number(v.getBigUint64(at + field, true));
}

Deno.test("corrupt packed tables and headers are refused by layer, before any kernel runs", async () => {
  const sparse = await importOnnx(onnx);
  const { path: unstructured } = await ensureTestModel({
    preset: "bert-mini",
    config: { numLayers: 1, vocabSize: 512 },
    sparsity: 0.9,
    pattern: "unstructured",
  });
  const seen = new Set<string>();
  for (const weights of [sparse, await importOnnx(unstructured)]) {
    const good = `${dir}/tables.sbert`;
    const { bytes: total, packedBytes } = await compileModel(weights, good, { kernels: MIXED });
    const bytes = await Deno.readFile(good);
    for (let at = total - packedBytes; at + 4 <= bytes.length; at += 64) {
      const magic = new TextDecoder().decode(bytes.subarray(at, at + 4));
      for (const { name, edit } of BLOB_EDITS[magic] ?? []) {
        if (seen.has(`${magic} ${name}`)) continue;
        seen.add(`${magic} ${name}`);
        const bad = bytes.slice();
        edit(new DataView(bad.buffer), at);
        const path = `${dir}/bad_tables.sbert`;
        await Deno.writeFile(path, bad);
        const model = await loadCompiled(path);
        assert.throws(
          () => new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv }),
          (e: Error) => {
            assert.ok(e instanceof CompiledModelError, `${magic} ${name}: ${e}`);
            assert.match(e.message, /layer \d+ [a-z-]+: Checking the packed [a-z0-9-]+ weight/);
            return true;
          },
          `${magic} ${name}`,
        );
        model[Symbol.dispose]();
      }
    }
  }
  // Every format and edit above was met (a blob layout change must update this test).
  const expected = Object.entries(BLOB_EDITS).flatMap(([m, edits]) =>
    edits.map((e) => `${m} ${e.name}`)
  );
  assert.deepEqual([...seen].sort(), expected.sort());
});

Deno.test(`a NaN in the packed weights is a clear error, not NaN embeddings (${variantLabel()})`, async () => {
  const weights = await importOnnx(onnx);
  const good = `${dir}/nan.sbert`;
  const { bytes: total, packedBytes } = await compileModel(weights, good, {
    kernels: { cachePath: null, kernels: "sparse-f32" }, // fp32 throughout: no int8 quantizer
  });
  const bytes = await Deno.readFile(good);
  const v = new DataView(bytes.buffer);
  let at = total - packedBytes;
  while (new TextDecoder().decode(bytes.subarray(at, at + 4)) !== "SBB4") at += 64;
  // Layer 0's first sparse fp32 op (Q/K/V): one bias NaN. The tables are intact, so
  // the ops build; the forward must not hand back NaN as if it were an embedding.
  v.setFloat32(at + Number(v.getBigUint64(at + 56, true)) + 4 * 3, NaN, true);
  const path = `${dir}/nan_bad.sbert`;
  await Deno.writeFile(path, bytes);
  using model = await loadCompiled(path);
  using encoder = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv });
  assert.throws(
    () => encoder.forward({ ...input(2, 9), batch: 2, seq: 9 }),
    /The encoder's output is NaN at token 0 of sequence 0 \(of 2 x 9\): the model's weights are corrupt/,
  );
});

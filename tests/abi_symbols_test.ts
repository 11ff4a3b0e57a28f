// The C ABI and its one binding agree: every `export fn` of kernels.zig is in ffi/symbols.ts
// (and nothing else is), in the same order, with the same parameter and result types. A
// mismatch here would otherwise show up as a wrong result or a crash, not an error.
import assert from "node:assert/strict";
import { kernels } from "../ffi/library.ts";
import { NativeBuffer } from "../ffi/memory.ts";
import {
  ABI_STRUCTS,
  ATTENTION_PROBLEM,
  EMBEDDINGS_CALL,
  INT8_CALL,
  StructLayout,
} from "../ffi/structs.ts";
import { symbols } from "../ffi/symbols.ts";

interface ZigExport {
  name: string;
  parameters: { name: string; type: string }[];
  result: string;
}

const SCALARS: Record<string, string> = {
  usize: "usize",
  isize: "isize",
  u8: "u8",
  i8: "i8",
  u16: "u16",
  i16: "i16",
  u32: "u32",
  i32: "i32",
  c_int: "i32",
  u64: "u64",
  i64: "i64",
  f32: "f32",
  f64: "f64",
  bool: "bool",
  void: "void",
};

/** The FFI types a Zig parameter type may be bound as. */
function allowed(zigType: string): string[] {
  const type = zigType.trim();
  const scalar = SCALARS[type];
  if (scalar !== undefined) return [scalar];
  // Pointers of any kind ([*]T, ?[*]T, *T, *anyopaque, [*]align(64) u8) cross as a buffer
  // (a TypedArray the call reads or writes) or a native pointer.
  if (/^\??(\[\*\]|\*)/.test(type)) return ["buffer", "pointer"];
  throw new Error(`kernels.zig uses a type the test does not map: ${type}`);
}

function zigExports(source: string): ZigExport[] {
  const out: ZigExport[] = [];
  // Parameter lists hold one level of parentheses at most (`[*]align(64) u8`).
  const pattern = /^export fn (\w+)\(((?:[^()]|\([^()]*\))*)\)\s*([^{]+?)\s*\{/gm;
  for (const match of source.matchAll(pattern)) {
    const parameters = match[2].split(",").map((p) => p.trim()).filter((p) => p !== "").map(
      (p) => {
        const colon = p.indexOf(":");
        return { name: p.slice(0, colon).trim(), type: p.slice(colon + 1).trim() };
      },
    );
    out.push({ name: match[1], parameters, result: match[3].trim() });
  }
  return out;
}

type Binding = { parameters: readonly string[]; result: string };

/** Why `bound` does not bind `fn`, or null when it does. */
function mismatch(fn: ZigExport, bound: Binding): string | null {
  if (bound.parameters.length !== fn.parameters.length) {
    return `${fn.name}: ${fn.parameters.length} parameters in kernels.zig, ${bound.parameters.length} in ffi/symbols.ts`;
  }
  for (let i = 0; i < fn.parameters.length; i++) {
    const p = fn.parameters[i];
    const ok = allowed(p.type);
    if (!ok.includes(bound.parameters[i])) {
      return `${fn.name} parameter ${i} (${p.name}: ${p.type}) is bound as "${
        bound.parameters[i]
      }"; expected ${ok.join(" or ")}`;
    }
  }
  const pointer = /^\??(\[\*\]|\*)/.test(fn.result);
  const resultOk = pointer ? ["pointer"] : allowed(fn.result);
  if (!resultOk.includes(bound.result)) {
    return `${fn.name} returns ${fn.result} in kernels.zig, "${bound.result}" in ffi/symbols.ts`;
  }
  return null;
}

Deno.test("ABI: every export fn of kernels.zig matches ffi/symbols.ts (names, order, types)", async () => {
  const source = await Deno.readTextFile(new URL("../kernels.zig", import.meta.url));
  const exports = zigExports(source);
  const declared = source.match(/^export fn /gm)?.length ?? 0;
  assert.equal(exports.length, declared, "the test's parser missed an export fn");
  assert.ok(exports.length >= 40, `only ${exports.length} exports found`);
  assert.deepEqual(
    Object.keys(symbols),
    exports.map((e) => e.name),
    "ffi/symbols.ts must list kernels.zig's exports, in order",
  );
  const table = symbols as Record<string, Binding>;
  for (const fn of exports) assert.equal(mismatch(fn, table[fn.name]), null);
});

Deno.test("ABI: the check catches a wrong binding (a parameter type, a missing parameter)", () => {
  const [fn] = zigExports(
    "export fn sb_x(a: [*]const f32, b: [*]align(64) u8, n: usize, s: f32) ?[*]u8 {\n}\n",
  );
  const right = { parameters: ["buffer", "pointer", "usize", "f32"], result: "pointer" };
  assert.equal(mismatch(fn, right), null);
  assert.match(
    mismatch(fn, { ...right, parameters: ["buffer", "pointer", "u32", "f32"] })!,
    /parameter 2 \(n: usize\) is bound as "u32"/,
  );
  assert.match(
    mismatch(fn, { ...right, parameters: ["buffer", "usize", "f32"] })!,
    /4 parameters in kernels.zig, 3/,
  );
  assert.match(mismatch(fn, { ...right, result: "u32" })!, /returns \?\[\*\]u8/);
  assert.throws(() => allowed("[]const u8"), /does not map/);
});

Deno.test("ABI: sizes a kernel cannot take are refused with status -3 in the build users load", () => {
  // Explicit checks at the C ABI, not asserts (which ReleaseFast assumes true): a zero size or
  // a short stride returns -3 instead of reading out of bounds.
  const lib = kernels().symbols;
  const x = new Float32Array(8);
  const q = new Uint8Array(64);
  const scale = new Float32Array(4);
  const zero = new Int32Array(4);
  assert.equal(lib.sb_quantize_rows(x, 0n, 4n, 1, 127, q, 4n, scale, zero), -3, "m = 0");
  assert.equal(lib.sb_quantize_rows(x, 2n, 4n, 1, 127, q, 3n, scale, zero), -3, "ldq < k");
  assert.equal(lib.sb_quantize_rows(x, 2n, 4n, 1, 127, q, 4n, scale, zero), 0, "a good call");
  assert.equal(lib.sb_quantize_packed(x, 2n, 0n, 1, 127, q, scale, zero), -3, "k = 0");
  assert.equal(lib.sb_quantize_packed(x, 2n, 4n, 1, 100, q, scale, zero), -3, "qmax 100");
  assert.equal(lib.sb_pack_rows_u8(q, 2n, 4n, 2n, q), -3, "ldq < k");
  const w = new Float32Array(16).fill(1);
  assert.equal(lib.sb_quantize_weights_i8(w, 0n, 4n, new Int8Array(16), scale), -3, "n = 0");
  using blob = new NativeBuffer(64);
  assert.equal(lib.sb_spmm_f32(blob.pointer, 64n, x, 0n, null, x, 0), -3, "m = 0");
  // The fp32 and BERT ops: zero sizes, bad codes, a token id outside its table.
  const w4 = new Float32Array(16);
  const ones = new Float32Array(4).fill(1);
  const y = new Float32Array(16);
  assert.equal(lib.sb_linear_f32_pack(w4, null, 0n, 4n, blob.pointer), -3, "pack n = 0");
  assert.equal(lib.sb_linear_f32(x, 0n, 4n, blob.pointer, 4n, null, y, 0), -3, "linear m = 0");
  assert.equal(lib.sb_linear_f32(x, 1n, 4n, blob.pointer, 4n, null, y, 9), -3, "activation 9");
  assert.equal(lib.sb_linear_f32(x, 1n, 4n, blob.pointer, 4n, y, y, 0), -3, "residual = y");
  const pairs = new Uint32Array(8);
  assert.equal(lib.sb_linear_bf16_pack(w4, null, 4n, 0n, blob.pointer), -3, "bf16 pack k = 0");
  assert.equal(
    lib.sb_linear_bf16(x, 2n, 4n, pairs, 3n, blob.pointer, 4n, null, y, 0),
    -3,
    "bf16 scratch shorter than m x k/2",
  );
  assert.equal(
    lib.sb_linear_bf16(x, 1n, 4n, pairs, 8n, blob.pointer, 4n, null, y, 7),
    -3,
    "bf16 activation 7",
  );
  assert.equal(lib.sb_layernorm(x, 0n, 4n, ones, ones, 1e-5, y), -3, "layernorm rows = 0");
  assert.equal(lib.sb_layernorm(x, 1n, 4n, ones, ones, NaN, y), -3, "layernorm eps NaN");
  const ids = new Int32Array([0, 1]);
  const embeddingsCall = EMBEDDINGS_CALL.buffer();
  const embed = (tokens: Int32Array) =>
    lib.sb_embeddings(embeddingsCall.write({
      input_ids: tokens,
      token_type_ids: null,
      batch: 1,
      seq: 2,
      word: w4,
      vocab: 4,
      position: w4,
      max_positions: 4,
      token_type: null,
      type_vocab: 0,
      gamma: ones,
      beta: ones,
      eps: 1e-5,
      hidden: 4,
      out: y,
    }));
  assert.equal(embed(ids), 0, "embeddings, ids in range");
  assert.equal(embed(new Int32Array([0, 4])), -7, "token id = vocab");
  assert.equal(embed(new Int32Array([-1, 0])), -7, "token id -1");
  const mask2 = new Uint8Array(2).fill(1);
  assert.equal(lib.sb_pool(w4, 1n, 2n, 4n, mask2, 99, 0, y), -3, "pooling mode 99");
  assert.equal(lib.sb_l2_normalize_rows(y, 0n, 4n), -3, "normalize rows = 0");
  // Attention: a bad precision code, a zero batch, scratch too small for one thread.
  const mask = new Uint8Array(2).fill(1);
  const out = new Float32Array(8);
  const scratchLen = lib.sb_attention_scratch_len(2n, 4n, 1n, 1);
  assert.equal(lib.sb_attention_scratch_len(2n, 4n, 1n, 2), 0n, "scratch for precision 2");
  using scratch = new NativeBuffer(Number(scratchLen) * 4);
  const problem = ATTENTION_PROBLEM.buffer();
  const run = (batch: number, len: bigint, precision: number) =>
    lib.sb_attention(
      problem.write({
        q: x,
        k: x,
        v: x,
        ld: 4,
        mask,
        mask_value: -1e4,
        batch,
        seq: 2,
        heads: 1,
        head_size: 4,
        scale: 0.5,
        out,
        ld_out: 4,
      }),
      scratch.f32(),
      len,
      precision,
    );
  assert.equal(run(1, scratchLen, 2), -3, "precision 2");
  assert.equal(run(0, scratchLen, 1), -3, "batch 0");
  assert.equal(run(1, scratchLen - 1n, 1), -5, "scratch too small");
  assert.equal(run(1, scratchLen, 1), 0, "a good int8 call");
  assert.equal(run(1, scratchLen, 0), 0, "a good fp32 call");
});

Deno.test("ABI: the argument structs of ffi/structs.ts have the library's layouts", () => {
  const lib = kernels().symbols;
  const text = new Uint8Array(512);
  for (const layout of ABI_STRUCTS) {
    const names = Object.keys(layout.fields);
    const offsets = new Uint32Array(names.length);
    const size = lib.sb_struct_layout(layout.code, offsets, BigInt(names.length), text, 512n);
    assert.equal(Number(size), layout.size, `struct ${layout.code} size`);
    const zigNames = new TextDecoder().decode(text).replace(/\0.*$/s, "").split(",");
    text.fill(0);
    assert.deepEqual(names, zigNames, `struct ${layout.code}: field names and order`);
    names.forEach((name, i) => {
      const want = (layout.offsets as Record<string, number>)[name];
      assert.equal(offsets[i], want, `struct ${layout.code} field ${name}`);
    });
    // Too little room for the offsets or the names, an unknown code: size 0.
    const short = BigInt(names.length - 1);
    assert.equal(lib.sb_struct_layout(layout.code, offsets, short, text, 512n), 0n);
    assert.equal(lib.sb_struct_layout(layout.code, offsets, BigInt(names.length), text, 4n), 0n);
  }
  assert.equal(lib.sb_struct_layout(99, new Uint32Array(32), 32n, text, 512n), 0n);
  // The check's arithmetic: moving a field moves the offsets after it.
  const moved = new StructLayout(0, { ...INT8_CALL.fields, output: "usize" });
  assert.notEqual(moved.offsets.activation, INT8_CALL.offsets.activation);
});

Deno.test("ABI: a struct refuses a detached buffer instead of handing its old address on", () => {
  const call = INT8_CALL.buffer();
  const scale = new Float32Array(4);
  const values = {
    x_scale: scale,
    x_zero: new Int32Array(4),
    residual: null,
    y: new Float32Array(4),
    output: 0,
    activation: 0,
    out_scale: 1,
    out_zero: 0,
    out_qmax: 127,
    numerics: 0,
  };
  const first = call.write(values).slice();
  assert.deepEqual(call.write(values), first, "the same arrays give the same bytes");
  structuredClone(scale.buffer, { transfer: [scale.buffer] });
  assert.throws(() => call.write(values), /detached/);
});

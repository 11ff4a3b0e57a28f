/**
 * The argument structs that kernels with many inputs take by pointer (`extern struct`s of
 * `kernels.zig`): each layout below lists its fields in the Zig order, laid out with natural
 * alignment as Zig lays out an `extern struct` on x86_64, and `tests/abi_symbols_test.ts`
 * checks every offset against the library's own (`sb_struct_layout`). A {@linkcode StructBuffer}
 * holds one struct's bytes and is rewritten for each call.
 *
 * @module
 */

/** A field's C type: 8-byte pointers and sizes, 4-byte numbers. */
export type FieldType = "pointer" | "usize" | "f32" | "i32" | "u32";

/** A pointer field's value: a typed array (its data), a native pointer, or null. */
export type PointerArgument = ArrayBufferView | Deno.PointerObject | null;

/** What a field of type `T` takes. */
export type FieldValue<T extends FieldType> = T extends "pointer" ? PointerArgument
  : T extends "usize" ? number | bigint
  : number;

const SIZE: Record<FieldType, number> = { pointer: 8, usize: 8, f32: 4, i32: 4, u32: 4 };

/** A struct's fields in order, with their byte offsets and its size. */
export class StructLayout<F extends Record<string, FieldType>> {
  /** Field types in declaration order. */
  readonly fields: F;
  /** Byte offset of each field. */
  readonly offsets: Readonly<Record<keyof F, number>>;
  /** Size in bytes, padded to the largest field's alignment. */
  readonly size: number;
  /** The struct's code for `sb_struct_layout`. */
  readonly code: number;
  /** (name, type, offset) of each field, in order: what a write walks. */
  readonly entries: readonly (readonly [keyof F, FieldType, number])[];

  /** Lays out `fields` (natural alignment, in order). */
  constructor(code: number, fields: F) {
    this.code = code;
    this.fields = fields;
    const offsets: Record<string, number> = {};
    let at = 0;
    let align = 1;
    for (const [name, type] of Object.entries(fields)) {
      const size = SIZE[type];
      at = Math.ceil(at / size) * size;
      offsets[name] = at;
      at += size;
      align = Math.max(align, size);
    }
    this.offsets = offsets as Record<keyof F, number>;
    this.entries = Object.entries(fields).map(([name, type]) =>
      [name, type, offsets[name]] as const
    );
    this.size = Math.ceil(at / align) * align;
  }

  /** A buffer for one struct of this layout, reused across calls. */
  buffer(): StructBuffer<F> {
    return new StructBuffer(this);
  }
}

/**
 * Data addresses of the typed arrays seen. The address is taken from the view's ArrayBuffer,
 * which V8 keeps in a backing store that never moves (asking for `.buffer` moves a small
 * typed array's data out of the GC heap first, where it could move): so a cached address stays
 * valid while the view lives, and no collection between taking it and the call can stale it.
 */
const addresses = new WeakMap<ArrayBufferView, bigint>();

function pointerValue(value: PointerArgument): bigint {
  if (value === null) return 0n;
  if (!ArrayBuffer.isView(value)) return BigInt(Deno.UnsafePointer.value(value));
  if ((value.buffer as ArrayBuffer).detached) {
    throw new TypeError("A kernel argument's ArrayBuffer was detached (transferred)");
  }
  let address = addresses.get(value);
  if (address === undefined) {
    const base = Deno.UnsafePointer.of(value.buffer as ArrayBuffer);
    address = BigInt(Deno.UnsafePointer.value(base)) + BigInt(value.byteOffset);
    addresses.set(value, address);
  }
  return address;
}

/** One struct's bytes, written field by field for each call. */
export class StructBuffer<F extends Record<string, FieldType>> {
  /** The struct's bytes: pass these as the kernel's struct pointer. */
  readonly bytes: Uint8Array;
  #view: DataView;
  #layout: StructLayout<F>;

  /** A zeroed struct of `layout`. */
  constructor(layout: StructLayout<F>) {
    this.#layout = layout;
    this.bytes = new Uint8Array(layout.size);
    this.#view = new DataView(this.bytes.buffer);
  }

  /**
   * Writes every field and returns the bytes. Pointer fields hold the address of a typed
   * array's data: the array must stay alive until the call returns (it does while the caller
   * holds it).
   */
  write(values: { [K in keyof F]: FieldValue<F[K]> }): Uint8Array {
    const view = this.#view;
    for (const [name, type, at] of this.#layout.entries) {
      const value = values[name];
      if (type === "pointer") view.setBigUint64(at, pointerValue(value as PointerArgument), true);
      else if (type === "usize") view.setBigUint64(at, BigInt(value as number | bigint), true);
      else if (type === "f32") view.setFloat32(at, value as number, true);
      else if (type === "i32") view.setInt32(at, value as number, true);
      else view.setUint32(at, value as number, true);
    }
    return this.bytes;
  }
}

/** `kernels.zig` `Int8Call`: what `sb_gemm_i8` and `sb_spmm_i8` read besides W and X. */
export const INT8_CALL = new StructLayout(0, {
  x_scale: "pointer",
  x_zero: "pointer",
  residual: "pointer",
  y: "pointer",
  output: "u32",
  activation: "u32",
  out_scale: "f32",
  out_zero: "i32",
  out_qmax: "u32",
  numerics: "u32",
});

/** `kernels/attention.zig` `Problem`: one `sb_attention` call's inputs, shape and output. */
export const ATTENTION_PROBLEM = new StructLayout(1, {
  q: "pointer",
  k: "pointer",
  v: "pointer",
  ld: "usize",
  mask: "pointer",
  mask_value: "f32",
  batch: "usize",
  seq: "usize",
  heads: "usize",
  head_size: "usize",
  scale: "f32",
  out: "pointer",
  ld_out: "usize",
});

/** `kernels/embeddings.zig` `Call`: one `sb_embeddings` call's tables, ids and shape. */
export const EMBEDDINGS_CALL = new StructLayout(2, {
  input_ids: "pointer",
  token_type_ids: "pointer",
  batch: "usize",
  seq: "usize",
  word: "pointer",
  vocab: "usize",
  position: "pointer",
  max_positions: "usize",
  token_type: "pointer",
  type_vocab: "usize",
  gamma: "pointer",
  beta: "pointer",
  eps: "f32",
  hidden: "usize",
  out: "pointer",
});

/** Every layout `sb_struct_layout` knows, by code. */
export const ABI_STRUCTS = [INT8_CALL, ATTENTION_PROBLEM, EMBEDDINGS_CALL] as const;

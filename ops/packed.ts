/**
 * The native bytes a linear op runs from ({@linkcode PackedBytes}): packed by the op's own
 * constructor from a weight, or borrowed from a region other ops share ({@linkcode SharedRegion}),
 * such as the packed part of a compiled model file mapped into memory. Every linear op takes
 * either source, so a compiled model runs the same op classes as a model built from weights.
 *
 * ```ts
 * import { NativeBuffer } from "../ffi/memory.ts";
 * import { LinearF32 } from "./linear_f32.ts";
 * import { SharedRegion } from "./packed.ts";
 * using built = new LinearF32({ out: 2, in: 4, weight: new Float32Array(8).fill(1) });
 * const native = new NativeBuffer(built.packedData().length);
 * native.u8().set(built.packedData());
 * using region = new SharedRegion(native); // owns `native` now
 * using again = new LinearF32({ out: 2, in: 4, packed: { region, offset: 0, bytes: region.bytes } });
 * ```
 *
 * @module
 */
import { NativeBuffer, type NativeMemory } from "../ffi/memory.ts";

/**
 * A reference-counted native region shared by several linear ops: a whole native block, or a
 * 64-byte aligned window of one (the packed part of a mapped compiled model).
 */
export class SharedRegion implements Disposable {
  #memory: NativeMemory;
  #offset: number;
  #bytes: number;
  #refs = 1;

  /**
   * Takes ownership of `memory` (released with the last reference); the region is `bytes`
   * bytes from `offset` (default: all of it). The creator holds the first reference.
   */
  constructor(memory: NativeMemory, offset = 0, bytes: number = memory.bytes - offset) {
    if (
      !Number.isInteger(offset) || offset < 0 || offset % 64 !== 0 || !Number.isInteger(bytes) ||
      bytes < 0 || offset + bytes > memory.bytes
    ) {
      throw new RangeError(
        `Shared region [${offset}, +${bytes}) is misaligned or outside its ${memory.bytes}-byte block`,
      );
    }
    this.#memory = memory;
    this.#offset = offset;
    this.#bytes = bytes;
  }

  /** The region's base pointer; throws once freed. */
  get pointer(): Deno.PointerObject {
    if (this.#refs <= 0) throw new Error("Packed weights used after they were freed");
    const base = this.#memory.pointer;
    return this.#offset === 0 ? base : Deno.UnsafePointer.offset(base, this.#offset)!;
  }

  /** Bytes in the region. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The whole region as bytes (for reading it in, or hashing it). */
  u8(): Uint8Array {
    return this.#memory.u8().subarray(this.#offset, this.#offset + this.#bytes);
  }

  /** Adds a reference. */
  retain(): void {
    if (this.#refs <= 0) throw new Error("Packed weights used after they were freed");
    this.#refs++;
  }

  /** Drops a reference; the memory is released with the last one. */
  [Symbol.dispose](): void {
    if (this.#refs <= 0) return;
    if (--this.#refs === 0) this.#memory[Symbol.dispose]();
  }
}

/** Where packed bytes are: a region and a 64-byte aligned slice of it. */
export interface PackedSlice {
  /** The owning region (retained by the op built on it). */
  region: SharedRegion;
  /** Byte offset in the region (a multiple of 64). */
  offset: number;
  /** Bytes of the packed weight. */
  bytes: number;
}

/**
 * Already packed weights to build a linear op from instead of a weight: the shape, and the bytes
 * the op of that kind wrote (its {@linkcode PackedBytes.u8}), e.g. read back from a compiled model.
 */
export interface PackedSource {
  /** Output features. */
  out: number;
  /** Input features. */
  in: number;
  /** Where the bytes are. */
  packed: PackedSlice;
}

/** Whether a linear op's constructor argument is a {@linkcode PackedSource}. */
export function isPackedSource(source: object): source is PackedSource {
  return "packed" in source && typeof (source as PackedSource).packed === "object";
}

/**
 * The packed weights of one linear op: bytes it packed itself ({@linkcode PackedBytes.allocate})
 * or a slice of a shared region it borrowed ({@linkcode PackedBytes.borrow}). Released once.
 */
export class PackedBytes implements Disposable {
  #region: SharedRegion | null;
  #offset: number;
  #bytes: number;
  #pointer: Deno.PointerObject;
  #what: string;

  private constructor(region: SharedRegion, offset: number, bytes: number, what: string) {
    this.#region = region;
    this.#offset = offset;
    this.#bytes = bytes;
    this.#what = what;
    this.#pointer = offset === 0
      ? region.pointer
      : Deno.UnsafePointer.offset(region.pointer, offset)!;
  }

  /**
   * `bytes` (> 0) of new 64-byte aligned native memory for an op to pack into; `what` names the
   * op in errors.
   */
  static allocate(bytes: number, what: string): PackedBytes {
    return new PackedBytes(new SharedRegion(new NativeBuffer(bytes)), 0, bytes, what);
  }

  /**
   * The bytes of `slice`, retained until disposal.
   *
   * @throws RangeError when the slice is misaligned, empty or outside its region.
   */
  static borrow(slice: PackedSlice, what: string): PackedBytes {
    const { region, offset, bytes } = slice;
    if (!(region instanceof SharedRegion)) {
      throw new RangeError(`The packed slice of the ${what} needs a SharedRegion`);
    }
    if (
      !Number.isInteger(offset) || offset < 0 || offset % 64 !== 0 || !Number.isInteger(bytes) ||
      bytes < 1 || offset + bytes > region.bytes
    ) {
      throw new RangeError(
        `Packed slice [${offset}, ${
          offset + bytes
        }) of the ${what} is misaligned or outside its ${region.bytes}-byte region`,
      );
    }
    region.retain();
    return new PackedBytes(region, offset, bytes, what);
  }

  /** Address of the packed bytes; throws once released. */
  get pointer(): Deno.PointerObject {
    if (this.#region === null) throw new Error(`The ${this.#what} was used after it was disposed`);
    return this.#pointer;
  }

  /** Number of packed bytes. */
  get bytes(): number {
    return this.#bytes;
  }

  /** The packed bytes (a view, not a copy); throws once released. */
  u8(): Uint8Array {
    if (this.#region === null) throw new Error(`The ${this.#what} was used after it was disposed`);
    return this.#region.u8().subarray(this.#offset, this.#offset + this.#bytes);
  }

  /** Drops this op's reference (the memory goes with the region's last one). Idempotent. */
  [Symbol.dispose](): void {
    const region = this.#region;
    this.#region = null;
    region?.[Symbol.dispose]();
  }
}

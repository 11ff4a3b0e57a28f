/**
 * Native memory owned by JavaScript objects: 64-byte aligned blocks for packed weights and
 * workspaces ({@linkcode NativeBuffer}), and files mapped into memory ({@linkcode MappedFile}).
 * Released by `[Symbol.dispose]`, or by a FinalizationRegistry if the owner is collected first.
 *
 * @module
 */
import { kernels } from "./library.ts";

/** How a block goes back: `sb_free` for an allocation, `sb_unmap_file` for a map. */
type Release = "free" | "unmap";

function release(kind: Release, pointer: Deno.PointerObject, bytes: number): void {
  const lib = kernels().symbols;
  if (kind === "free") lib.sb_free(pointer, BigInt(bytes));
  else lib.sb_unmap_file(pointer, BigInt(bytes));
}

const registry = new FinalizationRegistry<
  { kind: Release; pointer: Deno.PointerObject; bytes: number }
>(({ kind, pointer, bytes }) => release(kind, pointer, bytes));

/** What the packed-weight regions need of a native block: a pointer, a size, a byte view. */
export interface NativeMemory extends Disposable {
  /** The base pointer; throws once released. */
  readonly pointer: Deno.PointerObject;
  /** Size in bytes. */
  readonly bytes: number;
  /** A Uint8Array over the whole block. */
  u8(): Uint8Array;
}

/** A native block with typed views, released once (by dispose, or when collected). */
abstract class NativeBlock implements NativeMemory {
  #pointer: Deno.PointerObject | null;
  #bytes: number;
  #buffer: ArrayBuffer;
  #release: Release;
  #what: string;

  constructor(pointer: Deno.PointerObject, bytes: number, kind: Release, what: string) {
    this.#pointer = pointer;
    this.#bytes = bytes;
    this.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, bytes);
    this.#release = kind;
    this.#what = what;
    registry.register(this, { kind, pointer, bytes }, this);
  }

  /** The base pointer, for FFI calls; throws once released. */
  get pointer(): Deno.PointerObject {
    if (this.#pointer === null) throw new Error(`${this.#what} used after it was disposed`);
    return this.#pointer;
  }

  /** Size in bytes. */
  get bytes(): number {
    return this.#bytes;
  }

  /** A Float32Array over the whole block. */
  f32(): Float32Array {
    this.pointer;
    return new Float32Array(this.#buffer, 0, this.#bytes >> 2);
  }

  /** A Uint8Array over the whole block. */
  u8(): Uint8Array {
    this.pointer;
    return new Uint8Array(this.#buffer, 0, this.#bytes);
  }

  /** Releases the block; later use throws. Idempotent. */
  [Symbol.dispose](): void {
    if (this.#pointer === null) return;
    registry.unregister(this);
    release(this.#release, this.#pointer, this.#bytes);
    this.#pointer = null;
    this.#buffer = new ArrayBuffer(0);
  }
}

/** A block of 64-byte aligned native memory with typed views over it. */
export class NativeBuffer extends NativeBlock {
  /** Allocates `bytes` (> 0) of 64-byte aligned native memory. */
  constructor(bytes: number) {
    if (!Number.isInteger(bytes) || bytes <= 0) {
      throw new RangeError(`Native buffer size must be a positive integer, got ${bytes}`);
    }
    const pointer = kernels().symbols.sb_alloc(BigInt(bytes));
    if (pointer === null) throw new Error(`Out of memory allocating ${bytes} native bytes`);
    super(pointer, bytes, "free", "Native buffer");
  }
}

/**
 * The first bytes of a file mapped into memory, private and copy-on-write: pages come from the
 * page cache when first touched, and a write changes only this process's copy, never the file.
 * Page-aligned. Truncating the file while it is mapped makes later reads of the lost pages
 * crash the process (SIGBUS), as with any memory map.
 */
export class MappedFile extends NativeBlock {
  /**
   * Maps the first `bytes` (> 0) bytes of the file at `path`.
   *
   * @throws Error naming the file when it cannot be opened, is shorter than `bytes`, or the
   *   map fails.
   */
  constructor(path: string, bytes: number) {
    if (!Number.isInteger(bytes) || bytes <= 0) {
      throw new RangeError(`Mapped file size must be a positive integer, got ${bytes}`);
    }
    const encoded = new TextEncoder().encode(path);
    const pointer = kernels().symbols.sb_map_file(encoded, BigInt(encoded.length), BigInt(bytes));
    if (pointer === null) {
      throw new Error(
        `Cannot map ${bytes} bytes of "${path}" into memory (missing, unreadable, or shorter than that)`,
      );
    }
    super(pointer, bytes, "unmap", "Mapped file");
  }
}

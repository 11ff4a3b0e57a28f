/**
 * Native (64-byte aligned) memory owned by JavaScript objects: packed weights and workspaces.
 * Freed by `[Symbol.dispose]`, or by a FinalizationRegistry if the owner is collected first.
 *
 * @module
 */
import { kernels } from "./library.ts";

const registry = new FinalizationRegistry<{ pointer: Deno.PointerObject; bytes: number }>(
  ({ pointer, bytes }) => kernels().symbols.sb_free(pointer, BigInt(bytes)),
);

/** A block of native memory with typed views over it. */
export class NativeBuffer implements Disposable {
  #pointer: Deno.PointerObject | null;
  #bytes: number;
  #buffer: ArrayBuffer;

  /** Allocates `bytes` (> 0) of 64-byte aligned native memory. */
  constructor(bytes: number) {
    if (!Number.isInteger(bytes) || bytes <= 0) {
      throw new RangeError(`Native buffer size must be a positive integer, got ${bytes}`);
    }
    const pointer = kernels().symbols.sb_alloc(BigInt(bytes));
    if (pointer === null) throw new Error(`Out of memory allocating ${bytes} native bytes`);
    this.#pointer = pointer;
    this.#bytes = bytes;
    this.#buffer = Deno.UnsafePointerView.getArrayBuffer(pointer, bytes);
    registry.register(this, { pointer, bytes }, this);
  }

  /** The native pointer, for FFI calls; throws once disposed. */
  get pointer(): Deno.PointerObject {
    if (this.#pointer === null) throw new Error("Native buffer used after it was disposed");
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

  /** Frees the memory; later use throws. Idempotent. */
  [Symbol.dispose](): void {
    if (this.#pointer === null) return;
    registry.unregister(this);
    kernels().symbols.sb_free(this.#pointer, BigInt(this.#bytes));
    this.#pointer = null;
    this.#buffer = new ArrayBuffer(0);
  }
}

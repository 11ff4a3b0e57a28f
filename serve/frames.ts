/**
 * Length-prefixed frames over a byte stream: how the server talks to its worker processes
 * through their stdin and stdout. A frame is a little-endian u32 byte count followed by one
 * value in V8's structured-clone format (`node:v8` serialize), so typed arrays cross as bytes.
 *
 * @module
 */
import { deserialize, serialize } from "node:v8";

/** Largest frame either side accepts (a batch of token vectors of a large model fits). */
export const MAX_FRAME_BYTES = 1 << 30;

/** Encodes one value as a frame. */
export function encodeFrame(value: unknown): Uint8Array {
  const body = serialize(value);
  if (body.length > MAX_FRAME_BYTES) {
    throw new RangeError(`A worker message of ${body.length} bytes is over ${MAX_FRAME_BYTES}`);
  }
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length, true);
  frame.set(body, 4);
  return frame;
}

/**
 * The stream ended inside a frame: its writer stopped mid-message (a worker that died while
 * answering), as opposed to a malformed frame from a live writer.
 */
export class TruncatedFrameError extends RangeError {
  /** Names the bytes left over. */
  constructor(left: number) {
    super(`The worker stream ended inside a frame (${left} bytes left)`);
    this.name = "TruncatedFrameError";
  }
}

/**
 * Decodes the frames of a stream, one value each, until the stream ends.
 *
 * @throws RangeError when a frame header announces more than {@linkcode MAX_FRAME_BYTES}, or
 *   {@linkcode TruncatedFrameError} when the stream ends inside a frame.
 */
export async function* readFrames(stream: ReadableStream<Uint8Array>): AsyncGenerator<unknown> {
  const bytes = new ByteQueue();
  let size = -1; // body size of the frame being read, once its header is in
  for await (const chunk of stream) {
    bytes.push(chunk);
    // Bounded: each pass consumes one header or one whole frame, or stops.
    while (true) {
      if (size < 0) {
        if (bytes.length < 4) break;
        size = new DataView(bytes.take(4).buffer).getUint32(0, true);
        if (size > MAX_FRAME_BYTES) {
          throw new RangeError(`A worker frame announces ${size} bytes, over ${MAX_FRAME_BYTES}`);
        }
      }
      if (bytes.length < size) break;
      const body = bytes.take(size);
      size = -1;
      yield deserialize(body);
    }
  }
  if (size >= 0 || bytes.length > 0) {
    throw new TruncatedFrameError(bytes.length);
  }
}

/** Chunks received and not yet consumed; joined only when a frame is complete. */
class ByteQueue {
  #chunks: Uint8Array[] = [];
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** Removes and returns the first `n` bytes (a fresh array). */
  take(n: number): Uint8Array {
    const out = new Uint8Array(n);
    let filled = 0;
    while (filled < n) {
      const head = this.#chunks[0];
      const part = Math.min(head.length, n - filled);
      out.set(head.subarray(0, part), filled);
      filled += part;
      if (part === head.length) this.#chunks.shift();
      else this.#chunks[0] = head.subarray(part);
    }
    this.#length -= n;
    return out;
  }
}

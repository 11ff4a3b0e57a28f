// Helpers shared by the server tests (not a test file itself).
import assert from "node:assert/strict";
import { type SpawnedServer, type SpawnOptions, spawnServer } from "../serve/spawn.ts";

/** The JSON error body of a response, after checking its status and shape. */
export async function expectError(
  response: Response,
  status: number,
  options: { param?: string; match?: RegExp } = {},
): Promise<{ message: string; param: string | null }> {
  const text = await response.text();
  assert.equal(response.status, status, `expected ${status}, got ${response.status}: ${text}`);
  assert.match(response.headers.get("content-type") ?? "", /application\/json/);
  const body = JSON.parse(text);
  const message: string = typeof body.error === "string" ? body.error : body.error?.message;
  const param: string | null = typeof body.error === "string"
    ? body.param ?? null
    : body.error?.param ?? null;
  assert.equal(typeof message, "string", `no error message in ${text}`);
  if (options.param !== undefined) {
    assert.equal(param, options.param, `error should name "${options.param}": ${text}`);
  }
  if (options.match !== undefined) assert.match(message, options.match);
  return { message, param };
}

/** POSTs JSON (or raw bytes) and returns the response. */
export function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<Response> {
  const raw = body instanceof Uint8Array || typeof body === "string";
  return fetch(url, {
    method: "POST",
    headers: raw ? headers : { "content-type": "application/json", ...headers },
    body: raw ? body as BodyInit : JSON.stringify(body),
  });
}

/** Largest absolute difference between two equally long vectors. */
export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length, `length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    worst = Number.isNaN(d) ? Infinity : Math.max(worst, d);
  }
  return worst;
}

/** Decodes an OpenAI base64 embedding (little-endian float32). */
export function decodeBase64F32(text: string): Float32Array {
  const bytes = (Uint8Array as unknown as { fromBase64(s: string): Uint8Array }).fromBase64(text);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
}

/** Sends raw bytes over TCP; returns the response text, or null when the peer closed first. */
export async function rawHttp(
  port: number,
  request: Uint8Array,
  options: { closeAfterWrite?: boolean; timeoutMs?: number } = {},
): Promise<string | null> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  try {
    try {
      let written = 0;
      while (written < request.length) written += await conn.write(request.subarray(written));
    } catch { /* the server may answer and close before the body is written */ }
    if (options.closeAfterWrite) return null;
    const decoder = new TextDecoder();
    let text = "";
    const buf = new Uint8Array(65536);
    const deadline = Date.now() + (options.timeoutMs ?? 20_000);
    while (Date.now() < deadline) {
      const n = await Promise.race([
        conn.read(buf).catch(() => null),
        new Promise<null>((r) => setTimeout(() => r(null), Math.max(1, deadline - Date.now()))),
      ]);
      if (n === null) break;
      text += decoder.decode(buf.subarray(0, n), { stream: true });
      // Stop once one whole response is in (the server may keep the connection open).
      const head = text.indexOf("\r\n\r\n");
      const length = /content-length:\s*(\d+)/i.exec(text.slice(0, Math.max(0, head)));
      if (head >= 0 && length !== null) {
        const body = new TextEncoder().encode(text.slice(head + 4)).length;
        if (body >= Number(length[1])) break;
      }
    }
    return text === "" ? null : text;
  } finally {
    try {
      conn.close();
    } catch { /* closed */ }
  }
}

/** An HTTP/1.1 request with `connection: close`. */
export function httpRequest(
  method: string,
  path: string,
  body: Uint8Array | string,
  headers: Record<string, string> = {},
  contentLength?: number,
): Uint8Array {
  const bytes = typeof body === "string" ? new TextEncoder().encode(body) : body;
  const head = [
    `${method} ${path} HTTP/1.1`,
    "host: 127.0.0.1",
    "connection: close",
    `content-length: ${contentLength ?? bytes.length}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
    "",
    "",
  ].join("\r\n");
  const h = new TextEncoder().encode(head);
  const out = new Uint8Array(h.length + bytes.length);
  out.set(h);
  out.set(bytes, h.length);
  return out;
}

/**
 * A test against a server spawned with `options` (op and resource sanitizers off: the server is
 * a child process with open pipes), stopped afterwards however the test ends.
 */
export function serverTest(
  name: string,
  options: SpawnOptions | (() => Promise<SpawnOptions>),
  fn: (server: SpawnedServer) => Promise<void>,
): void {
  Deno.test({
    name,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const server = await spawnServer(typeof options === "function" ? await options() : options);
      try {
        await fn(server);
      } finally {
        await server.stop();
      }
    },
  });
}

/**
 * BYTES tensor data in KServe's binary form: per element a 4-byte little-endian length, then its
 * UTF-8 bytes.
 */
export function bytesTensor(texts: string[]): Uint8Array {
  const parts = texts.map((text) => new TextEncoder().encode(text));
  const out = new Uint8Array(parts.reduce((n, part) => n + 4 + part.length, 0));
  let at = 0;
  for (const part of parts) {
    new DataView(out.buffer).setUint32(at, part.length, true);
    out.set(part, at + 4);
    at += 4 + part.length;
  }
  return out;
}

/**
 * A KServe v2 binary-extension request body: a JSON header with one BYTES input `"text"` of
 * `rows` elements (default 1) whose `binary_data_size` is `declaredSize` (default the tensor's
 * length), and `outputs` when given; then `tensor`. `headerLength` is the header's byte length
 * (the `Inference-Header-Content-Length` value).
 */
export function v2TextBody(
  tensor: Uint8Array,
  options: { rows?: number; declaredSize?: number; outputs?: unknown[] } = {},
): { body: Uint8Array; headerLength: number } {
  const header = new TextEncoder().encode(JSON.stringify({
    inputs: [{
      name: "text",
      shape: [options.rows ?? 1],
      datatype: "BYTES",
      parameters: { binary_data_size: options.declaredSize ?? tensor.length },
    }],
    ...(options.outputs ? { outputs: options.outputs } : {}),
  }));
  const body = new Uint8Array(header.length + tensor.length);
  body.set(header);
  body.set(tensor, header.length);
  return { body, headerLength: header.length };
}

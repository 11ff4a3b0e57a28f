/**
 * HTTP helpers shared by the routes: the error type every handler throws, bounded body
 * reading, strict UTF-8 and JSON decoding, and JSON responses.
 *
 * @module
 */

/**
 * Error body styles: OpenAI (`{error: {message, type, param, code}}`), KServe v2 (`{error}`) or
 * text-embeddings-inference (`{error, error_type}`).
 */
export type ErrorStyle = "openai" | "v2" | "tei";

/** TEI's `error_type` for a status. */
function teiErrorType(status: number): string {
  if (status === 429) return "Overloaded";
  if (status === 503) return "Unhealthy";
  if (status >= 500) return "Backend";
  return "Validation";
}

/** Options of {@linkcode HttpError}. */
export interface HttpErrorOptions {
  /** The request field at fault, e.g. `"input[3]"`. */
  param?: string | null;
  /** Machine-readable code, e.g. `"model_not_found"`. */
  code?: string;
  /** Extra response headers, e.g. `Retry-After`. */
  headers?: Record<string, string>;
  /** The original error. */
  cause?: unknown;
}

const TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  404: "not_found_error",
  405: "invalid_request_error",
  408: "timeout_error",
  413: "invalid_request_error",
  415: "invalid_request_error",
  422: "invalid_request_error",
  429: "rate_limit_error",
  500: "server_error",
  503: "overloaded_error",
};

/** An error with an HTTP status; the routes turn it into a JSON error response. */
export class HttpError extends Error {
  /** HTTP status. */
  readonly status: number;
  /** The request field at fault, or `null`. */
  readonly param: string | null;
  /** Machine-readable code. */
  readonly code: string;
  /** Extra response headers. */
  readonly headers: Record<string, string>;

  /** Creates the error. */
  constructor(status: number, message: string, options: HttpErrorOptions = {}) {
    super(message, { cause: options.cause });
    this.name = "HttpError";
    this.status = status;
    this.param = options.param ?? null;
    this.code = options.code ?? (TYPES[status] ?? "error").replace(/_error$/, "");
    this.headers = options.headers ?? {};
  }
}

/** Quotes a value for an error message, cut to a readable length. */
export function quote(value: unknown): string {
  let text: string;
  try {
    text = typeof value === "string" ? JSON.stringify(value) : JSON.stringify(value) ?? "undefined";
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

/** Describes the JSON type of a value, e.g. `"a number"`, `"an array"`, `"null"`. */
export function typeName(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "an array";
  switch (typeof value) {
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
    case "object":
      return "an object";
    default:
      return typeof value;
  }
}

/** A JSON response with the given status and headers. */
export function jsonResponse(
  body: unknown,
  status = 200,
  headers: Record<string, string> = {},
): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

/** The JSON error response for `error` in the given style. */
export function errorResponse(error: HttpError, style: ErrorStyle): Response {
  const body = style === "tei"
    ? { error: error.message, error_type: teiErrorType(error.status) }
    : style === "v2"
    ? { error: error.message, ...(error.param ? { param: error.param } : {}) }
    : {
      error: {
        message: error.message,
        type: TYPES[error.status] ?? "error",
        param: error.param,
        code: error.code,
      },
    };
  return jsonResponse(body, error.status, error.headers);
}

/** Options of {@linkcode readBody}. */
export interface ReadBodyOptions {
  /** Largest body accepted, in bytes (413 beyond). */
  maxBytes: number;
  /** Longest wait for the whole body, in milliseconds (408 beyond). */
  timeoutMs: number;
}

/**
 * Reads a request body into memory, refusing more than `maxBytes` (checked against
 * `Content-Length` first, then while reading) and giving up after `timeoutMs`.
 *
 * @throws HttpError 413 when too large, 408 when too slow, 400 when the client cut it short,
 *   415 for a compressed body.
 */
export async function readBody(request: Request, options: ReadBodyOptions): Promise<Uint8Array> {
  const encoding = request.headers.get("content-encoding");
  if (encoding !== null && encoding.trim().toLowerCase() !== "identity") {
    throw new HttpError(
      415,
      `Content-Encoding ${quote(encoding)} is not supported; send the body uncompressed`,
      { param: "content-encoding", code: "unsupported_media_type" },
    );
  }
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (!Number.isSafeInteger(n) || n < 0) {
      throw new HttpError(400, `Invalid Content-Length header ${quote(declared)}`, {
        param: "content-length",
      });
    }
    if (n > options.maxBytes) {
      throw new HttpError(
        413,
        `Request body of ${n} bytes is over the limit of ${options.maxBytes} bytes`,
        { code: "body_too_large" },
      );
    }
  }
  if (request.body === null) return new Uint8Array(0);
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new HttpError(408, `Request body not received within ${options.timeoutMs} ms`, {
          code: "body_timeout",
        }),
      );
    }, options.timeoutMs);
  });
  try {
    // Bounded: every iteration consumes at least one byte or ends, and total is capped.
    while (true) {
      let step: ReadableStreamReadResult<Uint8Array>;
      try {
        step = await Promise.race([reader.read(), timeout]);
      } catch (err) {
        if (err instanceof HttpError) throw err;
        throw new HttpError(400, `Request body could not be read: ${(err as Error).message}`, {
          code: "body_incomplete",
          cause: err,
        });
      }
      if (step.done) break;
      total += step.value.byteLength;
      if (total > options.maxBytes) {
        throw new HttpError(
          413,
          `Request body is over the limit of ${options.maxBytes} bytes`,
          { code: "body_too_large" },
        );
      }
      chunks.push(step.value);
    }
  } finally {
    clearTimeout(timer);
    reader.cancel().catch(() => {});
  }
  if (declared !== null && total !== Number(declared)) {
    throw new HttpError(
      400,
      `Request body has ${total} bytes but Content-Length says ${declared}`,
      { code: "body_incomplete" },
    );
  }
  if (chunks.length === 1) return chunks[0];
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

const strictUtf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false });

/**
 * Decodes UTF-8 strictly.
 *
 * @throws HttpError 400 naming `what` when the bytes are not valid UTF-8.
 */
export function decodeUtf8(bytes: Uint8Array, what = "Request body"): string {
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw new HttpError(400, `${what} is not valid UTF-8`, { code: "invalid_utf8" });
  }
}

/**
 * Parses a JSON request body (strict UTF-8).
 *
 * @throws HttpError 400 with the parser's message when it is not JSON.
 */
export function parseJson(bytes: Uint8Array): unknown {
  const text = decodeUtf8(bytes);
  if (text.trim() === "") {
    throw new HttpError(400, "Request body is empty; expected a JSON object", {
      code: "invalid_json",
    });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, `Request body is not valid JSON: ${(err as Error).message}`, {
      code: "invalid_json",
    });
  }
}

/**
 * Checks that the request declares a JSON body (`application/json`, any charset UTF-8); a
 * missing `Content-Type` is accepted as JSON, as curl and many clients send none.
 *
 * @throws HttpError 415 for another media type or charset.
 */
export function requireJsonContentType(request: Request): void {
  const type = request.headers.get("content-type");
  if (type === null) return;
  const [media, ...params] = type.split(";").map((s) => s.trim().toLowerCase());
  if (media !== "application/json") {
    throw new HttpError(
      415,
      `Content-Type ${quote(type)} is not supported; send application/json`,
      { param: "content-type", code: "unsupported_media_type" },
    );
  }
  for (const p of params) {
    const [key, value] = p.split("=").map((s) => s.trim().replace(/^"|"$/g, ""));
    if (key === "charset" && value !== "utf-8" && value !== "utf8") {
      throw new HttpError(
        415,
        `Charset ${quote(value)} is not supported; send UTF-8 JSON`,
        { param: "content-type", code: "unsupported_media_type" },
      );
    }
  }
}

/** Asserts `value` is a plain object, naming `what` otherwise (400). */
export function requireObject(value: unknown, what: string): Record<string, unknown> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new HttpError(400, `${what} must be a JSON object, got ${typeName(value)}`, {
      param: what === "Request body" ? null : what,
    });
  }
  return value as Record<string, unknown>;
}

/** Rejects keys of `body` not in `allowed` (400 naming the key). */
export function rejectUnknownKeys(
  body: Record<string, unknown>,
  allowed: readonly string[],
  prefix = "",
): void {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) {
      throw new HttpError(
        400,
        `Unknown field "${prefix}${key}"; expected one of ${allowed.join(", ")}`,
        { param: `${prefix}${key}` },
      );
    }
  }
}

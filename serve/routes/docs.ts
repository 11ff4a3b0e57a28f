/**
 * `GET /openapi.json` (OpenAPI 3.1 description of every route), `GET /docs` (a small HTML
 * page with the routes and curl examples), `GET /` (redirect to the docs) and `GET /metrics`.
 *
 * @module
 */
import { jsonResponse } from "../http.ts";
import type { Route, RouteContext } from "../state.ts";

/** A JSON Schema object with these `properties` (and `required` ones). */
function object(
  properties: Record<string, unknown>,
  required?: string[],
): Record<string, unknown> {
  return { type: "object", ...(required ? { required } : {}), properties };
}

const ERROR_OPENAI = object({
  error: object({
    message: { type: "string" },
    type: { type: "string" },
    param: { type: ["string", "null"], description: "The request field at fault" },
    code: { type: "string" },
  }, ["message", "type"]),
}, ["error"]);

const ERROR_V2 = object({ error: { type: "string" }, param: { type: "string" } }, ["error"]);

const TEXTS = {
  oneOf: [{ type: "string" }, { type: "array", items: { type: "string" }, minItems: 1 }],
};

const V2_TENSOR = object({
  name: { type: "string" },
  shape: { type: "array", items: { type: "integer", minimum: 0 } },
  datatype: { type: "string", enum: ["BYTES", "INT64", "INT32", "FP32"] },
  parameters: object({
    binary_data_size: { type: "integer", description: "Binary tensor data extension" },
  }),
  data: { type: "array", description: "Row-major elements, flat or nested" },
}, ["name", "shape", "datatype"]);

function errors(style: "openai" | "v2", codes: number[]): Record<string, unknown> {
  const schema = { $ref: `#/components/schemas/${style === "v2" ? "ErrorV2" : "Error"}` };
  const text: Record<number, string> = {
    400: "Malformed request (the message names the field)",
    401: "Missing or wrong bearer token",
    404: "Unknown model",
    408: "Body not received in time",
    413: "Body over the size limit",
    415: "Unsupported Content-Type",
    422: "Input over a limit (count, characters or tokens; the limit is quoted)",
    429: "Queue full; see Retry-After",
    503: "Loading, shutting down, or queue wait over the limit; see Retry-After",
  };
  return Object.fromEntries(
    codes.map((c) => [String(c), {
      description: text[c],
      content: { "application/json": { schema } },
    }]),
  );
}

/** A GET route that answers 200 with `description`; an `open` one needs no bearer token. */
function getRoute(
  summary: string,
  description: string,
  options: { open?: boolean } = {},
): Record<string, unknown> {
  const security = options.open ? { security: [] } : {};
  return { get: { summary, ...security, responses: { "200": { description } } } };
}

const INFER_CODES = [400, 401, 404, 408, 413, 415, 422, 429, 503];

/** A JSON request or response body with `schema`. */
function json(schema: unknown): Record<string, unknown> {
  return { content: { "application/json": { schema } } };
}

/**
 * A POST route that runs a model: `summary` (and `details`: a description, parameters), its
 * JSON request `body`, its 200 answer, and the errors of an inference route in `style`.
 */
function inferRoute(
  style: "openai" | "v2",
  summary: string,
  body: Record<string, unknown>,
  ok: { description: string; schema?: Record<string, unknown> },
  details: Record<string, unknown> = {},
): Record<string, unknown> {
  const answer = { description: ok.description, ...(ok.schema ? json(ok.schema) : {}) };
  return {
    post: {
      summary,
      ...details,
      requestBody: json(body),
      responses: { "200": answer, ...errors(style, INFER_CODES) },
    },
  };
}

/** The OpenAPI document. */
export function openApi(version: string): Record<string, unknown> {
  const modelParam = { name: "name", in: "path", required: true, schema: { type: "string" } };
  const v2Get = (summary: string) => ({
    get: {
      summary,
      parameters: [modelParam],
      responses: { "200": { description: "OK" }, ...errors("v2", [401, 404]) },
    },
  });
  return {
    openapi: "3.1.0",
    info: {
      title: "sparsebert server",
      version,
      description: "Sparse and int8 BERT-family encoders on CPU: KServe v2 (Open Inference " +
        "Protocol), OpenAI-compatible embeddings, and task endpoints. Requests arriving " +
        "together are batched across clients. When SPARSEBERT_API_KEY is set, every route " +
        "except health, docs and this document needs `Authorization: Bearer <key>`.",
    },
    components: {
      securitySchemes: { bearer: { type: "http", scheme: "bearer" } },
      schemas: { Error: ERROR_OPENAI, ErrorV2: ERROR_V2, V2Tensor: V2_TENSOR },
    },
    security: [{ bearer: [] }],
    paths: {
      "/v1/embeddings": inferRoute(
        "openai",
        "Embeddings (OpenAI-compatible)",
        object({
          input: {
            oneOf: [
              ...TEXTS.oneOf,
              { type: "array", items: { type: "integer" }, description: "Token ids" },
              { type: "array", items: { type: "array", items: { type: "integer" } } },
            ],
          },
          model: { type: "string", description: "Default: the first embedding model" },
          encoding_format: { type: "string", enum: ["float", "base64"], default: "float" },
          dimensions: { type: "integer", description: "Must equal the model's width" },
          user: { type: "string" },
          truncate: {
            type: "boolean",
            default: false,
            description: "Cut texts over the token limit instead of answering 422",
          },
        }, ["input"]),
        {
          description: "One embedding per input",
          schema: object({
            object: { const: "list" },
            data: {
              type: "array",
              items: object({
                object: { const: "embedding" },
                index: { type: "integer" },
                embedding: {
                  oneOf: [
                    { type: "array", items: { type: "number" } },
                    { type: "string", description: "base64 of little-endian float32" },
                  ],
                },
              }),
            },
            model: { type: "string" },
            usage: object({
              prompt_tokens: { type: "integer" },
              total_tokens: { type: "integer" },
            }),
          }),
        },
      ),
      "/v1/models": getRoute("Served models (OpenAI-compatible)", "OK"),
      "/v1/text-classification": inferRoute(
        "openai",
        "Text classification",
        object({
          input: TEXTS,
          model: { type: "string" },
          top_k: { type: "integer", minimum: 1, default: 1 },
          truncate: { type: "boolean", default: false },
        }, ["input"]),
        { description: "label, score and the top_k labels per text" },
      ),
      "/v1/question-answering": inferRoute(
        "openai",
        "Extractive question answering",
        object({
          question: { type: "string" },
          context: { type: "string" },
          inputs: {
            type: "array",
            items: object({ question: { type: "string" }, context: { type: "string" } }, [
              "question",
              "context",
            ]),
          },
          model: { type: "string" },
        }),
        { description: "answer, score, tokenStart, tokenEnd (context word pieces) per pair" },
      ),
      "/v1/token-classification": inferRoute(
        "openai",
        "Token classification (NER)",
        object({
          input: TEXTS,
          model: { type: "string" },
          truncate: { type: "boolean", default: false },
        }, ["input"]),
        { description: "entities per text" },
      ),
      "/v2": getRoute("Server metadata", "OK"),
      "/v2/health/live": getRoute("Liveness", "Live", { open: true }),
      "/v2/health/ready": {
        get: {
          summary: "Readiness",
          security: [],
          responses: {
            "200": { description: "Ready" },
            "503": { description: "Loading or shutting down" },
          },
        },
      },
      "/v2/models/{name}": v2Get("Model metadata (inputs, outputs, task, loaded file)"),
      "/v2/models/{name}/ready": v2Get("Model readiness"),
      "/v2/models/{name}/config": v2Get("Model configuration (Triton extension)"),
      "/v2/models/{name}/infer": inferRoute(
        "v2",
        "Inference (KServe v2; also /v2/models/{name}/versions/1/infer)",
        object({
          id: { type: "string" },
          parameters: object({
            truncate: { type: "boolean" },
            binary_data_output: { type: "boolean" },
          }),
          inputs: { type: "array", items: { $ref: "#/components/schemas/V2Tensor" } },
          outputs: {
            type: "array",
            items: object({
              name: { type: "string" },
              parameters: object({ binary_data: { type: "boolean" } }),
            }),
          },
        }, ["inputs"]),
        {
          description: "model_name, model_version, id, outputs",
          schema: object({
            model_name: { type: "string" },
            model_version: { type: "string" },
            id: { type: "string" },
            outputs: { type: "array", items: { $ref: "#/components/schemas/V2Tensor" } },
          }),
        },
        {
          description: "JSON, or Triton's binary tensor data extension: the JSON header, " +
            "then raw tensors, with the header's length in `Inference-Header-Content-Length`. " +
            "BYTES elements in binary form are a 4-byte little-endian length and the UTF-8 " +
            "bytes. `parameters.truncate: true` cuts over-long texts.",
          parameters: [modelParam],
        },
      ),
      "/metrics": getRoute("Prometheus metrics", "text/plain; version=0.0.4"),
      "/openapi.json": getRoute("This document", "OK", { open: true }),
      "/docs": getRoute("Docs page", "HTML", { open: true }),
    },
  };
}

function escapeHtml(text: string): string {
  return text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
}

function docsPage(context: RouteContext, routes: Route[]): Response {
  const { state } = context;
  const base = `http://${state.config.host}:${state.config.port}`;
  const rows = routes.map((r) =>
    `<tr><td>${r.method}</td><td><code>${escapeHtml(r.path)}</code></td><td>${
      escapeHtml(r.summary)
    }</td></tr>`
  ).join("\n");
  const models = [...state.models.values()].map((m) =>
    `<li><code>${escapeHtml(m.config.name)}</code>: ${m.config.task}, ${
      escapeHtml(m.info.loaded)
    }, max ${m.config.maxLength} tokens, batch ${m.config.maxBatch}</li>`
  ).join("\n");
  const embed = [...state.models.values()].find((m) => m.config.task === "feature-extraction");
  const example = embed
    ? `curl -s ${base}/v1/embeddings -H 'content-type: application/json' \\
  -d '{"model": "${embed.config.name}", "input": ["hello world", "sparse encoders"]}'

curl -s ${base}/v2/models/${embed.config.name}/infer -H 'content-type: application/json' \\
  -d '{"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["hello"]}]}'`
    : "";
  const html = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sparsebert server</title>
<style>body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}
td,th{padding:.2rem .6rem;text-align:left;vertical-align:top}pre{background:#f4f4f4;padding:1rem;
overflow:auto}</style></head><body>
<h1>sparsebert server ${escapeHtml(state.version)}</h1>
<p>Machine-readable description: <a href="/openapi.json">/openapi.json</a>.
Metrics: <a href="/metrics">/metrics</a>.</p>
<h2>Models</h2><ul>${models}</ul>
<h2>Routes</h2><table><tr><th>Method</th><th>Path</th><th>What</th></tr>${rows}</table>
<h2>Examples</h2><pre>${escapeHtml(example)}</pre>
<p>Errors are JSON: <code>{"error": {"message", "type", "param", "code"}}</code> on /v1 routes,
<code>{"error": "message", "param"}</code> on /v2 routes. Overload answers 429 (queue full) or
503 (queue wait too long, loading, shutting down) with <code>Retry-After</code>.</p>
</body></html>`;
  return new Response(html, { headers: { "content-type": "text/html; charset=utf-8" } });
}

/** The docs, OpenAPI and metrics routes; `all` is the full route table for the docs page. */
export function docsRoutes(all: () => Route[]): Route[] {
  return [
    {
      method: "GET",
      path: "/openapi.json",
      style: "openai",
      auth: false,
      summary: "OpenAPI 3.1 description of all routes",
      handler: (c) => jsonResponse(openApi(c.state.version)),
    },
    {
      method: "GET",
      path: "/docs",
      style: "openai",
      auth: false,
      summary: "This page",
      handler: (c) => docsPage(c, all()),
    },
    {
      method: "GET",
      path: "/",
      style: "openai",
      auth: false,
      summary: "Redirect to /docs",
      handler: () => new Response(null, { status: 302, headers: { location: "/docs" } }),
    },
    {
      method: "GET",
      path: "/metrics",
      style: "openai",
      auth: true,
      summary: "Prometheus metrics (text format 0.0.4)",
      handler: (c) =>
        new Response(c.state.metrics.render(), {
          headers: { "content-type": "text/plain; version=0.0.4; charset=utf-8" },
        }),
    },
  ];
}

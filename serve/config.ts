/**
 * Server configuration: defaults, loading from JSON or YAML, and validation with errors that
 * name the offending key and quote its value.
 *
 * ```yaml
 * host: 127.0.0.1
 * port: 5543
 * threads: 2
 * models:
 *   - name: minilm
 *     task: feature-extraction
 *     model: all-minilm-l6-v2-q
 *     maxBatch: 32
 *     maxWaitMs: 0
 *     maxLength: 256
 *     buckets: [16, 32, 64, 128, 256]
 *     instances: 1
 * ```
 *
 * @module
 */
import YAML from "yaml";
import { POOLING_MODES, type PoolingMode } from "../ops/pooling.ts";
import { NamedError } from "./errors.ts";

/** Tasks a served model can have (the pipeline task names). */
export const SERVE_TASKS = [
  "feature-extraction",
  "text-classification",
  "question-answering",
  "token-classification",
] as const;
/** One task name. */
export type ServeTask = typeof SERVE_TASKS[number];

/** Kernel choices passed to the pipeline (`auto` lets the model loader decide per layer). */
export const KERNEL_CHOICES = [
  "auto",
  "dense-f32",
  "dense-i8",
  "sparse-f32",
  "sparse-i8",
  "dense-bf16",
] as const;
/** One kernel choice. */
export type KernelChoice = typeof KERNEL_CHOICES[number];

/** One served model (an endpoint). */
export interface ModelConfig {
  /** Name in URLs and in the `model` field of requests. */
  name: string;
  /** Other names accepted in the `model` field (e.g. an OpenAI model name). */
  aliases: string[];
  /** Pipeline task. */
  task: ServeTask;
  /** A registry model name (`.cache/models/<name>`), an `.onnx` file, or a model folder. */
  model: string;
  /** Loaded instead when `model` cannot be loaded (e.g. an int8 file before int8 support). */
  fallback: string | null;
  /** `tokenizer.json` to use when the model's folder has none. */
  tokenizer: string | null;
  /** Kernel choice handed to the pipeline. */
  kernel: KernelChoice;
  /** Pooling of embeddings (feature-extraction); `null`: what the model declares, else mean. */
  pooling: PoolingMode | null;
  /** L2-normalize embeddings; `null`: whether the model declares Normalize, else true. */
  normalize: boolean | null;
  /** Largest batch one inference call gets. */
  maxBatch: number;
  /**
   * Largest batch in padded tokens (inputs x their longest length), as TEI's
   * `--max-batch-tokens`; default `maxBatch * maxLength`. At least `maxLength`, else refused.
   * Each worker plans a batch this large at start, so it also sizes the worker's workspace.
   */
  maxBatchTokens: number;
  /**
   * Longest an input waits for others to join its batch while an instance is free, in
   * milliseconds. Default 0: a free instance takes what is queued at once, and batches grow
   * while instances are busy. (On CPUs the cost per token barely depends on the batch size, so a
   * wait buys little throughput; measured on the default model: closed-loop capacity alike, open
   * loop at 200/s p50 15-17 ms with 4 and 7-15 ms with 0.)
   */
  maxWaitMs: number;
  /** Longest sequence in tokens, special tokens included. */
  maxLength: number;
  /** Sequence-length bucket bounds; inputs are batched with others of the same bucket. */
  buckets: number[];
  /** Worker processes, each with its own copy of the model and its own kernel thread pool. */
  instances: number;
  /** Most inputs waiting in this model's queue; beyond it requests get 429. */
  maxQueue: number;
}

/** Request limits. */
export interface LimitsConfig {
  /** Largest request body in bytes (413 beyond). */
  maxBodyBytes: number;
  /** Most inputs (texts or sequences) in one request (422 beyond). */
  maxInputs: number;
  /** Longest text in characters (422 beyond, even with truncation). */
  maxTextChars: number;
  /** Longest an input may wait in a queue before the request gets 503, in milliseconds. */
  queueTimeoutMs: number;
  /** Longest the server waits for a request body, in milliseconds (408 beyond). */
  bodyTimeoutMs: number;
  /** Most requests handled at once; beyond it requests get 503. */
  maxConcurrentRequests: number;
}

/** The whole server configuration. */
export interface ServeConfig {
  /** Address to listen on. */
  host: string;
  /** Port to listen on (0 picks a free one). */
  port: number;
  /**
   * Kernel threads per worker process (0: the library default, physical cores, split evenly
   * between all instances of all models).
   */
  threads: number;
  /** Request limits. */
  limits: LimitsConfig;
  /** Seconds clients are told to wait in `Retry-After`. */
  retryAfterS: number;
  /** Longest graceful shutdown waits for in-flight requests, in milliseconds. */
  shutdownTimeoutMs: number;
  /** Write one JSON log line per request to stdout (start-up and shutdown lines always). */
  log: boolean;
  /**
   * Cut over-long inputs when a request does not say `truncate` (TEI's `--auto-truncate`);
   * default false: such an input is a 422 error naming it.
   */
  autoTruncate: boolean;
  /** Served models; the first feature-extraction model is the default for `/v1/embeddings`. */
  models: ModelConfig[];
}

/** Error in a configuration file or option, naming the key. */
export class ConfigError extends NamedError {}

/** Default request limits. */
export const DEFAULT_LIMITS: Readonly<LimitsConfig> = Object.freeze({
  maxBodyBytes: 1 << 20,
  maxInputs: 256,
  maxTextChars: 32_768,
  queueTimeoutMs: 30_000,
  bodyTimeoutMs: 15_000,
  maxConcurrentRequests: 1024,
});

const DEFAULT_BUCKETS = [16, 32, 64, 128, 256, 512];

/** The model served with no configuration: all-MiniLM-L6-v2, int8 when it loads, else fp32. */
export function defaultModelConfig(): ModelConfig {
  return {
    name: "all-minilm-l6-v2",
    aliases: ["sentence-transformers/all-MiniLM-L6-v2"],
    task: "feature-extraction",
    model: "all-minilm-l6-v2-q",
    fallback: "all-minilm-l6-v2",
    tokenizer: null,
    kernel: "auto",
    pooling: null, // the model's own: mean + Normalize for all-MiniLM-L6-v2
    normalize: null,
    maxBatch: 32,
    maxBatchTokens: 32 * 256,
    maxWaitMs: 0,
    maxLength: 256,
    buckets: [16, 32, 64, 128, 256],
    instances: 1,
    maxQueue: 2048,
  };
}

/** The configuration used when no file is given. */
export function defaultConfig(): ServeConfig {
  return {
    host: "127.0.0.1",
    port: 5543,
    threads: 0,
    limits: { ...DEFAULT_LIMITS },
    retryAfterS: 1,
    shutdownTimeoutMs: 30_000,
    log: true,
    autoTruncate: false,
    models: [defaultModelConfig()],
  };
}

type Raw = Record<string, unknown>;

function isObject(value: unknown): value is Raw {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function quote(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

function checkKeys(raw: Raw, allowed: readonly string[], where: string): void {
  for (const key of Object.keys(raw)) {
    if (!allowed.includes(key)) {
      throw new ConfigError(
        `Unknown key "${where}${key}"; expected one of ${allowed.join(", ")}`,
      );
    }
  }
}

function int(raw: Raw, key: string, where: string, min: number, max: number, dflt: number): number {
  const value = raw[key];
  if (value === undefined) return dflt;
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < min || value > max) {
    throw new ConfigError(
      `"${where}${key}" must be an integer in ${min}..${max}, got ${quote(value)}`,
    );
  }
  return value;
}

function str(raw: Raw, key: string, where: string, dflt: string): string {
  const value = raw[key];
  if (value === undefined) return dflt;
  if (typeof value !== "string" || value.length === 0) {
    throw new ConfigError(`"${where}${key}" must be a non-empty string, got ${quote(value)}`);
  }
  return value;
}

function oneOf<T extends string>(
  raw: Raw,
  key: string,
  where: string,
  choices: readonly T[],
  dflt: T,
): T {
  const value = raw[key];
  if (value === undefined) return dflt;
  if (typeof value !== "string" || !(choices as readonly string[]).includes(value)) {
    throw new ConfigError(
      `"${where}${key}" must be one of ${choices.join(", ")}, got ${quote(value)}`,
    );
  }
  return value as T;
}

function bool(raw: Raw, key: string, where: string, dflt: boolean): boolean {
  const value = raw[key];
  if (value === undefined) return dflt;
  if (typeof value !== "boolean") {
    throw new ConfigError(`"${where}${key}" must be true or false, got ${quote(value)}`);
  }
  return value;
}

const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const MODEL_KEYS = [
  "name",
  "aliases",
  "task",
  "model",
  "fallback",
  "tokenizer",
  "kernel",
  "pooling",
  "normalize",
  "maxBatch",
  "maxBatchTokens",
  "maxWaitMs",
  "maxLength",
  "buckets",
  "instances",
  "maxQueue",
] as const;

function parseModel(raw: unknown, index: number): ModelConfig {
  const where = `models[${index}].`;
  if (!isObject(raw)) {
    throw new ConfigError(`"models[${index}]" must be an object, got ${quote(raw)}`);
  }
  checkKeys(raw, MODEL_KEYS, where);
  const base = defaultModelConfig();
  const model = str(raw, "model", where, "");
  if (model === "") throw new ConfigError(`"${where}model" is required`);
  const name = str(raw, "name", where, model.split("/").at(-1)!.replace(/\.onnx$/, ""));
  if (!NAME_PATTERN.test(name)) {
    throw new ConfigError(
      `"${where}name" must be 1-128 letters, digits, ".", "_" or "-", got ${quote(name)}`,
    );
  }
  const aliases = raw.aliases ?? [];
  if (!Array.isArray(aliases) || aliases.some((a) => typeof a !== "string" || a === "")) {
    throw new ConfigError(`"${where}aliases" must be a list of strings, got ${quote(aliases)}`);
  }
  const maxLength = int(raw, "maxLength", where, 2, 8192, base.maxLength);
  const buckets = parseBuckets(raw.buckets, where, maxLength);
  const maxBatch = int(raw, "maxBatch", where, 1, 1024, base.maxBatch);
  const fallback = raw.fallback === null ? null : str(raw, "fallback", where, "") || null;
  const tokenizer = raw.tokenizer === null ? null : str(raw, "tokenizer", where, "") || null;
  return {
    name,
    aliases: aliases as string[],
    task: oneOf(raw, "task", where, SERVE_TASKS, "feature-extraction"),
    model,
    fallback,
    tokenizer,
    kernel: oneOf(raw, "kernel", where, KERNEL_CHOICES, "auto"),
    pooling: raw.pooling === undefined || raw.pooling === null
      ? null
      : oneOf(raw, "pooling", where, POOLING_MODES, "mean"),
    normalize: raw.normalize === undefined || raw.normalize === null
      ? null
      : bool(raw, "normalize", where, true),
    maxBatch,
    maxBatchTokens: batchTokens(raw, where, maxBatch, maxLength),
    maxWaitMs: int(raw, "maxWaitMs", where, 0, 10_000, base.maxWaitMs),
    maxLength,
    buckets,
    instances: int(raw, "instances", where, 1, 64, base.instances),
    maxQueue: int(raw, "maxQueue", where, 1, 1_000_000, base.maxQueue),
  };
}

/** `maxBatchTokens`: refused when one input of `maxLength` tokens could never fit a batch. */
function batchTokens(raw: Raw, where: string, maxBatch: number, maxLength: number): number {
  const tokens = int(raw, "maxBatchTokens", where, 1, 1 << 24, maxBatch * maxLength);
  if (tokens < maxLength) {
    throw new ConfigError(
      `"${where}maxBatchTokens" is ${tokens}, less than maxLength ${maxLength}: an input of ` +
        `${maxLength} tokens could never be batched; raise it or lower maxLength`,
    );
  }
  return tokens;
}

function parseBuckets(raw: unknown, where: string, maxLength: number): number[] {
  if (raw === undefined) {
    const list = DEFAULT_BUCKETS.filter((b) => b < maxLength);
    return [...list, maxLength];
  }
  if (
    !Array.isArray(raw) || raw.length === 0 ||
    raw.some((b) => typeof b !== "number" || !Number.isSafeInteger(b) || b < 1)
  ) {
    throw new ConfigError(
      `"${where}buckets" must be a non-empty list of positive integers, got ${quote(raw)}`,
    );
  }
  const sorted = [...new Set(raw as number[])].sort((a, b) => a - b);
  if (sorted.at(-1)! > maxLength) {
    throw new ConfigError(
      `"${where}buckets" has ${sorted.at(-1)}, over maxLength ${maxLength}`,
    );
  }
  if (sorted.at(-1)! < maxLength) sorted.push(maxLength);
  return sorted;
}

const LIMIT_KEYS = Object.keys(DEFAULT_LIMITS);
const TOP_KEYS = [
  "host",
  "port",
  "threads",
  "limits",
  "retryAfterS",
  "shutdownTimeoutMs",
  "log",
  "autoTruncate",
  "models",
];

const LOOPBACK = /^(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|::1|\[::1\])$/;

/**
 * Validates a parsed configuration object and fills in defaults.
 *
 * @throws ConfigError naming the offending key and quoting its value.
 */
export function parseConfig(raw: unknown): ServeConfig {
  if (!isObject(raw)) {
    throw new ConfigError(`The configuration must be an object, got ${quote(raw)}`);
  }
  checkKeys(raw, TOP_KEYS, "");
  const base = defaultConfig();
  const limitsRaw = raw.limits ?? {};
  if (!isObject(limitsRaw)) {
    throw new ConfigError(`"limits" must be an object, got ${quote(limitsRaw)}`);
  }
  checkKeys(limitsRaw, LIMIT_KEYS, "limits.");
  const d = DEFAULT_LIMITS;
  const limits: LimitsConfig = {
    maxBodyBytes: int(limitsRaw, "maxBodyBytes", "limits.", 1024, 1 << 30, d.maxBodyBytes),
    maxInputs: int(limitsRaw, "maxInputs", "limits.", 1, 100_000, d.maxInputs),
    maxTextChars: int(limitsRaw, "maxTextChars", "limits.", 1, 1 << 26, d.maxTextChars),
    queueTimeoutMs: int(limitsRaw, "queueTimeoutMs", "limits.", 1, 3_600_000, d.queueTimeoutMs),
    bodyTimeoutMs: int(limitsRaw, "bodyTimeoutMs", "limits.", 1, 3_600_000, d.bodyTimeoutMs),
    maxConcurrentRequests: int(
      limitsRaw,
      "maxConcurrentRequests",
      "limits.",
      1,
      1_000_000,
      d.maxConcurrentRequests,
    ),
  };
  const modelsRaw = raw.models;
  let models: ModelConfig[];
  if (modelsRaw === undefined) {
    models = base.models;
  } else if (!Array.isArray(modelsRaw) || modelsRaw.length === 0) {
    throw new ConfigError(`"models" must be a non-empty list, got ${quote(modelsRaw)}`);
  } else {
    models = modelsRaw.map(parseModel);
  }
  const seen = new Map<string, number>();
  models.forEach((m, i) => {
    for (const name of [m.name, ...m.aliases]) {
      const other = seen.get(name);
      if (other !== undefined) {
        throw new ConfigError(
          `"models[${i}]" uses the name "${name}", already used by "models[${other}]"`,
        );
      }
      seen.set(name, i);
    }
  });
  const config: ServeConfig = {
    host: str(raw, "host", "", base.host),
    port: int(raw, "port", "", 0, 65535, base.port),
    threads: int(raw, "threads", "", 0, 64, base.threads),
    limits,
    retryAfterS: int(raw, "retryAfterS", "", 1, 3600, base.retryAfterS),
    shutdownTimeoutMs: int(raw, "shutdownTimeoutMs", "", 0, 600_000, base.shutdownTimeoutMs),
    log: bool(raw, "log", "", base.log),
    autoTruncate: bool(raw, "autoTruncate", "", base.autoTruncate),
    models,
  };
  return config;
}

/** Whether `host` is a loopback address (the server warns when it listens elsewhere). */
export function isLoopback(host: string): boolean {
  return LOOPBACK.test(host);
}

/**
 * Resolves a relative file path of a configuration file against the file's folder. Registry
 * names (no `/`, no file extension) are left alone.
 */
function relativeTo(dir: string, value: string, isFile = false): string {
  if (value.startsWith("/")) return value;
  const looksLikePath = isFile || value.includes("/") || /\.(onnx|safetensors|json)$/.test(value);
  return looksLikePath ? `${dir}/${value.replace(/^\.\//, "")}` : value;
}

/**
 * Reads a configuration file: `.json`, or `.yaml`/`.yml`. Relative model and tokenizer paths
 * are taken relative to the file's folder.
 *
 * @throws ConfigError naming the file when it cannot be read, parsed or validated.
 */
export async function loadConfigFile(path: string): Promise<ServeConfig> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    throw new ConfigError(`Cannot read configuration "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  let raw: unknown;
  try {
    raw = /\.ya?ml$/i.test(path) ? YAML.parse(text) : JSON.parse(text);
  } catch (err) {
    throw new ConfigError(`Cannot parse configuration "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
  try {
    const config = parseConfig(raw);
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) || "/" : ".";
    for (const model of config.models) {
      model.model = relativeTo(dir, model.model);
      if (model.fallback !== null) model.fallback = relativeTo(dir, model.fallback);
      if (model.tokenizer !== null) model.tokenizer = relativeTo(dir, model.tokenizer, true);
    }
    return config;
  } catch (err) {
    throw new ConfigError(`Invalid configuration "${path}": ${(err as Error).message}`, {
      cause: err,
    });
  }
}

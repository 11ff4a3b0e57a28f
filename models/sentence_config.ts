/**
 * What an embedding is, as a model defines it: the sentence-transformers files next to the
 * weights (`modules.json`, `1_Pooling/config.json`, `Normalize`, `sentence_bert_config.json`,
 * `config_sentence_transformers.json`). Their ONNX exports cover only the Transformer, so pooling
 * and normalisation are the runtime's job; the pipeline, the CLI and the server use what is read
 * here unless the caller says otherwise.
 *
 * @module
 */
import type { PoolingMode } from "../ops/pooling.ts";

/** A pooling mode of sentence-transformers' `Pooling` module: the op's own modes. */
export type SentencePooling = PoolingMode;

/** How a model turns token vectors into one embedding. */
export interface EmbeddingDefinition {
  /** The pooling mode. */
  pooling: SentencePooling;
  /** Whether a `Normalize` module follows (unit-length embeddings). */
  normalize: boolean;
  /** `sentence_bert_config.json` `max_seq_length`, when given. */
  maxSeqLength?: number;
  /** `sentence_bert_config.json` `do_lower_case`, when given. */
  doLowerCase?: boolean;
  /** `config_sentence_transformers.json` `prompts`, when given. */
  prompts?: Record<string, string>;
  /** `config_sentence_transformers.json` `default_prompt_name`, when given. */
  defaultPromptName?: string | null;
  /** `1_Pooling/config.json` `include_prompt` (default true). */
  includePrompt?: boolean;
  /** Where this definition came from (a folder, or "registry"). */
  source: string;
}

/** A sentence-transformers layout that cannot be run as it is declared. */
export class SentenceConfigError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "SentenceConfigError";
  }
}

const POOLING_FLAGS: [string, SentencePooling][] = [
  ["pooling_mode_cls_token", "cls"],
  ["pooling_mode_mean_tokens", "mean"],
  ["pooling_mode_max_tokens", "max"],
  ["pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len"],
  ["pooling_mode_weightedmean_tokens", "weightedmean"],
  ["pooling_mode_lasttoken", "lasttoken"],
];

async function readJson(path: string): Promise<Record<string, unknown> | null> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
  try {
    const value = JSON.parse(text);
    if (value === null || typeof value !== "object") throw new SyntaxError("not an object");
    return value as Record<string, unknown>;
  } catch (err) {
    throw new SentenceConfigError(`"${path}" is not valid JSON: ${(err as Error).message}`);
  }
}

/** The pooling mode of a `1_Pooling/config.json` object; exactly one mode must be set. */
export function poolingFromConfig(config: Record<string, unknown>, where: string): SentencePooling {
  const modes = POOLING_FLAGS.filter(([flag]) => config[flag] === true).map(([, mode]) => mode);
  if (modes.length !== 1) {
    throw new SentenceConfigError(
      `${where} sets ${modes.length === 0 ? "no" : modes.join(" + ")} pooling mode; ` +
        "sparsebert runs exactly one (cls, mean, ...)",
    );
  }
  return modes[0];
}

interface ModuleEntry {
  path?: string;
  type?: string;
}

/**
 * Reads the sentence-transformers definition in `dir`, or null when the folder has neither a
 * `modules.json` nor a `1_Pooling/config.json`.
 *
 * @throws SentenceConfigError for a malformed file, several pooling modes, or a module the
 *   runtime cannot run yet (`Dense`), naming the file.
 */
export async function readSentenceConfig(dir: string): Promise<EmbeddingDefinition | null> {
  const modulesPath = `${dir}/modules.json`;
  let modules: ModuleEntry[] | null = null;
  try {
    const text = await Deno.readTextFile(modulesPath);
    const parsed = JSON.parse(text);
    if (!Array.isArray(parsed)) throw new SyntaxError("not an array");
    modules = parsed as ModuleEntry[];
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) {
      throw new SentenceConfigError(`"${modulesPath}" is not valid: ${(err as Error).message}`);
    }
  }
  const typeOf = (m: ModuleEntry): string => String(m.type ?? "").split(".").at(-1) ?? "";
  const poolingPath = modules?.find((m) => typeOf(m) === "Pooling")?.path ?? "1_Pooling";
  const poolingFile = `${dir}/${poolingPath}/config.json`;
  const poolingConfig = await readJson(poolingFile);
  if (modules === null && poolingConfig === null) return null;
  if (poolingConfig === null) {
    throw new SentenceConfigError(
      `${modulesPath} names a Pooling module but ${poolingFile} is missing`,
    );
  }
  for (const m of modules ?? []) {
    const type = typeOf(m);
    if (!["Transformer", "Pooling", "Normalize"].includes(type)) {
      throw new SentenceConfigError(
        `${modulesPath} has a ${type || "nameless"} module ("${m.path ?? ""}"); sparsebert runs ` +
          "Transformer, Pooling and Normalize modules only",
      );
    }
  }
  const definition: EmbeddingDefinition = {
    pooling: poolingFromConfig(poolingConfig, poolingFile),
    normalize: (modules ?? []).some((m) => typeOf(m) === "Normalize"),
    source: dir,
  };
  if (typeof poolingConfig.include_prompt === "boolean") {
    definition.includePrompt = poolingConfig.include_prompt;
  }
  const bert = await readJson(`${dir}/sentence_bert_config.json`);
  if (typeof bert?.max_seq_length === "number") definition.maxSeqLength = bert.max_seq_length;
  if (typeof bert?.do_lower_case === "boolean") definition.doLowerCase = bert.do_lower_case;
  const st = await readJson(`${dir}/config_sentence_transformers.json`);
  if (st?.prompts !== undefined && typeof st.prompts === "object" && st.prompts !== null) {
    definition.prompts = st.prompts as Record<string, string>;
  }
  if (st !== null && "default_prompt_name" in st) {
    definition.defaultPromptName = st.default_prompt_name as string | null;
  }
  return definition;
}

/**
 * Writes `definition` as sentence-transformers files into `dir` (`modules.json`,
 * `1_Pooling/config.json`), so a model written there (pruned, quantized, compiled) keeps the
 * embedding its source declared. Files already there are left alone.
 */
export async function writeSentenceConfig(
  dir: string,
  definition: Pick<EmbeddingDefinition, "pooling" | "normalize">,
  hiddenSize: number,
): Promise<void> {
  if (await readSentenceConfig(dir) !== null) return;
  const modules = [
    { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
    { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
  ];
  if (definition.normalize) {
    modules.push({
      idx: 2,
      name: "2",
      path: "2_Normalize",
      type: "sentence_transformers.models.Normalize",
    });
  }
  const pooling: Record<string, unknown> = { word_embedding_dimension: hiddenSize };
  for (const [flag, mode] of POOLING_FLAGS) pooling[flag] = mode === definition.pooling;
  await Deno.mkdir(`${dir}/1_Pooling`, { recursive: true });
  await Deno.writeTextFile(`${dir}/1_Pooling/config.json`, JSON.stringify(pooling, null, 2) + "\n");
  await Deno.writeTextFile(`${dir}/modules.json`, JSON.stringify(modules, null, 2) + "\n");
}

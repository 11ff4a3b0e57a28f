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
import { readSafetensors, type Safetensors, safeTensorToFloat32 } from "./safetensors.ts";

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
  /** `Dense` modules after the pooling, in order (their weights loaded). */
  dense?: DenseLayer[];
  /** Where this definition came from (a folder, or "registry"). */
  source: string;
}

/** A sentence-transformers `Dense` module: y = activation(W x + b). */
export interface DenseLayer {
  /** Input width. */
  in: number;
  /** Output width. */
  out: number;
  /** `[out, in]` row-major. */
  weight: Float32Array;
  /** `[out]`, or null without bias. */
  bias: Float32Array | null;
  /** The activation after the linear map. */
  activation: "tanh" | "identity";
}

/** The prompt fields of a declaration (the server's workers pass on a copy of them). */
export type PromptDeclaration = Partial<
  Pick<EmbeddingDefinition, "prompts" | "defaultPromptName" | "doLowerCase" | "includePrompt">
>;

/** A prompt the model does not declare. */
export class PromptError extends Error {
  /** Creates the error. */
  constructor(message: string) {
    super(message);
    this.name = "PromptError";
  }
}

/**
 * The prompt text `name` selects; without a name the model's default prompt; else "".
 *
 * @throws PromptError for a name the model does not declare (TEI's wording, with the list).
 */
export function resolvePrompt(
  declared: PromptDeclaration | null,
  name: string | null | undefined,
): string {
  const chosen = name ?? declared?.defaultPromptName ?? null;
  if (chosen === null) return "";
  const prompts = declared?.prompts ?? {};
  if (Object.keys(prompts).length === 0) {
    throw new PromptError(
      `Prompt ${JSON.stringify(chosen)} was asked for, but the model has no prompts configured`,
    );
  }
  if (!Object.hasOwn(prompts, chosen)) {
    const available = Object.keys(prompts).map((p) => JSON.stringify(p)).join(", ");
    throw new PromptError(
      `Prompt name ${
        JSON.stringify(chosen)
      } not found in the configuration. Available prompts: [${available}]`,
    );
  }
  return prompts[chosen];
}

/**
 * Texts as the model declares them: `prompt` first, lower-cased under do_lower_case; and how
 * many leading tokens pooling leaves out: [CLS] and the prompt's (not [SEP]) when the model
 * pools without its prompt (include_prompt false), as sentence-transformers does; else 0.
 */
export function applyPrompt(
  declared: PromptDeclaration | null,
  prompt: string,
  texts: readonly string[],
  tokenizer: { encode(text: string): { ids: number[] } },
): { texts: string[]; excluded: number } {
  const lower = declared?.doLowerCase === true;
  const cased = (t: string): string => (lower ? t.toLowerCase() : t);
  const excluded = declared?.includePrompt === false && prompt !== ""
    ? tokenizer.encode(cased(prompt)).ids.length - 1
    : 0;
  return { texts: texts.map((t) => cased(prompt + t)), excluded };
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

/** sentence-transformers 5+ names the mode in one `pooling_mode` string. */
const POOLING_NAMES: Record<string, SentencePooling> = {
  cls: "cls",
  mean: "mean",
  max: "max",
  mean_sqrt_len: "mean_sqrt_len",
  mean_sqrt_len_tokens: "mean_sqrt_len",
  weightedmean: "weightedmean",
  lasttoken: "lasttoken",
};

/**
 * The pooling mode of a `1_Pooling/config.json` object: its `pooling_mode` string, or exactly
 * one of the older `pooling_mode_*` flags.
 */
export function poolingFromConfig(config: Record<string, unknown>, where: string): SentencePooling {
  if (typeof config.pooling_mode === "string") {
    const mode = POOLING_NAMES[config.pooling_mode];
    if (mode === undefined) {
      throw new SentenceConfigError(
        `${where} has pooling_mode "${config.pooling_mode}"; sparsebert runs ${
          Object.keys(POOLING_NAMES).join(", ")
        }`,
      );
    }
    return mode;
  }
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
  const dense: DenseLayer[] = [];
  let width = typeof poolingConfig.word_embedding_dimension === "number"
    ? poolingConfig.word_embedding_dimension
    : typeof poolingConfig.embedding_dimension === "number"
    ? poolingConfig.embedding_dimension
    : null;
  for (const m of modules ?? []) {
    const type = typeOf(m);
    if (type === "Dense") {
      const layer = await readDense(`${dir}/${m.path ?? ""}`);
      if (width !== null && layer.in !== width) {
        throw new SentenceConfigError(
          `${dir}/${m.path}: Dense takes ${layer.in} features, but the module before it gives ${width}`,
        );
      }
      width = layer.out;
      dense.push(layer);
    } else if (!["Transformer", "Pooling", "Normalize"].includes(type)) {
      throw new SentenceConfigError(
        `${modulesPath} has a ${type || "nameless"} module ("${m.path ?? ""}"); sparsebert runs ` +
          "Transformer, Pooling, Dense and Normalize modules only",
      );
    }
  }
  const definition: EmbeddingDefinition = {
    pooling: poolingFromConfig(poolingConfig, poolingFile),
    normalize: (modules ?? []).some((m) => typeOf(m) === "Normalize"),
    source: dir,
  };
  if (dense.length > 0) definition.dense = dense;
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

const ACTIVATIONS: Record<string, DenseLayer["activation"]> = {
  "torch.nn.modules.activation.Tanh": "tanh",
  "torch.nn.modules.linear.Identity": "identity",
};

/** A `Dense` module folder: `config.json` and `model.safetensors` (`linear.weight`, `.bias`). */
async function readDense(dir: string): Promise<DenseLayer> {
  const config = await readJson(`${dir}/config.json`);
  if (config === null) throw new SentenceConfigError(`${dir}/config.json is missing`);
  const [inF, outF] = [config.in_features, config.out_features];
  if (
    !Number.isInteger(inF) || !Number.isInteger(outF) || (inF as number) < 1 || (outF as number) < 1
  ) {
    throw new SentenceConfigError(`${dir}/config.json needs positive in_features and out_features`);
  }
  const activationName = String(config.activation_function ?? "torch.nn.modules.linear.Identity");
  const activation = ACTIVATIONS[activationName];
  if (activation === undefined) {
    throw new SentenceConfigError(
      `${dir}/config.json has activation "${activationName}"; sparsebert runs ${
        Object.keys(ACTIVATIONS).join(", ")
      }`,
    );
  }
  let file: Safetensors;
  try {
    file = await readSafetensors(`${dir}/model.safetensors`);
  } catch (err) {
    throw new SentenceConfigError(
      `Cannot read the Dense weights ${dir}/model.safetensors (pytorch_model.bin is not read; ` +
        `save the model with safetensors): ${(err as Error).message}`,
    );
  }
  const tensor = (name: string, shape: number[]): Float32Array | null => {
    const t = file.tensors.get(name);
    if (t === undefined) return null;
    if (JSON.stringify(t.shape) !== JSON.stringify(shape)) {
      throw new SentenceConfigError(
        `${dir}/model.safetensors: ${name} has shape [${t.shape}], expected [${shape}]`,
      );
    }
    return safeTensorToFloat32(t);
  };
  const weight = tensor("linear.weight", [outF as number, inF as number]);
  if (weight === null) {
    throw new SentenceConfigError(`${dir}/model.safetensors has no linear.weight`);
  }
  const bias = tensor("linear.bias", [outF as number]);
  if (config.bias !== false && bias === null) {
    throw new SentenceConfigError(`${dir}/model.safetensors has no linear.bias`);
  }
  return { in: inF as number, out: outF as number, weight, bias, activation };
}

/**
 * Gives `dir` the sentence-transformers files of `definition`, so a model written there
 * (pruned, quantized, compiled) keeps the embedding its source declared: a source folder's
 * own files are copied (modules.json, every module folder, sentence_bert_config.json,
 * config_sentence_transformers.json); a registry declaration is written as `modules.json` and
 * `1_Pooling/config.json`. A folder that already declares one is left alone.
 */
export async function writeSentenceConfig(
  dir: string,
  definition: EmbeddingDefinition,
  hiddenSize: number,
): Promise<void> {
  if (await readSentenceConfig(dir) !== null) return;
  if (definition.source !== "registry") {
    await copySentenceFiles(definition.source, dir);
    return;
  }
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

async function copySentenceFiles(from: string, to: string): Promise<void> {
  const modules = JSON.parse(await Deno.readTextFile(`${from}/modules.json`)) as ModuleEntry[];
  const folders = modules.map((m) => m.path ?? "").filter((path) => path !== "");
  for (const folder of folders) {
    await Deno.mkdir(`${to}/${folder}`, { recursive: true });
    for await (const entry of Deno.readDir(`${from}/${folder}`)) {
      if (entry.isFile) {
        await Deno.copyFile(`${from}/${folder}/${entry.name}`, `${to}/${folder}/${entry.name}`);
      }
    }
  }
  for (
    const file of ["modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"]
  ) {
    try {
      await Deno.copyFile(`${from}/${file}`, `${to}/${file}`);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
}

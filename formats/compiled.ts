/**
 * Compiled model files (`.sbert`): an encoder's linear layers saved in the packed form of the
 * kernels chosen for them, next to the fp32 embeddings, norms and heads and the tokenizer, so a
 * later load reads the file and runs with no import, quantization or repacking.
 *
 * ```ts
 * import { compileModel, loadCompiled } from "./compiled.ts";
 * await compileModel(weights, "model.sbert", { kernels: { precision: "int8" } });
 * const model = await loadCompiled("model.sbert");
 * using encoder = new BertEncoder(model.weights, { linear: model.linear, fuseQkv: model.fuseQkv });
 * ```
 *
 * Layout (little endian), every section 64-byte aligned:
 *
 * | bytes | content |
 * | --- | --- |
 * | 0..8 | magic `SBERTMDL` |
 * | 8..12 | format version (u32, {@linkcode COMPILED_FORMAT_VERSION}) |
 * | 12..16 | kernel ABI version (u32) the packed bytes were made for |
 * | 16..24 | JSON header bytes (u64) |
 * | 24..32 | data start (u64): 128 + JSON header rounded up to 64 |
 * | 32..40 | file bytes (u64) |
 * | 40..72 | SHA-256 of the JSON header |
 * | 128.. | JSON header: ISA variant, config, section table, linear table, kernel decisions, SHA-256 of the data |
 * | data | the plain region (fp32 tensors, tokenizer files), then the packed region (linear weights) |
 *
 * Loading reads the plain region with one read into JavaScript memory, maps the file into memory
 * (private, copy-on-write) and builds the `ops/*` linear ops over slices of the packed
 * region where it lies in the map: no read, copy or repacking of the packed weights, whose pages
 * come from the page cache as the kernels first touch them. The fixed header and the JSON header are always checked (magic, versions, size,
 * header hash, ISA); hashing the data is on demand (`verify: true`) because it costs as much as
 * reading the file again (see docs/BENCHMARKS.md and the issue note for the figures). Neither hash
 * proves anything about a crafted file, so each packed weight's header, index tables and shape are
 * checked in Zig when its op is built, before any kernel reads it (the index tables are a small
 * part of the packed bytes); a refusal names the layer. A file rewritten while it is mapped is
 * outside what this protects, as for any memory-mapped file.
 *
 * @module
 */
import { createHash } from "node:crypto";
import { kernels } from "../ffi/library.ts";
import { MappedFile } from "../ffi/memory.ts";
import { ABI_VERSION } from "../ffi/symbols.ts";
import type { Activation, KernelKind, LinearOp } from "../ops/linear.ts";
import { SharedRegion } from "../ops/packed.ts";
import type { ActivationQuantization } from "../ops/quantize.ts";
import {
  concatDense,
  HEAD_LAYER,
  type LinearFactory,
  type LinearRole,
  type LinearSpec,
} from "../encoder/bert.ts";
import {
  type KernelChoiceOptions,
  KernelChooser,
  type KernelDecision,
} from "../encoder/kernel_choice.ts";
import type { LoadedModel } from "../hub/loaded_model.ts";
import { buildLinear, linearFromPacked } from "../encoder/linear_kinds.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import type {
  BertConfig,
  BertWeights,
  DenseWeight,
  HeadWeights,
  NormWeight,
} from "../encoder/weights.ts";

/** The file's first 8 bytes. */
export const COMPILED_MAGIC = "SBERTMDL";
/** Format version this module writes and reads. */
export const COMPILED_FORMAT_VERSION = 1;
/** Bytes of the fixed header before the JSON header. */
export const FIXED_HEADER_BYTES = 128;
const ALIGN = 64;
const MAX_JSON_BYTES = 256 << 20;

/** Thrown for a file that is not a compiled model, is damaged, or does not fit this build. */
export class CompiledModelError extends Error {
  /** Creates the error; `name` is `"CompiledModelError"`. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "CompiledModelError";
  }
}

interface Section {
  name: string;
  region: "plain" | "packed";
  offset: number;
  bytes: number;
}

interface LinearEntry {
  layer: number;
  role: LinearRole;
  kind: KernelKind;
  out: number;
  in: number;
  activation: Activation;
  activationQuantization?: ActivationQuantization;
  section: string;
}

interface DenseRef {
  out: number;
  in: number;
  weight: string;
  bias: string;
}

interface NormRef {
  gamma: string;
  beta: string;
  eps: number;
}

/** The JSON header. */
interface Header {
  isa: string;
  config: BertConfig;
  fuseQkv: boolean;
  attentionMaskValue?: number;
  source: { format: string; path: string };
  tokenizer: { json: string; config: string | null; maxLength: number } | null;
  plainBytes: number;
  packedBytes: number;
  dataSha256: string;
  sections: Section[];
  linears: LinearEntry[];
  decisions: KernelDecision[];
  tensors: {
    wordEmbeddings: string;
    positionEmbeddings: string;
    tokenTypeEmbeddings: string | null;
    embeddingNorm: NormRef;
    layers: { attentionNorm: NormRef; outputNorm: NormRef }[];
    pooler: DenseRef | null;
    preClassifier: DenseRef | null;
    head: { kind: HeadWeights["kind"]; labels?: string[]; dense: DenseRef } | null;
  };
}

/** Options of {@linkcode compileModel}. */
export interface CompileOptions {
  /** How the kernels are chosen (see `encoder/kernel_choice.ts`). */
  kernels?: KernelChoiceOptions;
  /** Fuse Q, K and V into one projection (default true, as the encoder does). */
  fuseQkv?: boolean;
  /** tokenizer.json to embed; default the weights' `source.tokenizer`; `null` for none. */
  tokenizer?: string | null;
}

/** What {@linkcode compileModel} wrote. */
export interface CompileResult {
  /** The file written. */
  path: string;
  /** File bytes. */
  bytes: number;
  /** Bytes of packed linear weights. */
  packedBytes: number;
  /** Bytes of fp32 tensors and tokenizer files. */
  plainBytes: number;
  /** The kernel of every linear layer and why. */
  decisions: KernelDecision[];
}

function align(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/**
 * Chooses a kernel per linear layer, packs every layer and writes the compiled file (to a
 * temporary file renamed into place).
 *
 * @throws Error when a tokenizer file cannot be read or the file cannot be written.
 */
export async function compileModel(
  weights: BertWeights,
  path: string,
  options: CompileOptions = {},
): Promise<CompileResult> {
  const fuseQkv = options.fuseQkv ?? true;
  const chooser = new KernelChooser(options.kernels);
  const plain: { name: string; data: Uint8Array }[] = [];
  // The ops the chooser built: their packed bytes are what the file stores.
  const packed: { name: string; op: LinearOp }[] = [];
  const addPlain = (name: string, a: ArrayBufferView): string => {
    plain.push({ name, data: bytesOf(a) });
    return name;
  };
  const dense = (name: string, d: DenseWeight): DenseRef => ({
    out: d.out,
    in: d.in,
    weight: addPlain(`${name}.weight`, d.weight),
    bias: addPlain(`${name}.bias`, d.bias),
  });
  const norm = (name: string, n: NormWeight): NormRef => ({
    gamma: addPlain(`${name}.gamma`, n.gamma),
    beta: addPlain(`${name}.beta`, n.beta),
    eps: n.eps,
  });
  const linears: LinearEntry[] = [];
  try {
    const pack = (weight: DenseWeight, spec: LinearSpec): void => {
      const op = chooser.build(weight, spec);
      const section = `layers.${spec.layer}.${spec.role}`;
      packed.push({ name: section, op });
      const entry: LinearEntry = {
        layer: spec.layer,
        role: spec.role,
        kind: op.kind,
        out: op.outFeatures,
        in: op.inFeatures,
        activation: spec.activation,
        section,
      };
      if ("activationQuantization" in op) {
        entry.activationQuantization = op.activationQuantization as ActivationQuantization;
      }
      linears.push(entry);
    };
    const c = weights.config;
    const layerNorms = weights.layers.map((l, layer) => {
      const fused = fuseQkv ? concatDense([l.query, l.key, l.value]) : null;
      if (fuseQkv && fused === null) {
        throw new Error(`Layer ${layer}: Q, K and V cannot be fused; compile with fuseQkv false`);
      }
      const none = "none" as const;
      if (fused) {
        pack(fused, { layer, role: "qkv", activation: none, parts: [l.query, l.key, l.value] });
      } else {
        pack(l.query, { layer, role: "query", activation: none });
        pack(l.key, { layer, role: "key", activation: none });
        pack(l.value, { layer, role: "value", activation: none });
      }
      pack(l.attentionOutput, { layer, role: "attention-output", activation: none });
      pack(l.intermediate, { layer, role: "intermediate", activation: c.hiddenAct });
      pack(l.output, { layer, role: "output", activation: none });
      return {
        attentionNorm: norm(`layers.${layer}.attentionNorm`, l.attentionNorm),
        outputNorm: norm(`layers.${layer}.outputNorm`, l.outputNorm),
      };
    });
    await chooser.saveCache();
    const tensors: Header["tensors"] = {
      wordEmbeddings: addPlain("wordEmbeddings", weights.wordEmbeddings),
      positionEmbeddings: addPlain("positionEmbeddings", weights.positionEmbeddings),
      tokenTypeEmbeddings: weights.tokenTypeEmbeddings
        ? addPlain("tokenTypeEmbeddings", weights.tokenTypeEmbeddings)
        : null,
      embeddingNorm: norm("embeddingNorm", weights.embeddingNorm),
      layers: layerNorms,
      pooler: weights.pooler ? dense("pooler", weights.pooler) : null,
      preClassifier: weights.preClassifier ? dense("preClassifier", weights.preClassifier) : null,
      head: weights.head
        ? {
          kind: weights.head.kind,
          ...(weights.head.labels ? { labels: weights.head.labels } : {}),
          dense: dense("head.dense", weights.head.dense),
        }
        : null,
    };
    let tokenizer: Header["tokenizer"] = null;
    const tokenizerPath = options.tokenizer === undefined
      ? weights.source.tokenizer
      : options.tokenizer;
    if (tokenizerPath) {
      const json = await readOptional(tokenizerPath, true);
      const dir = tokenizerPath.includes("/")
        ? tokenizerPath.slice(0, tokenizerPath.lastIndexOf("/"))
        : ".";
      const config = await readOptional(`${dir}/tokenizer_config.json`, false);
      const probe = new BertTokenizer(
        JSON.parse(new TextDecoder().decode(json!)),
        config ? JSON.parse(new TextDecoder().decode(config)) : {},
        {},
        tokenizerPath,
      );
      tokenizer = {
        json: addPlain("tokenizer.json", json!),
        config: config ? addPlain("tokenizer_config.json", config) : null,
        maxLength: probe.maxLength,
      };
    }
    // Section table and the data hash (padding included, so the hash covers every byte).
    const sections: Section[] = [];
    const hash = createHash("sha256");
    const zeros = new Uint8Array(ALIGN);
    let plainBytes = 0;
    for (const p of plain) {
      sections.push({ name: p.name, region: "plain", offset: plainBytes, bytes: p.data.length });
      hash.update(p.data);
      const padded = align(p.data.length);
      hash.update(zeros.subarray(0, padded - p.data.length));
      plainBytes += padded;
    }
    let packedBytes = 0;
    for (const p of packed) {
      const bytes = p.op.packedBytes;
      sections.push({ name: p.name, region: "packed", offset: packedBytes, bytes });
      hash.update(p.op.packedData());
      const padded = align(bytes);
      hash.update(zeros.subarray(0, padded - bytes));
      packedBytes += padded;
    }
    const header: Header = {
      isa: kernels().isa,
      config: { ...c },
      fuseQkv,
      ...(weights.attentionMaskValue !== undefined
        ? { attentionMaskValue: weights.attentionMaskValue }
        : {}),
      source: { format: weights.source.format, path: weights.source.path },
      tokenizer,
      plainBytes,
      packedBytes,
      dataSha256: hash.digest("hex"),
      sections,
      linears,
      decisions: chooser.decisions,
      tensors,
    };
    const json = new TextEncoder().encode(JSON.stringify(header));
    const dataStart = FIXED_HEADER_BYTES + align(json.length);
    const fileBytes = dataStart + plainBytes + packedBytes;
    const fixed = new Uint8Array(FIXED_HEADER_BYTES);
    const view = new DataView(fixed.buffer);
    fixed.set(new TextEncoder().encode(COMPILED_MAGIC), 0);
    view.setUint32(8, COMPILED_FORMAT_VERSION, true);
    view.setUint32(12, ABI_VERSION, true);
    view.setBigUint64(16, BigInt(json.length), true);
    view.setBigUint64(24, BigInt(dataStart), true);
    view.setBigUint64(32, BigInt(fileBytes), true);
    fixed.set(createHash("sha256").update(json).digest(), 40);
    const tmp = `${path}.${Deno.pid}.tmp`;
    const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
    try {
      const write = async (data: Uint8Array): Promise<void> => {
        for (let done = 0; done < data.length;) {
          done += await file.write(data.subarray(done));
        }
      };
      await write(fixed);
      await write(json);
      await write(new Uint8Array(dataStart - FIXED_HEADER_BYTES - json.length));
      for (const p of plain) {
        await write(p.data);
        await write(zeros.subarray(0, align(p.data.length) - p.data.length));
      }
      for (const p of packed) {
        await write(p.op.packedData());
        await write(zeros.subarray(0, align(p.op.packedBytes) - p.op.packedBytes));
      }
    } finally {
      file.close();
    }
    await Deno.rename(tmp, path);
    return { path, bytes: fileBytes, packedBytes, plainBytes, decisions: chooser.decisions };
  } finally {
    for (const p of packed) p.op[Symbol.dispose]();
  }
}

async function readOptional(path: string, required: boolean): Promise<Uint8Array | null> {
  try {
    return await Deno.readFile(path);
  } catch (error) {
    if (!required && error instanceof Deno.errors.NotFound) return null;
    throw new Error(`Cannot read tokenizer file "${path}": ${(error as Error).message}`, {
      cause: error,
    });
  }
}

/** Options of {@linkcode loadCompiled}. */
export interface LoadCompiledOptions {
  /** Hash every byte of the data and compare with the header (default false; see the note). */
  verify?: boolean;
  /** Longest tokenized input; default the tokenizer's limit capped by the position table. */
  maxLength?: number;
}

/** A loaded compiled model: a {@linkcode LoadedModel} with its packed linear layers. */
export interface CompiledModel extends LoadedModel {
  /** Builds the encoder's linear layers from the packed bytes. */
  linear: LinearFactory;
  /** Whether the file holds fused Q/K/V (the encoder must be built the same way). */
  fuseQkv: boolean;
  /** The kernel of every linear layer and why, as decided at compile time. */
  kernelDecisions: KernelDecision[];
  /** Bytes of packed linear weights held in native memory. */
  packedBytes: number;
  /** Releases the model's hold on the packed weights (encoders built from it keep theirs). */
  [Symbol.dispose](): void;
}

/** Whether `path` starts with the compiled-model magic. */
export async function isCompiledModel(path: string): Promise<boolean> {
  const file = await Deno.open(path, { read: true });
  try {
    const head = new Uint8Array(8);
    const n = await readFully(file, head);
    return n === 8 && new TextDecoder().decode(head) === COMPILED_MAGIC;
  } finally {
    file.close();
  }
}

async function readFully(file: Deno.FsFile, into: Uint8Array): Promise<number> {
  let done = 0;
  while (done < into.length) {
    const n = await file.read(into.subarray(done));
    if (n === null) break;
    done += n;
  }
  return done;
}

/**
 * Loads a compiled model file: checks its headers, reads the fp32 tensors (one read), maps the
 * packed weights into memory and returns the weights, tokenizer and a linear factory over them.
 *
 * @throws CompiledModelError on a foreign, truncated or corrupt file, a format or ABI version
 *   this build does not read, or packed bytes made for another ISA variant.
 */
export async function loadCompiled(
  path: string,
  options: LoadCompiledOptions = {},
): Promise<CompiledModel> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { read: true });
  } catch (error) {
    throw new CompiledModelError(
      `Cannot open compiled model "${path}": ${(error as Error).message}`,
      {
        cause: error,
      },
    );
  }
  let region: SharedRegion | null = null;
  try {
    const size = (await file.stat()).size;
    const fixed = new Uint8Array(FIXED_HEADER_BYTES);
    const got = await readFully(file, fixed);
    const magic = new TextDecoder().decode(fixed.subarray(0, 8));
    if (got < 8 || magic !== COMPILED_MAGIC) {
      throw new CompiledModelError(
        `"${path}" is not a sparsebert compiled model (magic ${
          JSON.stringify(magic)
        }, expected "${COMPILED_MAGIC}")`,
      );
    }
    if (got < FIXED_HEADER_BYTES) {
      throw new CompiledModelError(
        `Compiled model "${path}" is truncated: ${size} bytes, shorter than its ${FIXED_HEADER_BYTES}-byte header`,
      );
    }
    const view = new DataView(fixed.buffer);
    const version = view.getUint32(8, true);
    if (version !== COMPILED_FORMAT_VERSION) {
      throw new CompiledModelError(
        `Compiled model "${path}" has format version ${version}; this build reads version ${COMPILED_FORMAT_VERSION}. Recompile it with \`deno task cli compile\``,
      );
    }
    const abi = view.getUint32(12, true);
    if (abi !== ABI_VERSION) {
      throw new CompiledModelError(
        `Compiled model "${path}" was packed for kernel ABI version ${abi}; the loaded kernels have ABI ${ABI_VERSION}. Recompile it with \`deno task cli compile\``,
      );
    }
    const jsonBytes = Number(view.getBigUint64(16, true));
    const dataStart = Number(view.getBigUint64(24, true));
    const fileBytes = Number(view.getBigUint64(32, true));
    if (size < fileBytes) {
      throw new CompiledModelError(
        `Compiled model "${path}" is truncated: ${size} bytes, its header says ${fileBytes}`,
      );
    }
    if (
      size !== fileBytes || jsonBytes > MAX_JSON_BYTES ||
      dataStart !== FIXED_HEADER_BYTES + align(jsonBytes)
    ) {
      throw new CompiledModelError(
        `Compiled model "${path}" is corrupt: header sizes (JSON ${jsonBytes}, data at ${dataStart}, file ${fileBytes}) do not match the file (${size} bytes)`,
      );
    }
    const json = new Uint8Array(jsonBytes);
    if (await readFully(file, json) !== jsonBytes) {
      throw new CompiledModelError(`Compiled model "${path}" is truncated inside its header`);
    }
    const digest = createHash("sha256").update(json).digest();
    if (!digest.equals(fixed.subarray(40, 72))) {
      throw new CompiledModelError(`Compiled model "${path}" is corrupt: header checksum mismatch`);
    }
    const header = JSON.parse(new TextDecoder().decode(json)) as Header;
    const isa = kernels().isa;
    if (header.isa !== isa) {
      throw new CompiledModelError(
        `Compiled model "${path}" was packed for the "${header.isa}" kernels; this process runs "${isa}". Recompile it here, or set SPARSEBERT_ISA=${header.isa} if this CPU supports it`,
      );
    }
    if (dataStart + header.plainBytes + header.packedBytes !== fileBytes) {
      throw new CompiledModelError(
        `Compiled model "${path}" is corrupt: region sizes do not add up`,
      );
    }
    await file.seek(dataStart, Deno.SeekMode.Start);
    const plain = new Uint8Array(header.plainBytes);
    if (await readFully(file, plain) !== plain.length) {
      throw new CompiledModelError(`Compiled model "${path}" is truncated in its data`);
    }
    // The packed weights are used where they lie in the file: a memory map, no read, no copy.
    const packedStart = dataStart + header.plainBytes;
    if (packedStart % ALIGN !== 0) {
      throw new CompiledModelError(
        `Compiled model "${path}" is corrupt: packed weights at byte ${packedStart}, not 64-byte aligned`,
      );
    }
    region = new SharedRegion(new MappedFile(path, fileBytes), packedStart, header.packedBytes);
    const packed = region.u8();
    if (options.verify) {
      const hex = createHash("sha256").update(plain).update(packed).digest("hex");
      if (hex !== header.dataSha256) {
        throw new CompiledModelError(`Compiled model "${path}" is corrupt: data checksum mismatch`);
      }
    }
    const model = buildModel(path, header, plain, region, options);
    region = null;
    return model;
  } catch (error) {
    region?.[Symbol.dispose]();
    if (error instanceof CompiledModelError) throw error;
    throw new CompiledModelError(
      `Cannot load compiled model "${path}": ${(error as Error).message}`,
      { cause: error },
    );
  } finally {
    file.close();
  }
}

function buildModel(
  path: string,
  header: Header,
  plain: Uint8Array,
  region: SharedRegion,
  options: LoadCompiledOptions,
): CompiledModel {
  const byName = new Map(header.sections.map((s) => [s.name, s]));
  const section = (name: string, region: "plain" | "packed"): Section => {
    const s = byName.get(name);
    const limit = region === "plain" ? header.plainBytes : header.packedBytes;
    if (
      s === undefined || s.region !== region || s.offset % ALIGN !== 0 ||
      s.offset + s.bytes > limit
    ) {
      throw new CompiledModelError(`Compiled model "${path}" is corrupt: bad section "${name}"`);
    }
    return s;
  };
  const f32 = (name: string): Float32Array => {
    const s = section(name, "plain");
    return new Float32Array(plain.buffer, plain.byteOffset + s.offset, s.bytes / 4);
  };
  const bytes = (name: string): Uint8Array => {
    const s = section(name, "plain");
    return plain.subarray(s.offset, s.offset + s.bytes);
  };
  const norm = (n: NormRef): NormWeight => ({ gamma: f32(n.gamma), beta: f32(n.beta), eps: n.eps });
  const dense = (d: DenseRef | null): DenseWeight | null =>
    d ? { out: d.out, in: d.in, weight: f32(d.weight), bias: f32(d.bias) } : null;
  const c = header.config;
  // The encoder checks linear weight shapes; the packed layers need no fp32 values, so every
  // placeholder is a view of one shared zero array (never written, so never made resident).
  const largest = Math.max(
    ...header.linears.map((l) => l.out * l.in),
    c.hiddenSize * c.intermediateSize,
  );
  const zeros = new Float32Array(largest);
  const placeholder = (out: number, inn: number): DenseWeight => ({
    out,
    in: inn,
    weight: zeros.subarray(0, out * inn),
    bias: zeros.subarray(0, out),
  });
  const h = c.hiddenSize;
  const t = header.tensors;
  const weights: BertWeights = {
    config: { ...c },
    wordEmbeddings: f32(t.wordEmbeddings),
    positionEmbeddings: f32(t.positionEmbeddings),
    tokenTypeEmbeddings: t.tokenTypeEmbeddings ? f32(t.tokenTypeEmbeddings) : null,
    embeddingNorm: norm(t.embeddingNorm),
    layers: t.layers.map((l) => ({
      query: placeholder(h, h),
      key: placeholder(h, h),
      value: placeholder(h, h),
      attentionOutput: placeholder(h, h),
      attentionNorm: norm(l.attentionNorm),
      intermediate: placeholder(c.intermediateSize, h),
      output: placeholder(h, c.intermediateSize),
      outputNorm: norm(l.outputNorm),
    })),
    pooler: dense(t.pooler),
    preClassifier: dense(t.preClassifier),
    head: t.head
      ? {
        kind: t.head.kind,
        ...(t.head.labels ? { labels: t.head.labels } : {}),
        dense: dense(t.head.dense)!,
      }
      : null,
    ...(header.attentionMaskValue !== undefined
      ? { attentionMaskValue: header.attentionMaskValue }
      : {}),
    source: { format: header.source.format as BertWeights["source"]["format"], path },
  };
  const entries = new Map(header.linears.map((l) => [`${l.layer}|${l.role}`, l]));
  const linear: LinearFactory = (weight, spec) => {
    // Head layers are stored as plain fp32 tensors (their weights are real, not placeholders).
    if (spec.layer === HEAD_LAYER) return buildLinear("dense-f32", weight, spec);
    const e = entries.get(`${spec.layer}|${spec.role}`);
    if (e === undefined) {
      throw new Error(
        `Compiled model "${path}" has no packed ${spec.role} for layer ${spec.layer}; build the encoder with fuseQkv ${header.fuseQkv}`,
      );
    }
    if (e.activation !== spec.activation || e.out !== weight.out || e.in !== weight.in) {
      throw new Error(
        `Compiled model "${path}": layer ${spec.layer} ${spec.role} was packed as [${e.out}, ${e.in}] ${e.activation}, asked for [${weight.out}, ${weight.in}] ${spec.activation}`,
      );
    }
    const s = section(e.section, "packed");
    const source = { out: e.out, in: e.in, packed: { region, offset: s.offset, bytes: s.bytes } };
    try {
      return linearFromPacked(e.kind, source, {
        activation: e.activation,
        activationQuantization: e.activationQuantization,
      });
    } catch (error) {
      throw new CompiledModelError(
        `Compiled model "${path}", layer ${spec.layer} ${spec.role}: ${(error as Error).message}`,
        { cause: error },
      );
    }
  };
  let tokenizer: BertTokenizer | null = null;
  if (header.tokenizer) {
    const decode = (name: string): Record<string, unknown> =>
      JSON.parse(new TextDecoder().decode(bytes(name)));
    const limit = c.maxPositionEmbeddings;
    const maxLength = options.maxLength ?? Math.min(header.tokenizer.maxLength, limit);
    if (!Number.isInteger(maxLength) || maxLength < 2 || maxLength > limit) {
      throw new Error(
        `maxLength ${maxLength} must be an integer in 2..${limit} (the model's position table)`,
      );
    }
    tokenizer = new BertTokenizer(
      decode(header.tokenizer.json),
      header.tokenizer.config ? decode(header.tokenizer.config) : {},
      { maxLength },
      `${path} (embedded tokenizer.json)`,
    );
  }
  return {
    weights,
    tokenizer,
    path,
    name: null,
    embedding: null, // the .sbert header does not carry it yet; loadModel reads the folder's
    linear,
    fuseQkv: header.fuseQkv,
    kernelDecisions: header.decisions,
    packedBytes: header.packedBytes,
    [Symbol.dispose]: () => region[Symbol.dispose](),
  };
}

/**
 * Tokenizer for BERT-family models: a wrapper over `@huggingface/tokenizers` (tokenizer.json)
 * that adds truncation, padding and batching into flat typed arrays ready for the encoder or
 * ONNX Runtime.
 *
 * ```ts
 * const tok = await BertTokenizer.fromFile(".cache/models/all-minilm-l6-v2/tokenizer.json");
 * const batch = tok.encodeBatch(["hello world", "a longer sentence"], { padding: "longest" });
 * // batch.inputIds: Int32Array [batch * seq], batch.shape: [batch, seq]
 * ```
 *
 * @module
 */

// Versioned inline: a module imported from a URL has no deno.json import map (tests/release_test.ts
// checks this version equals deno.json's).
// deno-lint-ignore no-import-prefix
import { Tokenizer } from "npm:@huggingface/tokenizers@0.2.0";
import { type BertNormalization, type Offset, wordPieceOffsets } from "./offsets.ts";

/** Options of {@linkcode BertTokenizer.encodeBatch}. */
export interface EncodeBatchOptions {
  /** Longest allowed sequence including special tokens (default: the tokenizer's maxLength). */
  maxLength?: number;
  /**
   * Cut sequences longer than `maxLength` (default `false`: such a text is an error).
   * `true` is `"longest_first"` for pairs; `"only_second"` cuts only the second text.
   */
  truncation?: boolean | "longest_first" | "only_second";
  /** Which end truncation cuts: `"right"` (default, keeps the start) or `"left"` (keeps the end). */
  truncationSide?: "left" | "right";
  /** `"longest"` (default) pads to the longest sequence of the batch; `"max_length"` to maxLength. */
  padding?: "longest" | "max_length";
  /** Add [CLS]/[SEP] (default `true`). */
  addSpecialTokens?: boolean;
}

/** Largest token id accepted: far above any real vocabulary, far below a table too big to build. */
const MAX_TOKEN_ID = 10_000_000;

/**
 * Refuses vocabulary and added-token ids that are not integers in 0..MAX_TOKEN_ID before the
 * tokenizer package sees them (a fuzzed id of 2^31 made it build a table for minutes).
 */
function checkTokenIds(json: Record<string, unknown>, label: string): void {
  const bad = (id: unknown): boolean =>
    typeof id !== "number" || !Number.isInteger(id) || id < 0 || id > MAX_TOKEN_ID;
  const model = json.model as { vocab?: unknown } | undefined;
  const vocab = model?.vocab;
  if (vocab !== null && typeof vocab === "object" && !Array.isArray(vocab)) {
    for (const [token, id] of Object.entries(vocab as Record<string, unknown>)) {
      if (bad(id)) {
        throw new Error(
          `Cannot load tokenizer "${label}": vocabulary entry ${
            JSON.stringify(token.slice(0, 40))
          } ` +
            `has id ${JSON.stringify(id)}; ids must be integers in 0..${MAX_TOKEN_ID}`,
        );
      }
    }
  }
  const added = json.added_tokens;
  if (Array.isArray(added)) {
    for (const t of added as { id?: unknown; content?: unknown }[]) {
      if (bad(t?.id)) {
        throw new Error(
          `Cannot load tokenizer "${label}": added token ${JSON.stringify(t?.content)} has id ` +
            `${JSON.stringify(t?.id)}; ids must be integers in 0..${MAX_TOKEN_ID}`,
        );
      }
    }
  }
}

/** The first (`"right"` truncation) or last (`"left"`) `count` tokens. */
function keep(tokens: string[], count: number, side: "left" | "right"): string[] {
  return side === "left" ? tokens.slice(tokens.length - count) : tokens.slice(0, count);
}

/** A tokenized, padded batch. All arrays are row-major `[batch, seq]`. */
export interface EncodedBatch {
  /** `[batch, seq]`. */
  shape: [number, number];
  /** Token ids, padded with the pad token id. */
  inputIds: Int32Array;
  /** 1 for real tokens, 0 for padding. */
  attentionMask: Int32Array;
  /** Segment ids (0 for the first text, 1 for the second of a pair, 0 for padding). */
  tokenTypeIds: Int32Array;
  /** Unpadded length of each sequence. */
  lengths: number[];
  /** Whether each sequence was truncated. */
  truncated: boolean[];
}

/** Options of {@linkcode BertTokenizer.fromFile} and the constructor. */
export interface BertTokenizerOptions {
  /** Default max length (default: `model_max_length` of tokenizer_config.json, else 512). */
  maxLength?: number;
}

/** A text, or a pair of texts (e.g. question and context). */
export type TextInput = string | [string, string];

interface TokenizerInternals {
  post_processor:
    | ((a: string[], b: string[] | null, addSpecial: boolean) => {
      tokens: string[];
      token_type_ids?: number[];
    })
    | null;
}

/** Widens an Int32Array of ids/masks to the BigInt64Array ONNX Runtime wants for int64 inputs. */
export function toBigInt64(values: Int32Array): BigInt64Array {
  const out = new BigInt64Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = BigInt(values[i]);
  return out;
}

/** A tokenizer.json tokenizer with truncation, padding and batching. */
export class BertTokenizer {
  #tok: Tokenizer;
  #vocab: Map<string, number>;
  #unkId: number;
  #padId: number;
  #maxLength: number;
  #label: string;
  #tokens: string[] = [];
  #special = new Set<number>();
  #alignment: { normalization: BertNormalization; prefix: string; unknown: string };

  /**
   * Builds a tokenizer from parsed files; {@linkcode BertTokenizer.fromFile} reads them for you.
   *
   * @param tokenizerJson Parsed tokenizer.json.
   * @param tokenizerConfig Parsed tokenizer_config.json, or `{}`.
   * @param options Defaults.
   * @param label How the tokenizer is named in error messages.
   */
  constructor(
    tokenizerJson: Record<string, unknown>,
    tokenizerConfig: Record<string, unknown> = {},
    options: BertTokenizerOptions = {},
    label = "tokenizer.json",
  ) {
    this.#label = label;
    checkTokenIds(tokenizerJson, label);
    try {
      this.#tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    } catch (err) {
      throw new Error(`Cannot load tokenizer "${label}": ${(err as Error).message}`, {
        cause: err,
      });
    }
    this.#vocab = this.#tok.get_vocab(true);
    for (const [token, id] of this.#vocab) this.#tokens[id] = token;
    const added = (tokenizerJson.added_tokens ?? []) as { id?: number; special?: boolean }[];
    for (const t of Array.isArray(added) ? added : []) {
      if (t.special === true && typeof t.id === "number") this.#special.add(t.id);
    }
    const model = (tokenizerJson.model ?? {}) as {
      unk_token?: string;
      continuing_subword_prefix?: string;
    };
    const normalizer = (tokenizerJson.normalizer ?? {}) as {
      lowercase?: boolean;
      strip_accents?: boolean | null;
      clean_text?: boolean;
    };
    const lowercase = normalizer.lowercase ?? false;
    this.#alignment = {
      normalization: {
        lowercase,
        stripAccents: normalizer.strip_accents ?? lowercase,
        cleanText: normalizer.clean_text ?? false,
      },
      prefix: model.continuing_subword_prefix ?? "##",
      unknown: model.unk_token ?? "[UNK]",
    };
    const padding = (tokenizerJson.padding ?? null) as { pad_id?: number } | null;
    const padToken = (tokenizerConfig.pad_token as string | undefined) ?? "[PAD]";
    this.#unkId = this.#vocab.get(model.unk_token ?? "[UNK]") ?? 0;
    this.#padId = padding?.pad_id ?? this.#vocab.get(padToken) ?? 0;
    const configMax = Number(tokenizerConfig.model_max_length);
    this.#maxLength = options.maxLength ??
      (Number.isSafeInteger(configMax) && configMax > 0 && configMax <= 1 << 20 ? configMax : 512);
    if (!Number.isSafeInteger(this.#maxLength) || this.#maxLength < 2) {
      throw new Error(`Invalid maxLength ${this.#maxLength} for tokenizer "${label}"`);
    }
  }

  /**
   * Loads `tokenizer.json` (and `tokenizer_config.json` next to it, when present).
   *
   * @throws Error naming the file when it is missing or not a valid tokenizer.
   */
  static async fromFile(path: string, options: BertTokenizerOptions = {}): Promise<BertTokenizer> {
    let json: Record<string, unknown>;
    try {
      json = JSON.parse(await Deno.readTextFile(path));
    } catch (err) {
      throw new Error(`Cannot read tokenizer "${path}": ${(err as Error).message}`, {
        cause: err,
      });
    }
    const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
    let config: Record<string, unknown> = {};
    try {
      config = JSON.parse(await Deno.readTextFile(`${dir}/tokenizer_config.json`));
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) {
        throw new Error(
          `Cannot read tokenizer config "${dir}/tokenizer_config.json": ${(err as Error).message}`,
          { cause: err },
        );
      }
    }
    return new BertTokenizer(json, config, options, path);
  }

  /** Default max length (special tokens included). */
  get maxLength(): number {
    return this.#maxLength;
  }

  /** Id of the padding token. */
  get padTokenId(): number {
    return this.#padId;
  }

  /** Number of vocabulary entries (added tokens included). */
  get vocabSize(): number {
    return this.#vocab.size;
  }

  /** Word pieces of a text, without special tokens. */
  tokenize(text: string): string[] {
    return this.#tok.tokenize(text, { add_special_tokens: false });
  }

  /**
   * `[start, end)` of each word piece of {@linkcode tokenize}`(text)` in `text` (UTF-16
   * indices, so `text.slice(start, end)` is the piece's surface), or null where a piece cannot
   * be placed.
   */
  offsets(text: string): Offset[] {
    return wordPieceOffsets(text, this.tokenize(text), this.#alignment);
  }

  /** The vocabulary entry of `id` (a word piece or a special token), or null past the end. */
  tokenOf(id: number): string | null {
    return this.#tokens[id] ?? null;
  }

  /** Whether `id` is a special token ([CLS], [SEP], [PAD], ...) of tokenizer.json. */
  isSpecial(id: number): boolean {
    return this.#special.has(id);
  }

  /** Ids of tokens (unknown tokens map to the [UNK] id). */
  convertTokensToIds(tokens: string[]): number[] {
    return tokens.map((t) => this.#vocab.get(t) ?? this.#unkId);
  }

  /**
   * Adds the special tokens of the tokenizer's post-processor around one or two token lists
   * ([CLS] a [SEP] (b [SEP]) for BERT) and returns tokens with their segment ids.
   */
  withSpecialTokens(
    a: string[],
    b: string[] | null = null,
  ): { tokens: string[]; typeIds: number[] } {
    const post = (this.#tok as unknown as TokenizerInternals).post_processor;
    if (post === null) {
      const tokens = b ? [...a, ...b] : [...a];
      return { tokens, typeIds: tokens.map((_, i) => (i < a.length ? 0 : 1)) };
    }
    const out = post(a, b, true);
    return {
      tokens: out.tokens,
      typeIds: out.token_type_ids ?? out.tokens.map(() => 0),
    };
  }

  /**
   * Special tokens before a single text's first word piece ([CLS]: 1 for BERT), so word piece
   * i sits at position i + this of its encoded sequence.
   */
  get leadingSpecialTokens(): number {
    return this.withSpecialTokens(["x"]).tokens.indexOf("x");
  }

  /** How many special tokens {@linkcode withSpecialTokens} adds for a single text or a pair. */
  numSpecialTokens(pair: boolean): number {
    return this.withSpecialTokens([], pair ? [] : null).tokens.length;
  }

  /** Converts ids back to text. */
  decode(ids: ArrayLike<number>, skipSpecialTokens = true): string {
    if (ids.length === 0) return "";
    return this.#tok.decode(Array.from(ids), { skip_special_tokens: skipSpecialTokens });
  }

  /**
   * Tokenizes one text (or pair) into ids and segment ids, truncating or failing per options.
   *
   * @throws Error quoting the token count and the limit when the text is too long and
   *   truncation is off.
   */
  encode(
    input: TextInput,
    options: EncodeBatchOptions = {},
  ): { ids: number[]; typeIds: number[]; truncated: boolean } {
    const maxLength = options.maxLength ?? this.#maxLength;
    if (!Number.isSafeInteger(maxLength) || maxLength < 1) {
      throw new Error(`Invalid maxLength ${maxLength}: expected a positive integer`);
    }
    const addSpecial = options.addSpecialTokens ?? true;
    const pair = Array.isArray(input);
    if (pair && (input.length !== 2 || input.some((t) => typeof t !== "string"))) {
      throw new Error(`A text pair must be two strings, got ${JSON.stringify(input)}`);
    }
    if (!pair && typeof input !== "string") {
      throw new Error(`Expected a string to tokenize, got ${typeof input}`);
    }
    let a = this.tokenize(pair ? input[0] : input);
    let b = pair ? this.tokenize(input[1]) : null;
    const special = addSpecial ? this.numSpecialTokens(pair) : 0;
    const total = a.length + (b?.length ?? 0) + special;
    let truncated = false;
    if (total > maxLength) {
      const strategy = options.truncation === true ? "longest_first" : options.truncation;
      if (!strategy) {
        const what = pair ? "Text pair" : "Text";
        throw new Error(
          `${what} has ${total} tokens, over the limit of ${maxLength} (maxLength); shorten it or enable truncation`,
        );
      }
      const excess = total - maxLength;
      const side = options.truncationSide ?? "right";
      if (strategy === "only_second") {
        if (b === null || b.length < excess) {
          throw new Error(
            `Cannot truncate to ${maxLength} tokens with "only_second": the first text alone has ${
              a.length + special
            } tokens`,
          );
        }
        b = keep(b, b.length - excess, side);
      } else {
        if (special >= maxLength) {
          throw new Error(`maxLength ${maxLength} leaves no room beside ${special} special tokens`);
        }
        const target = maxLength - special;
        if (b === null) {
          a = keep(a, target, side);
        } else {
          // Like the tokenizers library: the shorter text keeps up to half of the room (the
          // first text counts as the shorter on a tie), the longer one takes the rest.
          const firstLonger = a.length > b.length;
          const shorter = firstLonger ? b.length : a.length;
          const keepShort = Math.min(shorter, Math.floor(target / 2));
          const keepLong = target - keepShort;
          if (firstLonger) {
            a = keep(a, keepLong, side);
            b = keep(b, keepShort, side);
          } else {
            a = keep(a, keepShort, side);
            b = keep(b, keepLong, side);
          }
        }
      }
      truncated = true;
    }
    const { tokens, typeIds } = addSpecial
      ? this.withSpecialTokens(a, b)
      : { tokens: [...a, ...(b ?? [])], typeIds: [...a.map(() => 0), ...(b ?? []).map(() => 1)] };
    return { ids: this.convertTokensToIds(tokens), typeIds, truncated };
  }

  /**
   * Tokenizes a batch of texts (or pairs) into padded `[batch, seq]` arrays.
   *
   * @throws Error quoting the offending text's index, token count and limit when a text is
   *   over `maxLength` and truncation is off.
   */
  encodeBatch(texts: TextInput[], options: EncodeBatchOptions = {}): EncodedBatch {
    if (!Array.isArray(texts) || texts.length === 0) {
      throw new Error("encodeBatch needs a non-empty array of texts");
    }
    const maxLength = options.maxLength ?? this.#maxLength;
    const padding = options.padding ?? "longest";
    if (padding !== "longest" && padding !== "max_length") {
      throw new Error(`Invalid padding "${padding}": expected "longest" or "max_length"`);
    }
    const rows = texts.map((t, i) => {
      try {
        return this.encode(t, { ...options, maxLength });
      } catch (err) {
        throw new Error(
          texts.length > 1
            ? `Text ${i} of the batch: ${(err as Error).message}`
            : (err as Error).message,
          { cause: err },
        );
      }
    });
    const seq = padding === "max_length" ? maxLength : Math.max(...rows.map((r) => r.ids.length));
    return {
      ...padBatch(rows, seq, this.#padId),
      lengths: rows.map((r) => r.ids.length),
      truncated: rows.map((r) => r.truncated),
    };
  }
}

/**
 * Rows of token ids (and segment ids) padded into one `[rows, seq]` batch: `padId` after each
 * row's ids, attention mask 1 on its tokens and 0 on the padding, segment ids 0 there.
 */
export function padBatch(
  rows: readonly { ids: ArrayLike<number>; typeIds: ArrayLike<number> }[],
  seq: number,
  padId: number,
): Pick<EncodedBatch, "shape" | "inputIds" | "attentionMask" | "tokenTypeIds"> {
  const batch = rows.length;
  const inputIds = new Int32Array(batch * seq).fill(padId);
  const attentionMask = new Int32Array(batch * seq);
  const tokenTypeIds = new Int32Array(batch * seq);
  rows.forEach((r, i) => {
    inputIds.set(r.ids, i * seq);
    attentionMask.fill(1, i * seq, i * seq + r.ids.length);
    tokenTypeIds.set(r.typeIds, i * seq);
  });
  return { shape: [batch, seq], inputIds, attentionMask, tokenTypeIds };
}

/**
 * BERT embeddings fused with their LayerNorm, over the `sb_embeddings` kernel
 * (`kernels/embeddings.zig`): `LayerNorm(word[id] + position[s] + tokenType[type])`, with
 * positions `0..seq-1` in every sequence and no token types for DistilBERT.
 *
 * @module
 */
import { kernels } from "../ffi/library.ts";
import { EMBEDDINGS_CALL, type StructBuffer } from "../ffi/structs.ts";
import { checkStatus } from "./status.ts";
import { checkLayerNormWeight, type LayerNormWeight } from "./layernorm.ts";
import { describeArray } from "./linear.ts";

/** The embedding tables and their LayerNorm. */
export interface EmbeddingWeights {
  /** Hidden size H. */
  hidden: number;
  /** `[vocab * H]`. */
  word: Float32Array;
  /** `[maxPositions * H]`. */
  position: Float32Array;
  /** `[typeVocab * H]`, or null (DistilBERT). */
  tokenType: Float32Array | null;
  /** The embedding LayerNorm. */
  norm: LayerNormWeight;
}

/** Inputs of one {@linkcode Embeddings.forward} call. */
export interface EmbeddingInput {
  /** Token ids, `[batch * seq]`. */
  inputIds: Int32Array;
  /** Token type ids, `[batch * seq]`; absent means type 0 everywhere. */
  tokenTypeIds?: Int32Array | null;
  /** Sequences. */
  batch: number;
  /** Tokens per sequence. */
  seq: number;
  /** Output `[batch * seq * H]`; default a new array. */
  out?: Float32Array;
}

/** The embedding layer of a BERT-family encoder. Holds references to the tables (no copies). */
export class Embeddings {
  /** Hidden size H. */
  readonly hidden: number;
  /** Rows of the word table. */
  readonly vocabSize: number;
  /** Rows of the position table: the longest sequence. */
  readonly maxPositions: number;
  /** Rows of the token type table (0 without one). */
  readonly typeVocabSize: number;
  #weights: EmbeddingWeights;
  #call: StructBuffer<typeof EMBEDDINGS_CALL.fields> | undefined;

  /** Checks the tables' sizes against `hidden`. */
  constructor(weights: EmbeddingWeights) {
    const h = weights.hidden;
    if (!Number.isInteger(h) || h < 1) {
      throw new RangeError(`Embedding hidden size must be a positive integer, got ${h}`);
    }
    const rowsOf = (name: string, table: Float32Array): number => {
      if (!(table instanceof Float32Array) || table.length === 0 || table.length % h !== 0) {
        throw new RangeError(
          `Embedding table "${name}" must be a non-empty Float32Array of rows of ${h}, got ${
            describeArray(table)
          }`,
        );
      }
      return table.length / h;
    };
    this.hidden = h;
    this.vocabSize = rowsOf("word", weights.word);
    this.maxPositions = rowsOf("position", weights.position);
    this.typeVocabSize = weights.tokenType === null ? 0 : rowsOf("tokenType", weights.tokenType);
    checkLayerNormWeight(weights.norm, h);
    this.#weights = weights;
  }

  /** Embeds `batch` x `seq` tokens; returns the output `[batch * seq * H]`. */
  forward(input: EmbeddingInput): Float32Array {
    const { batch, seq, inputIds } = input;
    if (!Number.isInteger(batch) || batch < 1) {
      throw new RangeError(`Embedding batch must be a positive integer, got ${batch}`);
    }
    if (!Number.isInteger(seq) || seq < 1 || seq > this.maxPositions) {
      throw new RangeError(
        `Sequence length ${seq} is outside 1..${this.maxPositions} (the model's position table)`,
      );
    }
    const rows = batch * seq;
    if (!(inputIds instanceof Int32Array) || inputIds.length < rows) {
      throw new RangeError(
        `Input ids need ${rows} int32 values (batch x seq), got ${describeArray(inputIds)}`,
      );
    }
    checkIds(inputIds, rows, this.vocabSize, "Token id");
    const types = input.tokenTypeIds ?? null;
    if (types !== null) {
      if (this.typeVocabSize === 0) {
        if (types.subarray(0, rows).some((t) => t !== 0)) {
          throw new RangeError("This model has no token type embeddings, but token type ids != 0");
        }
      } else {
        if (!(types instanceof Int32Array) || types.length < rows) {
          throw new RangeError(
            `Token type ids need ${rows} int32 values, got ${describeArray(types)}`,
          );
        }
        checkIds(types, rows, this.typeVocabSize, "Token type id");
      }
    }
    const need = rows * this.hidden;
    const out = input.out ?? new Float32Array(need);
    if (!(out instanceof Float32Array) || out.length < need) {
      throw new RangeError(
        `Embedding output needs ${need} float32 values, got ${describeArray(out)}`,
      );
    }
    const w = this.#weights;
    this.#call ??= EMBEDDINGS_CALL.buffer();
    const call = this.#call.write({
      input_ids: inputIds,
      token_type_ids: this.typeVocabSize === 0 ? null : types,
      batch,
      seq,
      word: w.word,
      vocab: this.vocabSize,
      position: w.position,
      max_positions: this.maxPositions,
      token_type: w.tokenType,
      type_vocab: this.typeVocabSize,
      gamma: w.norm.gamma,
      beta: w.norm.beta,
      eps: w.norm.eps,
      hidden: this.hidden,
      out,
    });
    const status = kernels().symbols.sb_embeddings(call);
    checkStatus(status, `Embeddings [${batch} x ${seq}]`);
    return out;
  }
}

function checkIds(ids: Int32Array, count: number, limit: number, what: string): void {
  for (let i = 0; i < count; i++) {
    const id = ids[i];
    if (id < 0 || id >= limit) {
      throw new RangeError(`${what} ${id} at position ${i} is outside 0..${limit - 1}`);
    }
  }
}

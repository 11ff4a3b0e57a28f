/**
 * Scalar reference for the BERT embeddings: gather word + position + token type, then
 * LayerNorm, in f64.
 *
 * @module
 */
import { layerNormReference } from "./layernorm.ts";

/** Reference embeddings `[batch * seq * hidden]`. */
export function embeddingsReference(
  tables: {
    hidden: number;
    word: Float32Array;
    position: Float32Array;
    tokenType: Float32Array | null;
    norm: { gamma: Float32Array; beta: Float32Array; eps: number };
  },
  inputIds: ArrayLike<number>,
  tokenTypeIds: ArrayLike<number> | null,
  shape: { batch: number; seq: number },
): Float64Array {
  const { hidden: h, word, position, tokenType } = tables;
  const rows = shape.batch * shape.seq;
  const sum = new Float64Array(rows * h);
  for (let r = 0; r < rows; r++) {
    const id = inputIds[r];
    const p = r % shape.seq;
    const t = tokenTypeIds ? tokenTypeIds[r] : 0;
    for (let j = 0; j < h; j++) {
      let value = word[id * h + j] + position[p * h + j];
      if (tokenType) value += tokenType[t * h + j];
      sum[r * h + j] = value;
    }
  }
  return layerNormReference(sum, rows, tables.norm);
}

/**
 * Character offsets of word pieces (pipelines/offsets.ts through BertTokenizer.offsets): every
 * piece of texts with accents, upper case, emoji ([UNK]), CJK, tabs, control characters and
 * punctuation maps back to the characters it came from, in order, without overlap; a piece
 * that cannot be placed gives null from there on, never a wrong span.
 */
import assert from "node:assert/strict";
import { wordPieceOffsets } from "../pipelines/offsets.ts";
import { modelFiles } from "../hub/registry.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import { inModelCache } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const haveTokenizer = await inModelCache(MINILM.tokenizer);

const TEXTS = [
  "Hello, World! Ünïcödé café",
  "emoji 🙂 and CJK 日本語, ok?",
  "unaffable tokenization\ttabs  and   spaces",
  "x\u0000y control\u0007 chars",
  "Question: what's the capital of Germany? Berlin.",
];

/** What the uncased tokenizer makes of a span: lower case, accents stripped. */
function normalize(span: string): string {
  return span.toLowerCase().normalize("NFD").replace(/\p{Mn}/gu, "").replace(/[\p{Cc}]/gu, "");
}

Deno.test({
  name: "offsets: every word piece slices back to its characters, in order",
  ignore: !haveTokenizer,
  fn: async () => {
    const tok = await BertTokenizer.fromFile(MINILM.tokenizer);
    for (const text of TEXTS) {
      const pieces = tok.tokenize(text);
      const offsets = tok.offsets(text);
      assert.equal(offsets.length, pieces.length);
      let previous = 0;
      pieces.forEach((piece, i) => {
        const at = offsets[i];
        assert.ok(at !== null, `"${piece}" of ${JSON.stringify(text)} was not placed`);
        assert.ok(at[0] >= previous && at[1] > at[0], `overlap at "${piece}"`);
        previous = at[1];
        if (piece !== "[UNK]") {
          assert.equal(normalize(text.slice(at[0], at[1])), piece.replace(/^##/, ""));
        }
      });
    }
    const emoji = TEXTS[1];
    const unk = tok.tokenize(emoji).indexOf("[UNK]");
    const [s, e] = tok.offsets(emoji)[unk]!;
    assert.equal(emoji.slice(s, e), "🙂");
  },
});

Deno.test("offsets: a piece that does not match the text stops the alignment with nulls", () => {
  const options = {
    normalization: { lowercase: true, stripAccents: true, cleanText: true },
    prefix: "##",
    unknown: "[UNK]",
  };
  assert.deepEqual(wordPieceOffsets("Ab cd", ["ab", "cd"], options), [[0, 2], [3, 5]]);
  assert.deepEqual(wordPieceOffsets("Ab cd", ["ab", "xy", "cd"], options), [[0, 2], null, null]);
  assert.deepEqual(wordPieceOffsets("Émile", ["emile"], options), [[0, 5]]);
  const cased = {
    ...options,
    normalization: { ...options.normalization, lowercase: false, stripAccents: false },
  };
  assert.deepEqual(wordPieceOffsets("Ab", ["ab"], cased), [null]);
});

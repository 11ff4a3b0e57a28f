/**
 * Tokenizer: the real MiniLM / bge tokenizer.json files give the ids of the reference
 * implementation (Python `tokenizers`, when it is installed), batches are padded and masked,
 * truncation keeps the special tokens, and an over-long text is a clear error.
 */
import assert from "node:assert/strict";
import { modelFiles } from "../hub/registry.ts";
import { BertTokenizer, toBigInt64 } from "../pipelines/tokenizer.ts";
import { inModelCache } from "./helpers.ts";

const MINILM = modelFiles("all-minilm-l6-v2");
const MINILM_ST = modelFiles("all-minilm-l6-v2-st");
const BGE = modelFiles("bge-small-en-v15");

const present: string[] = [];
for (const path of [MINILM.tokenizer, MINILM_ST.tokenizer, BGE.tokenizer]) {
  if (await inModelCache(path)) present.push(path);
}
const haveMiniLM = present.includes(MINILM.tokenizer);

const CORPUS = [
  "hello world",
  "Hello, WORLD! The quick brown fox jumps over the lazy dog.",
  "naïve café résumé Ünïcödé ßtraße",
  "東京は日本の首都です",
  "emoji 😀 test 👍🏽",
  "unbelievably antidisestablishmentarianism",
  "  multiple   spaces\tand\nnewlines  ",
  "",
  "[CLS] special [SEP] tokens [MASK] here",
  "e-mail: someone@example.com, url https://example.org/a?b=c",
  "numbers 1234567890 3.14159 1,000,000",
  "Привет мир, как дела? مرحبا بالعالم",
  "word ".repeat(700),
];
const PAIRS: [string, string][] = [
  ["what is this? " + "x ".repeat(300), "context ".repeat(400)],
  ["short question", "long ".repeat(700)],
  ["a b c", "d e f"],
  ["x ".repeat(20), "y ".repeat(20)],
];

Deno.test({
  name: "tokenizer: hello world is [CLS] hello world [SEP] = [101, 7592, 2088, 102]",
  ignore: !haveMiniLM,
  fn: async () => {
    const tok = await BertTokenizer.fromFile(MINILM.tokenizer);
    const enc = tok.encode("hello world");
    assert.deepEqual(enc.ids, [101, 7592, 2088, 102]);
    assert.deepEqual(enc.typeIds, [0, 0, 0, 0]);
    assert.equal(tok.decode(enc.ids), "hello world");
    assert.equal(tok.padTokenId, 0);
    assert.equal(tok.maxLength, 512);
  },
});

Deno.test({
  name: "tokenizer: padded batches, masks, segment ids and int64 views",
  ignore: !haveMiniLM,
  fn: async () => {
    const tok = await BertTokenizer.fromFile(MINILM.tokenizer);
    const texts = ["hello world", "a somewhat longer sentence here", "hi"];
    const batch = tok.encodeBatch(texts);
    const lengths = texts.map((t) => tok.encode(t).ids.length);
    const seq = Math.max(...lengths);
    assert.deepEqual(batch.shape, [3, seq]);
    assert.deepEqual(batch.lengths, lengths);
    for (let i = 0; i < 3; i++) {
      const row = Array.from(batch.inputIds.subarray(i * seq, (i + 1) * seq));
      const mask = Array.from(batch.attentionMask.subarray(i * seq, (i + 1) * seq));
      assert.deepEqual(row.slice(0, lengths[i]), tok.encode(texts[i]).ids);
      assert.ok(row.slice(lengths[i]).every((id) => id === tok.padTokenId), "padding ids");
      assert.deepEqual(mask, row.map((_, j) => (j < lengths[i] ? 1 : 0)));
    }
    const fixed = tok.encodeBatch(texts, { padding: "max_length", maxLength: 16 });
    assert.deepEqual(fixed.shape, [3, 16]);
    assert.deepEqual(Array.from(toBigInt64(fixed.inputIds.subarray(0, 4))), [
      101n,
      7592n,
      2088n,
      102n,
    ]);
    const pair = tok.encodeBatch([["question here", "the context"]]);
    const typeIds = Array.from(pair.tokenTypeIds);
    const firstSep = Array.from(pair.inputIds).indexOf(102);
    assert.deepEqual(typeIds, typeIds.map((_, j) => (j <= firstSep ? 0 : 1)));
  },
});

Deno.test({
  name:
    "tokenizer: over-long text is an error quoting the count and limit; truncation keeps specials",
  ignore: !haveMiniLM,
  fn: async () => {
    const tok = await BertTokenizer.fromFile(MINILM.tokenizer);
    const long = "word ".repeat(600);
    assert.throws(
      () => tok.encode(long),
      /Text has 602 tokens, over the limit of 512 \(maxLength\); shorten it or enable truncation/,
    );
    assert.throws(
      () => tok.encodeBatch(["ok", long], { maxLength: 128 }),
      /Text 1 of the batch: Text has 602 tokens, over the limit of 128/,
    );
    const cut = tok.encode(long, { truncation: true, maxLength: 128 });
    assert.equal(cut.ids.length, 128);
    assert.equal(cut.truncated, true);
    assert.equal(cut.ids[0], 101);
    assert.equal(cut.ids[127], 102);
    const batch = tok.encodeBatch(["short", long], { truncation: true, maxLength: 64 });
    assert.deepEqual(batch.shape, [2, 64]);
    assert.deepEqual(batch.truncated, [false, true]);
    const onlySecond = tok.encode(["question", "context ".repeat(100)], {
      truncation: "only_second",
      maxLength: 32,
    });
    assert.equal(onlySecond.ids.length, 32);
    const question = tok.encode("question").ids; // [CLS] question [SEP]: kept whole
    assert.deepEqual(onlySecond.ids.slice(0, question.length), question);
    assert.equal(onlySecond.ids[31], 102);
    // Left truncation keeps the end of the text (TEI's truncation_direction "left").
    const text = "alpha beta gamma delta epsilon";
    const words = tok.encode(text).ids.slice(1, -1);
    const left = tok.encode(text, { truncation: true, truncationSide: "left", maxLength: 4 });
    assert.deepEqual(left.ids, [101, ...words.slice(-2), 102]);
    const right = tok.encode(text, { truncation: true, truncationSide: "right", maxLength: 4 });
    assert.deepEqual(right.ids, [101, ...words.slice(0, 2), 102]);
  },
});

Deno.test("tokenizer: a missing or invalid tokenizer.json fails naming the file", async () => {
  await assert.rejects(
    () => BertTokenizer.fromFile("/nonexistent/tokenizer.json"),
    /Cannot read tokenizer "\/nonexistent\/tokenizer.json"/,
  );
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-tok-" });
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{not json");
    await assert.rejects(
      () => BertTokenizer.fromFile(`${dir}/tokenizer.json`),
      /Cannot read tokenizer/,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** The Python interpreter with `tokenizers`, or null. */
async function pythonWithTokenizers(): Promise<string | null> {
  for (const python of [Deno.env.get("SPARSEBERT_PYTHON"), "python3"]) {
    if (!python) continue;
    try {
      const out = await new Deno.Command(python, {
        args: ["-c", "import tokenizers"],
        stdout: "null",
        stderr: "null",
      }).output();
      if (out.success) return python;
    } catch {
      // not installed
    }
  }
  return null;
}

const python = await pythonWithTokenizers();
if (python === null) {
  console.warn("SKIP: the Python tokenizers cross-check (no python3 with `tokenizers` installed)");
}

Deno.test({
  name: "tokenizer: ids equal the Python tokenizers library on every cached tokenizer",
  ignore: python === null || present.length === 0,
  fn: async () => {
    const script = `
import json, sys
from tokenizers import Tokenizer
req = json.load(sys.stdin)
out = {}
for path in req["paths"]:
    t = Tokenizer.from_file(path)
    t.no_padding()
    t.enable_truncation(512)
    singles = [t.encode(s).ids for s in req["corpus"]]
    t.enable_truncation(128, strategy="longest_first")
    pairs = [[t.encode(a, b).ids, t.encode(a, b).type_ids] for a, b in req["pairs"]]
    out[path] = {"singles": singles, "pairs": pairs}
print(json.dumps(out))
`;
    const child = new Deno.Command(python!, {
      args: ["-c", script],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    await writer.write(
      new TextEncoder().encode(JSON.stringify({ paths: present, corpus: CORPUS, pairs: PAIRS })),
    );
    await writer.close();
    const result = await child.output();
    assert.ok(result.success, new TextDecoder().decode(result.stderr));
    const reference = JSON.parse(new TextDecoder().decode(result.stdout));
    for (const path of present) {
      const tok = await BertTokenizer.fromFile(path);
      CORPUS.forEach((text, i) => {
        const ours = tok.encode(text, { truncation: true, maxLength: 512 }).ids;
        assert.deepEqual(
          ours,
          reference[path].singles[i],
          `${path}: ${JSON.stringify(text.slice(0, 40))}`,
        );
      });
      PAIRS.forEach((pair, i) => {
        const ours = tok.encode(pair, { truncation: true, maxLength: 128 });
        assert.deepEqual([ours.ids, ours.typeIds], reference[path].pairs[i], `${path}: pair ${i}`);
      });
    }
  },
});

Deno.test({
  name: "tokenizer: out-of-range vocabulary ids are a clear error (a fuzz finding: 2^31 hung)",
  ignore: !haveMiniLM,
  fn: async () => {
    const json = JSON.parse(await Deno.readTextFile(MINILM.tokenizer));
    for (const id of [2 ** 31, -1, 1e308, 1.5]) {
      const broken = structuredClone(json);
      broken.model.vocab.belfast = id;
      assert.throws(
        () => new BertTokenizer(broken, {}, {}, "broken.json"),
        /Cannot load tokenizer "broken\.json": vocabulary entry "belfast" has id .*; ids must be integers in 0\.\.10000000/,
      );
    }
  },
});

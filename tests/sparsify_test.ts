/**
 * `deno task cli sparsify`: option parsing, the corpus cleaning, the refusal to train on the
 * evaluation texts, and (when the JAX venv `.cache/venv/train` is installed) a short end-to-end
 * run on a generated 2-layer model with a generated tokenizer.
 */
import assert from "node:assert/strict";
import {
  assertNoOverlap,
  buildCorpus,
  cleanText,
  normalizeText,
  overlapWith,
  splitGloss,
  wordnetTexts,
} from "../compress/corpus.ts";
import {
  bundleLinears,
  resolveTrainOptions,
  seededShuffle,
  TRAIN_VENV,
  trainingTexts,
  trainPython,
} from "../compress/sparsify.ts";
import { fp32Path, main, parseSparsifyOptions } from "../tools/cli_sparsify.ts";
import { readTexts } from "../compress/calibrate.ts";
import { DEFAULT_RETRIEVAL_SET } from "../compress/evaluate.ts";
import { analyzeOnnx } from "../formats/onnx_import.ts";
import { exists } from "../formats/fs.ts";
import { UsageError } from "../tools/_command.ts";
import { writeTestModel } from "./fixtures/write_test_model.ts";

const REQUIRED = { model: "m.onnx", out: "o.onnx", sparsity: "0.8" };

Deno.test("sparsify options: defaults and conversions", () => {
  const p = parseSparsifyOptions({ ...REQUIRED, "time-budget": "2.5", steps: "7" });
  assert.equal(p.train.sparsity, 0.8);
  assert.equal(p.train.init, "obs");
  assert.equal(p.train.scope, "per-layer");
  assert.equal(p.train.qat, false);
  const qat = parseSparsifyOptions({ ...REQUIRED, qat: true, "qat-qmax": "127" });
  assert.deepEqual([qat.train.qat, qat.train.qatActivationQmax], [true, 127]);
  assert.equal(p.train.learningRate, 5e-4);
  assert.equal(p.train.initSparsity, 0.8);
  const global = parseSparsifyOptions({ ...REQUIRED, scope: "global", "init-sparsity": "0.6" });
  assert.equal(global.train.scope, "global");
  assert.equal(p.train.timeBudgetSeconds, 150);
  assert.equal(p.train.steps, 7);
  assert.equal(p.int8, true);
  assert.equal(p.resume, false);
  assert.equal(p.evalTexts, DEFAULT_RETRIEVAL_SET);
  const d = parseSparsifyOptions({ ...REQUIRED, init: "dense", "no-int8": true });
  assert.equal(d.train.initSparsity, 0);
  assert.equal(d.int8, false);
  assert.equal(
    parseSparsifyOptions({ ...REQUIRED, "init-sparsity": "0.5" }).train.initSparsity,
    0.5,
  );
  assert.equal(fp32Path("a/model.onnx"), "a/model.fp32.onnx");
});

Deno.test("sparsify options: bad values are usage errors naming the option", () => {
  const bad: [Record<string, string | boolean>, RegExp][] = [
    [{ out: "o", sparsity: "0.8" }, /--model is required/],
    [{ model: "m", sparsity: "0.8" }, /--out is required/],
    [{ model: "m", out: "o" }, /--sparsity is required/],
    [{ ...REQUIRED, sparsity: "1" }, /--sparsity must be in \(0, 1\)/],
    [{ ...REQUIRED, sparsity: "x" }, /--sparsity must be a number/],
    [{ ...REQUIRED, "init-sparsity": "0.9" }, /above the target sparsity/],
    [{ ...REQUIRED, init: "dense", "init-sparsity": "0.5" }, /only used by --init obs/],
    [{ ...REQUIRED, init: "magic" }, /--init/],
    [{ ...REQUIRED, scope: "model" }, /--scope/],
    [{ ...REQUIRED, "qat-qmax": "100" }, /QAT activation qmax 100/],
    [{ ...REQUIRED, scope: "global" }, /init sparsity below 0.8 \(for example 0.64\)/],
    [{ ...REQUIRED, "time-budget": "0" }, /--time-budget/],
    [{ ...REQUIRED, steps: "1.5" }, /--steps must be an integer/],
    [{ ...REQUIRED, "batch-size": "0" }, /--batch-size/],
    [{ ...REQUIRED, "max-length": "4" }, /--max-length/],
  ];
  for (const [values, re] of bad) {
    assert.throws(() => parseSparsifyOptions(values), re, JSON.stringify(values));
  }
  assert.throws(() => parseSparsifyOptions({ ...REQUIRED, sparsity: "1" }), UsageError);
  // Only --build-corpus needs neither a model nor a sparsity.
  assert.equal(parseSparsifyOptions({ "build-corpus": true }).buildCorpus, true);
  assert.throws(() => resolveTrainOptions({ sparsity: 0.8, learningRate: -1 }), /learning rate/);
});

Deno.test("sparsify CLI: --help, unknown option, usage error exit codes", async () => {
  const log = console.log;
  const err = console.error;
  const out: string[] = [];
  console.log = (s: string) => out.push(s);
  console.error = (s: string) => out.push(s);
  try {
    assert.equal(await main(["--help"]), 0);
    assert.match(out.join("\n"), /--time-budget MIN/);
    assert.equal(await main(["--bogus"]), 2);
    assert.equal(await main(["--model", "m", "--out", "o", "--sparsity", "2"]), 2);
  } finally {
    console.log = log;
    console.error = err;
  }
});

Deno.test("sparsify: clear errors for a missing venv and a missing run to resume", async () => {
  await assert.rejects(trainPython("/nonexistent/venv"), /run "deno task setup:train"/);
  const dir = await Deno.makeTempDir({ prefix: "sparsify-resume-" });
  const err = console.error;
  const lines: string[] = [];
  console.error = (s: string) => lines.push(s);
  try {
    const code = await main([
      "--model",
      "m.onnx",
      "--out",
      `${dir}/o.onnx`,
      "--sparsity",
      "0.8",
      "--resume",
    ]);
    assert.equal(code, 1);
    assert.match(lines.join("\n"), /No sparsify run to resume in ".*o\.onnx\.work"/);
  } finally {
    console.error = err;
    await Deno.remove(dir, { recursive: true });
  }
});

const DATA_LINES = [
  "  1 This software and database is being provided to you, the LICENSEE, by Princeton",
  '00217593 04 n 01 kill 1 002 @ 00217014 n 0000 | the destruction of an enemy plane or ship or tank or missile; "the pilot reported two kills during the mission"  ',
  "00217499 04 n 01 disaster 0 001 @ 00217014 n 0000 | an act that has disastrous consequences  ",
  "00217500 04 n 01 dup 0 001 @ 00217014 n 0000 | an act that has disastrous consequences  ",
  '01000001 00 a 01 short 0 000 | tiny; "ok"  ',
  "00603981 31 v 01 drill_press 3 001 @ 00603298 v 0000 01 + 09 00 | train in the military, e.g., in the use of weapons  ",
].join("\n");

Deno.test("corpus: WordNet glosses cleaned into texts", () => {
  assert.deepEqual(splitGloss('a b; c d; "ex one"; "ex two"'), {
    definitions: ["a b", "c d"],
    examples: ["ex one", "ex two"],
  });
  assert.equal(cleanText("  the   end  ;"), null); // under 4 words
  assert.equal(cleanText("four words are here;"), "Four words are here");
  assert.equal(cleanText("an (unbalanced bracket in here"), null);
  assert.equal(cleanText("caf\u00e9 is not ascii at all"), null);
  assert.equal(cleanText(Array(61).fill("w").join(" ")), null);
  const texts = wordnetTexts([DATA_LINES]);
  assert.deepEqual(texts, [
    "Kill: the destruction of an enemy plane or ship or tank or missile",
    "The pilot reported two kills during the mission",
    "Disaster: an act that has disastrous consequences",
    "Dup: an act that has disastrous consequences",
    "Drill press: train in the military, e.g., in the use of weapons",
  ]);
  // The license header and the too-short texts of "short" are gone; equal texts once only.
  assert.deepEqual(wordnetTexts([DATA_LINES, DATA_LINES]), texts);
});

Deno.test("corpus: overlap with the evaluation texts is found and refused", async () => {
  const evaluation = [
    "The bread rises overnight in a warm kitchen before baking.",
    "Short query text",
  ];
  const training = [
    "Completely unrelated sentence about rivers and mountains in spring.",
    "the BREAD rises overnight, in a warm kitchen before baking!", // equal after normalizing
    "Yesterday the bread rises overnight in a warm kitchen and we left", // 8-word run
    "A longer text that contains the short query text inside it", // short text contained
    "Bread rises in a kitchen", // shares words but no 8-word run: not an overlap
  ];
  const found = overlapWith(training, evaluation);
  assert.deepEqual(found.map((f) => f.index), [1, 2, 3]);
  assert.equal(normalizeText(" A-b  C! "), "a b c");
  assert.throws(
    () => assertNoOverlap(training, evaluation, { training: "t.txt", evaluation: "e.json" }),
    /Refusing to train on "t.txt": 3 of its texts overlap .*line 2/,
  );
  assert.doesNotThrow(() =>
    assertNoOverlap([training[0], training[4]], evaluation, { training: "t", evaluation: "e" })
  );
  // The repository's evaluation set itself is refused as a corpus.
  const evalTexts = await readTexts(DEFAULT_RETRIEVAL_SET);
  await assert.rejects(
    trainingTexts(DEFAULT_RETRIEVAL_SET, evalTexts, { maxTexts: 10, seed: 1 }),
    /Refusing to train on .*300 of its texts overlap/,
  );
});

Deno.test("corpus: the built WordNet corpus does not overlap the retrieval set", async (t) => {
  const path = ".cache/corpus/wordnet.txt";
  if (!await exists(path)) {
    // Build it as `cli sparsify --build-corpus` does (Debian's wordnet-base through apt-get);
    // where there is no Debian archive to fetch from, say so instead of passing silently.
    try {
      await buildCorpus(path);
    } catch (error) {
      const why = (error as Error).message.split("\n")[0];
      await t.step({ name: `skipped: ${path} could not be built (${why})`, fn() {} });
      return;
    }
  }
  const texts = await readTexts(path);
  assert.ok(texts.length > 100_000, `${texts.length} texts`);
  assert.deepEqual(overlapWith(texts, await readTexts(DEFAULT_RETRIEVAL_SET)), []);
});

Deno.test("seeded shuffle is a deterministic permutation", () => {
  const a = Array.from({ length: 50 }, (_, i) => i);
  const s = seededShuffle(a, 3);
  assert.deepEqual(s, seededShuffle(a, 3));
  assert.notDeepEqual(s, a);
  assert.deepEqual([...s].sort((x, y) => x - y), a);
});

/** A WordPiece tokenizer.json over `words` (ids past 400 never appear: the test vocab is 400). */
function tinyTokenizer(words: string[]): Record<string, unknown> {
  const special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
  const letters = "abcdefghijklmnopqrstuvwxyz".split("");
  const vocab = [...special, ...letters, ...letters.map((l) => `##${l}`), ...words];
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: special.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: {
      type: "BertNormalizer",
      clean_text: true,
      handle_chinese_chars: true,
      strip_accents: null,
      lowercase: true,
    },
    pre_tokenizer: { type: "BertPreTokenizer" },
    post_processor: {
      type: "TemplateProcessing",
      single: [
        { SpecialToken: { id: "[CLS]", type_id: 0 } },
        { Sequence: { id: "A", type_id: 0 } },
        {
          SpecialToken: { id: "[SEP]", type_id: 0 },
        },
      ],
      pair: [],
      special_tokens: {
        "[CLS]": { id: "[CLS]", ids: [2], tokens: ["[CLS]"] },
        "[SEP]": { id: "[SEP]", ids: [3], tokens: ["[SEP]"] },
      },
    },
    decoder: { type: "WordPiece", prefix: "##", cleanup: true },
    model: {
      type: "WordPiece",
      unk_token: "[UNK]",
      continuing_subword_prefix: "##",
      max_input_chars_per_word: 100,
      vocab: Object.fromEntries(vocab.map((t, i) => [t, i])),
    },
  };
}

Deno.test("sparsify end to end on a 2-layer test model (needs the JAX venv)", async (t) => {
  if (!await exists(`${TRAIN_VENV}/bin/python`)) {
    console.log(
      `skipped: the training venv ${TRAIN_VENV} is not installed (deno task setup:train)`,
    );
    return;
  }
  const dir = await Deno.makeTempDir({ prefix: "sparsify-test-" });
  try {
    const model = `${dir}/in/model.onnx`;
    await writeTestModel(model, {
      preset: "bert-mini",
      config: { vocabSize: 400, numLayers: 2, maxPositionEmbeddings: 64 },
      seed: 7,
    });
    const words = ["the", "a", "of", "river", "stone", "light", "water", "tree", "house", "cat"];
    await Deno.writeTextFile(`${dir}/in/tokenizer.json`, JSON.stringify(tinyTokenizer(words)));
    const corpus = Array.from({ length: 400 }, (_, i) => {
      const w = (k: number) => words[(i * 7 + k * 3) % words.length];
      return `${w(0)} ${w(1)} ${w(2)} ${w(3)} number ${i} by ${w(4)}`;
    });
    await Deno.writeTextFile(`${dir}/corpus.txt`, corpus.join("\n"));
    const evalFile = `${dir}/eval.json`;
    await Deno.writeTextFile(evalFile, JSON.stringify(["a completely different evaluation text"]));
    const out = `${dir}/out/model.onnx`;
    const args = [
      "--model",
      model,
      "--out",
      out,
      "--sparsity",
      "0.75",
      "--init-sparsity",
      "0.5",
      "--corpus",
      `${dir}/corpus.txt`,
      "--eval-texts",
      evalFile,
      "--steps",
      "12",
      "--batch-size",
      "8",
      "--max-length",
      "16",
      "--obs-texts",
      "16",
      "--json",
    ];
    const log = console.log;
    const lines: string[] = [];
    console.log = (s: string) => lines.push(s);
    let code: number;
    try {
      code = await main(args);
    } finally {
      console.log = log;
    }
    const report = JSON.parse(lines.join("\n"));
    assert.equal(code, 0, lines.join("\n"));
    assert.equal(report.ok, true);
    assert.equal(report.training.steps, 12);
    assert.ok(report.forwardCheck.minCosine > 0.9999, JSON.stringify(report.forwardCheck));
    // Every linear of the sparse fp32 output is 75% zero 4x1 blocks.
    const a = await analyzeOnnx(report.fp32);
    for (const { name, dense } of bundleLinears(a.weights)) {
      assert.ok(
        Math.abs(dense.sparsity!.block4x1 - 0.75) < 0.01,
        `${name} ${dense.sparsity!.block4x1}`,
      );
    }
    const q = await analyzeOnnx(out);
    assert.equal(q.quantized, true);
    await t.step("resume continues from the checkpoint", async () => {
      lines.length = 0;
      console.log = (s: string) => lines.push(s);
      try {
        code = await main([...args.slice(0, 6), "--resume", "--steps", "14", "--json"]);
      } finally {
        console.log = log;
      }
      assert.equal(code, 0, lines.join("\n"));
      const events = (await Deno.readTextFile(`${out}.work/events.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l));
      const resumed = events.find((e) => e.event === "resumed");
      assert.equal(resumed?.step, 12);
      assert.equal(JSON.parse(lines.join("\n")).training.steps, 14);
    });
    await t.step("--resume --qat fine-tunes the run with int8 fake quantization", async () => {
      lines.length = 0;
      console.log = (s: string) => lines.push(s);
      try {
        code = await main([...args.slice(0, 6), "--resume", "--steps", "16", "--qat", "--json"]);
      } finally {
        console.log = log;
      }
      assert.equal(code, 0, lines.join("\n"));
      const bundle = JSON.parse(await Deno.readTextFile(`${out}.work/bundle.json`));
      assert.equal(bundle.options.qat, true);
      const starts = (await Deno.readTextFile(`${out}.work/events.jsonl`)).trim().split("\n")
        .map((l) => JSON.parse(l)).filter((e) => e.event === "start");
      assert.deepEqual(starts.map((e) => e.qat), [false, false, true], "the trainer ran with QAT");
      assert.equal(JSON.parse(lines.join("\n")).training.steps, 16);
    });
    await t.step(
      "--scope global: the target over all linears together, each keeping 2%",
      async () => {
        lines.length = 0;
        console.log = (s: string) => lines.push(s);
        const global = `${dir}/global/model.onnx`;
        try {
          code = await main([
            ...args.slice(0, 3),
            global,
            ...args.slice(4).map((a) => a === "12" ? "6" : a),
            "--scope",
            "global",
            "--no-int8",
          ]);
        } finally {
          console.log = log;
        }
        assert.equal(code, 0, lines.join("\n"));
        const g = await analyzeOnnx(global);
        const linears = bundleLinears(g.weights).map((l) => l.dense);
        const blocks = (d: (typeof linears)[number]) => Math.ceil(d.out / 4) * d.in;
        const total = linears.reduce((s, d) => s + blocks(d), 0);
        const zero = linears.reduce((s, d) => s + d.sparsity!.block4x1 * blocks(d), 0);
        assert.ok(Math.abs(zero / total - 0.75) < 0.01, `overall ${zero / total}`);
        const per = linears.map((d) => d.sparsity!.block4x1);
        assert.ok(Math.max(...per) - Math.min(...per) > 0.02, `per linear ${per}`);
        for (const p of per) assert.ok(p <= 0.98 + 1e-9, `a linear at ${p}`);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

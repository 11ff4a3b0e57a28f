/**
 * Pipelines against ONNX Runtime: feature extraction on the real MiniLM, and the task heads
 * (sequence classification for BERT and DistilBERT, token classification, question answering
 * with a doc stride) on generated models with seeded random head weights, since no fine-tuned
 * heads are available here. The MiniLM tokenizer (the BERT uncased vocabulary) drives them.
 */
import assert from "node:assert/strict";
import type { LoadedModel } from "../hub/loaded_model.ts";
import { importOnnx } from "../formats/onnx_import.ts";
import { bestSpans, type QuestionAnsweringResult } from "../pipelines/logits.ts";
import {
  type ClassificationResult,
  pipeline,
  type TokenClassificationResult,
} from "../pipelines/pipeline.ts";
import { modelFiles } from "../hub/registry.ts";
import { BertTokenizer } from "../pipelines/tokenizer.ts";
import { ensureTestModel, type TestModelOptions } from "./fixtures/write_test_model.ts";
import { maxAbsDiff, releaseOrtSessions, runOrt } from "./ort_reference.ts";
import { poolReference } from "./reference/pooling.ts";
import { inModelCache } from "./helpers.ts";

const BOUND = 1e-4;
const MINILM = modelFiles("all-minilm-l6-v2");
const haveMiniLM = await inModelCache(MINILM.onnx);

const TEXTS = [
  "Deno runs TypeScript.",
  "Zig kernels compute the attention of every head in one pass over the keys.",
  "ok",
];

async function generated(options: TestModelOptions, maxLength?: number): Promise<LoadedModel> {
  const { path } = await ensureTestModel(options);
  const weights = await importOnnx(path);
  const tokenizer = await BertTokenizer.fromFile(MINILM.tokenizer, { maxLength });
  return { weights, tokenizer, path, name: null };
}

Deno.test({
  name: "pipeline: feature-extraction on MiniLM matches ONNX Runtime (mean, cls, none)",
  ignore: !haveMiniLM,
  fn: async () => {
    using extractor = await pipeline("feature-extraction", MINILM.onnx!, { batchSize: 2 });
    assert.equal(extractor.task, "feature-extraction");
    const enc = extractor.tokenizer.encodeBatch(TEXTS);
    const [batch, seq] = enc.shape;
    const reference = (await runOrt(MINILM.onnx!, { ...enc, batch, seq })).last_hidden_state;
    const h = extractor.config.hiddenSize;
    const shape = { batch, seq, hidden: h, mask: Uint8Array.from(enc.attentionMask) };
    for (const pooling of ["mean", "cls"] as const) {
      // batchSize 2 splits the three texts over two encoder calls with different padding.
      const out = await extractor(TEXTS, { pooling, normalize: true });
      assert.deepEqual(out.dims, [3, h]);
      const expected = poolReference(reference, shape, { mode: pooling, normalize: true });
      const d = maxAbsDiff(out.data, expected);
      assert.ok(d <= BOUND, `${pooling} pooling differs from ORT by ${d}`);
    }
    // The cached registry file declares mean + Normalize; "none" asks for token vectors.
    assert.deepEqual(
      {
        pooling: extractor.model.embedding?.pooling,
        normalize: extractor.model.embedding?.normalize,
      },
      { pooling: "mean", normalize: true },
    );
    const declared = await extractor(TEXTS);
    const meanRef = poolReference(reference, shape, { mode: "mean", normalize: true });
    assert.ok(maxAbsDiff(declared.data, meanRef) <= BOUND, "declared pooling by default");
    const tokens = await extractor(TEXTS, { pooling: "none" });
    assert.deepEqual(tokens.dims, [batch, seq, h]);
    const d = maxAbsDiff(tokens.data, reference, { mask: enc.attentionMask, rowWidth: h });
    assert.ok(d <= BOUND, `token vectors differ from ORT by ${d}`);
    const single = await extractor("ok", { pooling: "mean", normalize: true });
    assert.deepEqual(single.dims, [1, h]);
    const expected = poolReference(reference, shape, { mode: "mean", normalize: true });
    assert.ok(maxAbsDiff(single.data, expected.subarray(2 * h, 3 * h)) <= BOUND);
  },
});

for (
  const [label, options] of [
    ["BERT-Mini (tanh pooler)", { preset: "bert-mini", numLabels: 3, seed: 3 }],
    ["DistilBERT (pre-classifier + ReLU)", { preset: "distilbert", numLabels: 4, seed: 4 }],
  ] as const
) {
  Deno.test(`pipeline: text-classification on a generated ${label} head matches ORT`, async () => {
    const model = await generated({
      ...options,
      task: "text-classification",
      config: { numLayers: options.preset === "distilbert" ? 1 : 2 },
    });
    using classifier = await pipeline("text-classification", model);
    const enc = classifier.tokenizer.encodeBatch(TEXTS);
    const [batch, seq] = enc.shape;
    const logits = classifier.logits(enc);
    assert.deepEqual(logits.dims, [batch, options.numLabels]);
    const reference = (await runOrt(model.path, { ...enc, batch, seq })).logits;
    const d = maxAbsDiff(logits.data, reference);
    assert.ok(d <= BOUND, `${label} logits differ from ORT by ${d}`);
    const all = await classifier(TEXTS, { topK: options.numLabels }) as ClassificationResult[][];
    assert.equal(all.length, 3);
    for (let b = 0; b < batch; b++) {
      const row = reference.subarray(b * options.numLabels, (b + 1) * options.numLabels);
      const best = row.indexOf(Math.max(...row));
      assert.equal(all[b][0].label, classifier.labels[best]);
      const total = all[b].reduce((s, r) => s + r.score, 0);
      assert.ok(Math.abs(total - 1) < 1e-6, `scores sum to ${total}`);
      assert.ok(all[b].every((r, i) => i === 0 || all[b][i - 1].score >= r.score));
    }
    const one = await classifier(TEXTS[0]) as ClassificationResult[];
    assert.equal(one.length, 1);
    assert.deepEqual(one[0], all[0][0]);
    const tops = await classifier(TEXTS) as ClassificationResult[];
    assert.deepEqual(tops.map((r) => r.label), all.map((r) => r[0].label));
  });
}

Deno.test("pipeline: token-classification on a generated head matches ORT", async () => {
  const model = await generated({
    preset: "bert-mini",
    task: "token-classification",
    numLabels: 5,
    seed: 6,
    config: { numLayers: 2 },
  });
  using tagger = await pipeline("token-classification", model);
  const enc = tagger.tokenizer.encodeBatch(TEXTS);
  const [batch, seq] = enc.shape;
  const logits = tagger.logits(enc);
  assert.deepEqual(logits.dims, [batch, seq, 5]);
  const reference = (await runOrt(model.path, { ...enc, batch, seq })).logits;
  const d = maxAbsDiff(logits.data, reference, { mask: enc.attentionMask, rowWidth: 5 });
  assert.ok(d <= BOUND, `token logits differ from ORT by ${d}`);
  const tagged = await tagger(TEXTS, { ignoreLabels: [] }) as TokenClassificationResult[][];
  assert.equal(tagged.length, 3);
  for (let b = 0; b < batch; b++) {
    // Every word piece except [CLS] and [SEP], in order, labelled with ORT's argmax.
    assert.equal(tagged[b].length, enc.lengths[b] - 2);
    for (const t of tagged[b]) {
      const row = reference.subarray((b * seq + t.index) * 5, (b * seq + t.index + 1) * 5);
      assert.equal(t.entity, tagger.labels[row.indexOf(Math.max(...row))]);
      assert.equal(t.word, tagger.tokenizer.decode([enc.inputIds[b * seq + t.index]]));
      // Character offsets slice the text to the word piece (uncased vocabulary: lower-cased).
      assert.ok(t.start !== null && t.end !== null, `no offsets for "${t.word}"`);
      assert.equal(TEXTS[b].slice(t.start, t.end).toLowerCase(), t.word.replace(/^##/, ""));
    }
  }
  const ignored = await tagger(TEXTS[1], { ignoreLabels: [tagger.labels[0]] });
  assert.ok((ignored as TokenClassificationResult[]).every((t) => t.entity !== tagger.labels[0]));
});

Deno.test("pipeline: question-answering windows a long context and matches ORT's best span", async () => {
  const model = await generated(
    { preset: "bert-mini", task: "question-answering", seed: 7, config: { numLayers: 2 } },
    32,
  );
  using qa = await pipeline("question-answering", model);
  const question = "Which runtime loads the kernels?";
  const context = "The kernels are written in Zig and compiled into one shared library per " +
    "instruction set. Deno loads the best library for the CPU with dlopen, and the encoder " +
    "calls one kernel per operation with buffers it planned once per batch shape.";
  const windows = qa.windows(question, context, { docStride: 8 });
  assert.ok(windows.shape[0] >= 3, `expected several windows, got ${windows.shape[0]}`);
  // Consecutive windows overlap by the stride and together cover the context.
  for (let w = 1; w < windows.shape[0]; w++) {
    assert.equal(
      windows.contextStart[w],
      windows.contextStart[w - 1] + windows.contextLength[0] - 8,
    );
  }
  const lastWindow = windows.shape[0] - 1;
  assert.equal(
    windows.contextStart[lastWindow] + windows.contextLength[lastWindow],
    windows.contextIds.length,
  );
  const [batch, seq] = windows.shape;
  const logits = qa.logits(windows);
  assert.deepEqual(logits.dims, [batch, seq, 2]);
  const reference = await runOrt(model.path, { ...windows, batch, seq });
  const interleaved = new Float32Array(batch * seq * 2);
  for (let i = 0; i < batch * seq; i++) {
    interleaved[2 * i] = reference.start_logits[i];
    interleaved[2 * i + 1] = reference.end_logits[i];
  }
  const d = maxAbsDiff(logits.data, interleaved, { mask: windows.attentionMask, rowWidth: 2 });
  assert.ok(d <= BOUND, `QA logits differ from ORT by ${d}`);
  const expected = bestSpans(interleaved, windows, { topK: 3, maxAnswer: 15 });
  const answers = await qa(question, context, {
    docStride: 8,
    topK: 3,
  }) as QuestionAnsweringResult[];
  assert.deepEqual(
    answers.map((a) => [a.tokenStart, a.tokenEnd]),
    expected.map((s) => [s.tokenStart, s.tokenEnd]),
  );
  const best = await qa(question, context, { docStride: 8 }) as QuestionAnsweringResult;
  // The answer is the context's own characters, and its offsets slice the context to it; the
  // word pieces decode to the same text up to case.
  assert.ok(best.start !== null && best.end !== null, "the answer has character offsets");
  assert.equal(best.answer, context.slice(best.start, best.end));
  assert.equal(
    best.answer.toLowerCase(),
    qa.tokenizer.decode(windows.contextIds.slice(expected[0].tokenStart, expected[0].tokenEnd + 1)),
  );
  for (const a of answers) assert.equal(a.answer, context.slice(a.start!, a.end!));
  assert.ok(best.score > 0 && best.score <= 1);
});

Deno.test("pipeline: bestSpans scores P(start) x P(end) over context tokens only", () => {
  // One window of 6 tokens, context at positions 1..4 (tokens 0..3). Start logits of the
  // context are [1, 2, 5, 0], end logits [9, 0, 0, 0]; position 0 and 5 have huge logits that
  // must be ignored. Best: start 0, end 0 (0.017 x 0.9996) beats start 2, end 2 or 3.
  const logits = new Float32Array([50, 50, 1, 9, 2, 0, 5, 0, 0, 0, 50, 50]);
  const windows = {
    shape: [1, 6] as [number, number],
    contextStart: [10],
    contextLength: [4],
    offset: [1],
  };
  const spans = bestSpans(logits, windows, { topK: 2, maxAnswer: 15 });
  assert.deepEqual([spans[0].tokenStart, spans[0].tokenEnd], [10, 10]);
  assert.equal(spans[1].tokenStart, 12); // the start favourite, with a weak end
  const pStart = Math.exp(1) / (Math.exp(1) + Math.exp(2) + Math.exp(5) + 1);
  const pEnd = Math.exp(9) / (Math.exp(9) + 3);
  assert.ok(Math.abs(spans[0].score - pStart * pEnd) < 1e-12);
  // With maxAnswer 1 only single-token spans remain.
  const short = bestSpans(logits, windows, { topK: 5, maxAnswer: 1 });
  assert.ok(short.every((s) => s.tokenStart === s.tokenEnd));
});

Deno.test("pipeline: bad tasks, missing heads and over-long texts fail clearly", async () => {
  const model = await generated({ preset: "bert-mini", config: { numLayers: 1 } }, 16);
  await assert.rejects(
    () => pipeline("summarization" as "feature-extraction", model),
    /Unknown task "summarization"/,
  );
  await assert.rejects(
    () => pipeline("text-classification", model),
    /has no task head; "text-classification" needs a classification head/,
  );
  await assert.rejects(
    () => pipeline("feature-extraction", { ...model, tokenizer: null }),
    /has no tokenizer \(looked for tokenizer\.json/,
  );
  using extractor = await pipeline("feature-extraction", model);
  const long = "word ".repeat(40);
  await assert.rejects(() => extractor(long), /over the limit of 16/);
  const cut = await extractor(long, { truncation: true, pooling: "mean" });
  assert.deepEqual(cut.dims, [1, 256]);
  await assert.rejects(() => extractor([]), /non-empty array of texts/);
  await assert.rejects(
    () => extractor("x", { pooling: "median" as "mean" }),
    /Unknown pooling "median": expected "none", "mean", "cls", "max"/,
  );
  extractor.dispose();
  await assert.rejects(() => extractor("x"), /used after dispose/);
});

Deno.test("pipeline: release ORT sessions", async () => {
  await releaseOrtSessions();
});

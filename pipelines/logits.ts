/**
 * From a head's logits to results: softmax and sigmoid scores, and the best answer spans of
 * question answering with the context characters they cover.
 *
 * @module
 */
import type { Offset } from "./offsets.ts";
import type { BertTokenizer } from "./tokenizer.ts";

/** One answer span. */
export interface QuestionAnsweringResult {
  /** The answer text (decoded from its word pieces). */
  answer: string;
  /** P(start) x P(end) of the span, softmax over the window's context tokens. */
  score: number;
  /** First context token of the span (index into the context's word pieces). */
  tokenStart: number;
  /** Last context token of the span (inclusive). */
  tokenEnd: number;
  /** Where the answer starts in the context (`context.slice(start, end)`), or null. */
  start: number | null;
  /** Where it ends (exclusive), or null. */
  end: number | null;
}

/**
 * The answer of a span: the context's own characters where the word pieces could be placed
 * (as Hugging Face's pipeline), else the decoded word pieces with null offsets.
 */
export function answerOf(
  tokenizer: BertTokenizer,
  context: string,
  offsets: readonly Offset[],
  windows: { readonly contextIds: readonly number[] },
  span: { tokenStart: number; tokenEnd: number; score: number },
): QuestionAnsweringResult {
  const first = offsets[span.tokenStart];
  const last = offsets[span.tokenEnd];
  const placed = first !== null && first !== undefined && last !== null && last !== undefined;
  return {
    answer: placed
      ? context.slice(first[0], last[1])
      : tokenizer.decode(windows.contextIds.slice(span.tokenStart, span.tokenEnd + 1)),
    score: span.score,
    tokenStart: span.tokenStart,
    tokenEnd: span.tokenEnd,
    start: placed ? first[0] : null,
    end: placed ? last[1] : null,
  };
}

/**
 * The best answer spans of question-answering logits (`[batch, seq, 2]`, start and end per
 * token) over the context tokens of each window: probabilities are a softmax over the window's
 * context tokens for the start and the end separately; a span scores P(start) x P(end), ends
 * at or after its start, and holds at most `maxAnswer` tokens. Spans seen in two overlapping
 * windows are reported once (the higher score).
 */
export function bestSpans(
  logits: Float32Array,
  windows: {
    readonly shape: readonly number[];
    readonly contextStart: readonly number[];
    readonly contextLength: readonly number[];
    readonly offset: readonly number[];
  },
  options: { topK: number; maxAnswer: number },
): { tokenStart: number; tokenEnd: number; score: number }[] {
  const [batch, seq] = windows.shape;
  const found = new Map<string, { tokenStart: number; tokenEnd: number; score: number }>();
  for (let b = 0; b < batch; b++) {
    const n = windows.contextLength[b];
    const offset = windows.offset[b];
    const start = new Float64Array(n);
    const end = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      const row = (b * seq + offset + i) * 2;
      start[i] = logits[row];
      end[i] = logits[row + 1];
    }
    const pStart = softmax(start);
    const pEnd = softmax(end);
    for (let i = 0; i < n; i++) {
      for (let j = i; j < Math.min(n, i + options.maxAnswer); j++) {
        const score = pStart[i] * pEnd[j];
        const tokenStart = windows.contextStart[b] + i;
        const tokenEnd = windows.contextStart[b] + j;
        const key = `${tokenStart}:${tokenEnd}`;
        const seen = found.get(key);
        if (seen === undefined || seen.score < score) {
          found.set(key, { tokenStart, tokenEnd, score });
        }
      }
    }
  }
  return [...found.values()].sort((a, b) => b.score - a.score).slice(0, options.topK);
}

/** Softmax in f64 of a logit vector. */
export function softmax(logits: ArrayLike<number>): Float64Array {
  const out = new Float64Array(logits.length);
  let max = -Infinity;
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]);
  let sum = 0;
  for (let i = 0; i < logits.length; i++) {
    out[i] = Math.exp(logits[i] - max);
    sum += out[i];
  }
  for (let i = 0; i < out.length; i++) out[i] /= sum;
  return out;
}

/** The logistic function. */
export function sigmoid(x: number): number {
  return 1 / (1 + Math.exp(-x));
}

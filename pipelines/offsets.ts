/**
 * Character offsets of word pieces in the original text. The tokenizer package we use gives
 * tokens but no offsets, so they are recovered by walking the text through the same
 * normalisation as tokenizer.json's `BertNormalizer` (clean_text, lowercase, strip_accents)
 * while keeping, for every normalised character, the original one it came from, then matching
 * the word pieces in order. Offsets are UTF-16 indices (`text.slice(start, end)`), as JS
 * strings count.
 *
 * @module
 */

/** The `BertNormalizer` settings that change characters (spacing does not move offsets). */
export interface BertNormalization {
  /** Lower-case. */
  lowercase: boolean;
  /** Strip accents (NFD, drop combining marks); tokenizer.json's null follows `lowercase`. */
  stripAccents: boolean;
  /** Drop control characters and NUL / U+FFFD (clean_text). */
  cleanText: boolean;
}

/** A word piece's `[start, end)` in the original text, or null where it cannot be placed. */
export type Offset = [number, number] | null;

interface NormalizedChar {
  char: string;
  start: number;
  end: number;
}

const COMBINING_MARK = /\p{Mn}/u;
const CONTROL = /[\p{Cc}\p{Cf}]/u;
const WHITESPACE = /\s/u;

/** The normalised characters of `text`, each with the original `[start, end)` it came from. */
function normalizedChars(text: string, norm: BertNormalization): NormalizedChar[] {
  const out: NormalizedChar[] = [];
  let at = 0;
  for (const original of text) {
    const start = at;
    at += original.length;
    if (WHITESPACE.test(original)) {
      out.push({ char: " ", start, end: at });
      continue;
    }
    if (norm.cleanText && (original === "\0" || original === "\uFFFD" || CONTROL.test(original))) {
      continue;
    }
    let piece = norm.lowercase ? original.toLowerCase() : original;
    if (norm.stripAccents) {
      piece = [...piece.normalize("NFD")].filter((c) => !COMBINING_MARK.test(c)).join("");
    }
    for (const char of piece) out.push({ char, start, end: at });
  }
  return out;
}

const PUNCTUATION = /[\p{P}\p{S}]/u;

/**
 * Offsets of `pieces` (the tokenizer's word pieces of `text`, without special tokens) in
 * `text`. A continuation piece drops `prefix` ("##"); the unknown token covers the rest of its
 * word. Once a piece cannot be matched, it and every later piece get null (never a wrong span).
 */
export function wordPieceOffsets(
  text: string,
  pieces: readonly string[],
  options: { normalization: BertNormalization; prefix: string; unknown: string },
): Offset[] {
  const chars = normalizedChars(text, options.normalization);
  const out: Offset[] = [];
  let i = 0;
  let lost = false;
  for (const piece of pieces) {
    if (lost) {
      out.push(null);
      continue;
    }
    const continuation = piece.startsWith(options.prefix) && piece !== options.prefix;
    if (!continuation) { while (i < chars.length && chars[i].char === " ") i++; }
    const first = i;
    if (piece === options.unknown) {
      // The whole word (up to whitespace, or one punctuation character).
      if (i < chars.length && PUNCTUATION.test(chars[i].char)) i++;
      else {
        while (i < chars.length && chars[i].char !== " " && !PUNCTUATION.test(chars[i].char)) i++;
      }
    } else {
      const body = continuation ? piece.slice(options.prefix.length) : piece;
      for (const char of body) {
        if (i < chars.length && chars[i].char === char) i++;
        else {
          lost = true;
          break;
        }
      }
    }
    if (lost || i === first) {
      lost = true;
      out.push(null);
      continue;
    }
    out.push([chars[first].start, chars[i - 1].end]);
  }
  return out;
}

/**
 * ONNX Runtime as the reference for model tests (not a test file itself): one session per
 * file, fed the same padded batch the encoder gets.
 *
 * @module
 */
import * as ort from "onnxruntime-node";
import { lcg32 } from "../ops/random.ts";

/** A padded batch as int32 arrays, `[batch, seq]` row-major. */
export interface OrtBatch {
  inputIds: Int32Array;
  attentionMask: Int32Array;
  tokenTypeIds: Int32Array;
  batch: number;
  seq: number;
}

const sessions = new Map<string, Promise<ort.InferenceSession>>();

/** A cached ORT session for `path` (2 intra-op threads, full graph optimisation). */
export function ortSession(path: string): Promise<ort.InferenceSession> {
  let session = sessions.get(path);
  if (session === undefined) {
    session = ort.InferenceSession.create(path, {
      intraOpNumThreads: 2,
      interOpNumThreads: 1,
      executionMode: "sequential",
      graphOptimizationLevel: "all",
    });
    sessions.set(path, session);
  }
  return session;
}

/** Releases every cached session. */
export async function releaseOrtSessions(): Promise<void> {
  for (const session of sessions.values()) await (await session).release();
  sessions.clear();
}

/** Runs the ONNX file on a batch; returns every graph output by name. */
export async function runOrt(path: string, batch: OrtBatch): Promise<Record<string, Float32Array>> {
  const session = await ortSession(path);
  const all: Record<string, Int32Array> = {
    input_ids: batch.inputIds,
    attention_mask: batch.attentionMask,
    token_type_ids: batch.tokenTypeIds,
  };
  const feeds: Record<string, ort.Tensor> = {};
  for (const name of session.inputNames) {
    const values = all[name];
    if (values === undefined) throw new Error(`Unexpected ONNX input "${name}" in "${path}"`);
    feeds[name] = new ort.Tensor(
      "int64",
      BigInt64Array.from(values.subarray(0, batch.batch * batch.seq), (v) => BigInt(v)),
      [batch.batch, batch.seq],
    );
  }
  const result = await session.run(feeds);
  const out: Record<string, Float32Array> = {};
  for (const name of session.outputNames) out[name] = result[name].data as Float32Array;
  return out;
}

/** Max |a - b| over rows whose mask is set (`rowWidth` values per token), or over all. */
export function maxAbsDiff(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  options: { mask?: ArrayLike<number>; rowWidth?: number } = {},
): number {
  if (a.length !== b.length) throw new Error(`Length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; i++) {
    if (options.mask && options.rowWidth && options.mask[Math.floor(i / options.rowWidth)] === 0) {
      continue;
    }
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= worst)) worst = Number.isNaN(d) ? Infinity : d;
  }
  return worst;
}

/** A batch of random token ids with the given sequence lengths, padded with 0. */
export function randomBatch(
  lengths: number[],
  options: { vocab: number; typeVocab: number; seed: number },
): OrtBatch {
  const batch = lengths.length;
  const seq = Math.max(...lengths);
  const lcg = lcg32(options.seed);
  const next = (): number => lcg() / 4294967296;
  const inputIds = new Int32Array(batch * seq);
  const attentionMask = new Int32Array(batch * seq);
  const tokenTypeIds = new Int32Array(batch * seq);
  lengths.forEach((n, b) => {
    for (let s = 0; s < n; s++) {
      inputIds[b * seq + s] = 1 + Math.floor(next() * (options.vocab - 1));
      attentionMask[b * seq + s] = 1;
      tokenTypeIds[b * seq + s] = options.typeVocab > 1 && s >= n / 2 ? 1 : 0;
    }
  });
  return { inputIds, attentionMask, tokenTypeIds, batch, seq };
}

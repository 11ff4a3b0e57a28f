import { equal, match as assertMatch, throws as assertThrows } from "node:assert/strict";
import { setThreads, threads } from "../ffi/library.ts";
import { Attention, type AttentionPrecision, FLOAT32_MIN } from "../ops/attention.ts";
import { int8ActivationQmax } from "../ops/quantize.ts";
import { assertClose, randomF32, variantLabel } from "./harness.ts";
import { attentionInt8Reference, attentionReference } from "./reference/attention.ts";

function lengthsMask(lengths: number[], seq: number): Uint8Array {
  const mask = new Uint8Array(lengths.length * seq);
  lengths.forEach((n, b) => mask.fill(1, b * seq, b * seq + n));
  return mask;
}

interface Case {
  lengths: number[];
  seq: number;
  heads: number;
  headSize: number;
  fused: boolean;
  maskValue: number;
}

function check(c: Case, seed: number, precision: AttentionPrecision = "fp32"): void {
  const { lengths, seq, heads, headSize, fused, maskValue } = c;
  const batch = lengths.length;
  const width = heads * headSize;
  const rows = batch * seq;
  const mask = lengthsMask(lengths, seq);
  using op = new Attention({ heads, headSize, maskValue, precision });
  let q, k, v, ld;
  if (fused) {
    // One [rows, 3H] buffer as the fused QKV projection writes it.
    ld = 3 * width;
    const qkv = randomF32(rows * ld, seed, -2, 2);
    q = qkv;
    k = qkv.subarray(width);
    v = qkv.subarray(2 * width);
  } else {
    ld = width;
    q = randomF32(rows * width, seed, -2, 2);
    k = randomF32(rows * width, seed + 1, -2, 2);
    v = randomF32(rows * width, seed + 2, -2, 2);
  }
  const out = op.forward({ q, k, v, ld, mask, batch, seq });
  const shape = { batch, seq, heads, headSize, ld, maskValue, scale: 1 / Math.sqrt(headSize) };
  const what = `${precision} attention lengths ${lengths} seq ${seq} ${heads}x${headSize} ${
    fused ? "fused" : "separate"
  } mask ${maskValue}`;
  if (precision === "fp32") {
    assertClose(out, attentionReference(q, k, v, mask, shape), { rtol: 1e-5, what });
    return;
  }
  // The same codes and integer sums; only the fp32 steps around them differ from f64, which
  // can move a probability's code by one step (rarely: bounded loosely per element, tightly in
  // RMS, where a wrong scale or code anywhere shows).
  const qmax = int8ActivationQmax();
  const reference = attentionInt8Reference(q, k, v, mask, { ...shape, qmax });
  assertClose(out, reference, { rtol: 2 / qmax, what });
  const rms = relativeRms(out, reference);
  if (!(rms < 5e-4)) throw new Error(`${what}: RMS error ${rms} against its reference`);
  // And within the int8 error of the exact attention.
  const error = relativeRms(out, attentionReference(q, k, v, mask, shape));
  const bound = qmax === 255 ? 0.02 : 0.04;
  if (!(error < bound)) throw new Error(`${what}: relative RMS error ${error} >= ${bound}`);
}

/** sqrt(sum (a - b)^2 / sum b^2). */
function relativeRms(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let error = 0;
  let norm = 0;
  for (let i = 0; i < b.length; i++) {
    error += (a[i] - b[i]) ** 2;
    norm += b[i] ** 2;
  }
  return Math.sqrt(error / norm);
}

const CASES: Case[] = [
  { lengths: [1], seq: 1, heads: 1, headSize: 16, fused: false, maskValue: -1e4 },
  { lengths: [19, 12], seq: 19, heads: 3, headSize: 24, fused: true, maskValue: -1e4 },
  { lengths: [37, 5, 20], seq: 37, heads: 4, headSize: 32, fused: true, maskValue: FLOAT32_MIN },
  { lengths: [128], seq: 128, heads: 12, headSize: 64, fused: true, maskValue: FLOAT32_MIN },
  { lengths: [70, 1], seq: 70, heads: 16, headSize: 64, fused: false, maskValue: -1e4 },
  {
    lengths: [9, 3, 9, 4, 8, 2, 7, 1],
    seq: 9,
    heads: 12,
    headSize: 32,
    fused: true,
    maskValue: -1e4,
  },
  { lengths: [100], seq: 131, heads: 2, headSize: 48, fused: true, maskValue: FLOAT32_MIN },
];

Deno.test(`attention matches the reference with padding masks (${variantLabel()})`, () => {
  let seed = 700;
  for (const c of CASES) check(c, seed++);
});

Deno.test(`int8 attention matches its reference and stays near fp32 (${variantLabel()})`, () => {
  let seed = 1700;
  for (const c of CASES) check(c, seed++, "int8");
  check(
    { lengths: [0, 6], seq: 6, heads: 2, headSize: 16, fused: true, maskValue: -1e4 },
    1800,
    "int8",
  );
  const before = threads();
  try {
    for (const count of [1, 3]) {
      setThreads(count);
      check(
        { lengths: [33, 20], seq: 33, heads: 6, headSize: 32, fused: true, maskValue: -1e4 },
        1810 + count,
        "int8",
      );
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("attention with every key masked averages all keys, as Hugging Face does", () => {
  for (const maskValue of [-1e4, FLOAT32_MIN]) {
    check({ lengths: [0, 6], seq: 6, heads: 2, headSize: 16, fused: true, maskValue }, 900);
  }
});

Deno.test("attention gives the same result on 1 to 4 threads (scratch re-planned)", () => {
  const before = threads();
  try {
    for (const count of [1, 4, 2, 3]) {
      equal(setThreads(count), count);
      check(
        { lengths: [33, 20, 1], seq: 33, heads: 6, headSize: 32, fused: true, maskValue: -1e4 },
        950 + count,
      );
    }
  } finally {
    setThreads(before);
  }
});

Deno.test("attention keeps its scratch across calls and grows it only for longer sequences", () => {
  using op = new Attention({ heads: 2, headSize: 32 });
  op.plan(64);
  const bytes = op.scratchBytes;
  op.plan(10);
  equal(op.scratchBytes, bytes);
  op.plan(200);
  equal(op.scratchBytes > bytes, true);
});

Deno.test("attention rejects bad arguments with clear errors", () => {
  assertThrows(() => new Attention({ heads: 0, headSize: 64 }), /heads must be a positive/);
  assertThrows(() => new Attention({ heads: 2, headSize: 513 }), /head size must be an integer/);
  assertThrows(
    () => new Attention({ heads: 2, headSize: 8, precision: "fp16" as AttentionPrecision }),
    /precision must be "fp32" or "int8", got "fp16"/,
  );
  assertThrows(
    () => new Attention({ heads: 2, headSize: 8, maskValue: -Infinity }),
    /mask value must be finite/,
  );
  using op = new Attention({ heads: 2, headSize: 8 });
  const x = new Float32Array(3 * 16);
  const mask = new Uint8Array(3).fill(1);
  assertThrows(
    () => op.forward({ q: x, k: x, v: new Float32Array(40), mask, batch: 1, seq: 3 }),
    /Attention v needs 48 float32 values/,
  );
  assertThrows(
    () => op.forward({ q: x, k: x, v: x, mask: new Uint8Array(2), batch: 1, seq: 3 }),
    /mask needs 3 bytes/,
  );
  assertThrows(
    () => op.forward({ q: x, k: x, v: x, mask, batch: 1, seq: 3, out: x }),
    /must not overlap/,
  );
  assertThrows(
    () => op.forward({ q: x, k: x, v: x, mask, batch: 1, seq: 3, ld: 8 }),
    /stride ld must be an integer >= 16/,
  );
  op[Symbol.dispose]();
  assertThrows(
    () => op.forward({ q: x, k: x, v: x, mask, batch: 1, seq: 3 }),
    /after it was disposed/,
  );
});

Deno.test(`attention passes NaN and infinity through, never a crash (${variantLabel()})`, () => {
  // A corrupt model's overflow reaches the attention as NaN or infinite scores: the softmax
  // must not take its "sum >= 1" invariant for granted (a ReleaseSafe panic before 2026-12-07).
  for (const precision of ["fp32", "int8"] as const) {
    using op = new Attention({ heads: 2, headSize: 8, precision });
    const seq = 5;
    const x = new Float32Array(seq * 16).map((_, i) => Math.sin(i));
    const mask = new Uint8Array(seq).fill(1);
    for (const bad of [NaN, Infinity, 3e38, -3e38]) {
      const q = x.slice();
      q.fill(bad, 0, 16); // token 0's query, both heads
      const k = x.slice();
      // token 1's key; with -3e38, every key 3e38: token 0's scores all overflow to -inf
      if (bad === -3e38) k.fill(3e38);
      else k.fill(bad, 16, 32);
      let out: Float32Array | null = null;
      try {
        out = op.forward({ q, k, v: x, mask, batch: 1, seq });
      } catch (error) {
        // int8 quantizes Q and K first, and refuses what is not finite.
        assertMatch((error as Error).message, /NaN or infinity/);
        continue;
      }
      // fp32: rows that saw a NaN or infinite score are not finite, for the encoder to report.
      // (int8 subtracts the row maximum before it scales, so 3e38 stays finite there.)
      const finite = [...out].filter(Number.isFinite).length;
      if (precision === "fp32" && !(finite < out.length)) {
        throw new Error(`${precision} ${bad}: every output finite`);
      }
    }
  }
});

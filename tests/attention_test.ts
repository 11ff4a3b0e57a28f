import { equal, throws as assertThrows } from "node:assert/strict";
import { setThreads, threads } from "../ffi/library.ts";
import { Attention, FLOAT32_MIN } from "../ops/attention.ts";
import { assertClose, randomF32, variantLabel } from "./harness.ts";
import { attentionReference } from "./reference/attention.ts";

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

function check(c: Case, seed: number): void {
  const { lengths, seq, heads, headSize, fused, maskValue } = c;
  const batch = lengths.length;
  const width = heads * headSize;
  const rows = batch * seq;
  const mask = lengthsMask(lengths, seq);
  using op = new Attention({ heads, headSize, maskValue });
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
  const expected = attentionReference(q, k, v, mask, {
    batch,
    seq,
    heads,
    headSize,
    ld,
    maskValue,
    scale: 1 / Math.sqrt(headSize),
  });
  assertClose(out, expected, {
    rtol: 1e-5,
    what: `attention lengths ${lengths} seq ${seq} ${heads}x${headSize} ${
      fused ? "fused" : "separate"
    } mask ${maskValue}`,
  });
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

import { throws as assertThrows } from "node:assert/strict";
import {
  int8ActivationQmax,
  packActivations,
  quantizeActivations,
  quantizeWeights,
  rowStride,
} from "../ops/quantize.ts";
import { assertEqualInts, randomF32, variantLabel } from "./harness.ts";
import {
  packedValue,
  quantizeOrtReference,
  quantizeReference,
  quantizeWeightsReference,
  roundHalfEven,
} from "./reference/quantize.ts";

const SHAPES: [number, number][] = [[1, 1], [1, 7], [5, 1], [7, 13], [17, 31], [33, 64], [
  128,
  768,
]];
const MODES = ["per-token", "per-tensor"] as const;

function rowsOf(data: Uint8Array, m: number, k: number, stride: number): Uint8Array {
  const out = new Uint8Array(m * k);
  for (let t = 0; t < m; t++) out.set(data.subarray(t * stride, t * stride + k), t * k);
  return out;
}

Deno.test(`quantize (rows and packed) equals the reference exactly (${variantLabel()})`, () => {
  let seed = 100;
  for (const [m, k] of SHAPES) {
    for (const mode of MODES) {
      for (const qmax of [127, 255]) {
        const x = randomF32(m * k, seed++, -3, 5);
        const ref = quantizeReference(x, m, k, mode, qmax);
        const what = `[${m}, ${k}] ${mode} qmax ${qmax}`;
        const rows = quantizeActivations(x, m, k, { mode, qmax });
        assertEqualInts(rowsOf(rows.data, m, k, rows.stride), ref.q, `rows ${what}`);
        assertEqualInts(rows.scale, ref.scale, `scales ${what}`);
        assertEqualInts(rows.zeroPoint, ref.zeroPoint, `zero points ${what}`);
        for (let t = 0; t < m; t++) {
          for (let c = k; c < rows.stride; c++) {
            if (rows.data[t * rows.stride + c] !== 0) throw new Error(`Padding not zero, ${what}`);
          }
        }
        if (qmax > int8ActivationQmax()) continue;
        const packed = quantizeActivations(x, m, k, { mode, layout: "packed", qmax });
        const unpacked = new Uint8Array(m * k);
        for (let t = 0; t < m; t++) {
          for (let c = 0; c < k; c++) unpacked[t * k + c] = packedValue(packed.data, k, t, c);
        }
        assertEqualInts(unpacked, ref.q, `packed ${what}`);
        assertEqualInts(packed.scale, ref.scale, `packed scales ${what}`);
        // Re-laying the rows gives the same bytes as quantizing straight into the packed layout.
        assertEqualInts(packActivations(rows).data, packed.data, `repacked ${what}`);
      }
    }
  }
});

Deno.test(`quantize "ort-u8" is ONNX Runtime's DynamicQuantizeLinear exactly (${variantLabel()})`, () => {
  let seed = 900;
  for (const [m, k] of SHAPES) {
    for (const [lo, hi] of [[-3, 5], [0.5, 4], [-6, -1]]) {
      const x = randomF32(m * k, seed++, lo, hi);
      // Values on exact halves of a step exercise the rounding (ties to even, as ORT's).
      x[0] = 0;
      const ref = quantizeOrtReference(x);
      const rows = quantizeActivations(x, m, k, { mode: "ort-u8" });
      const what = `[${m}, ${k}] in [${lo}, ${hi}]`;
      assertEqualInts([rows.qmax, rows.scale[m - 1], rows.zeroPoint[m - 1]], [
        255,
        ref.scale,
        ref.zero,
      ], `params ${what}`);
      assertEqualInts(rowsOf(rows.data, m, k, rows.stride), ref.q, `codes ${what}`);
    }
  }
  assertThrows(
    () => quantizeActivations(new Float32Array(8), 2, 4, { mode: "ort-u8", layout: "packed" }),
    /"ort-u8" quantization writes 8-bit rows/,
  );
  assertThrows(
    () => quantizeActivations(new Float32Array(8), 2, 4, { mode: "ort-u8", qmax: 127 }),
    /"ort-u8" quantization writes 8-bit rows/,
  );
});

Deno.test("quantize hits 0 and qmax at the range ends and keeps 0 exact", () => {
  const x = new Float32Array([-2, 0, 1, 6, 0, 0, 0, 0, 3, 3, 3, 3, -1, -1, -4, -0.5]);
  for (const mode of MODES) {
    // The default qmax is the library's: 255 with VNNI, else 127.
    const qmax = int8ActivationQmax();
    const q = quantizeActivations(x, 4, 4, { mode });
    assertEqualInts([q.qmax], [qmax], "default qmax");
    const ref = quantizeReference(x, 4, 4, mode, qmax);
    assertEqualInts(rowsOf(q.data, 4, 4, q.stride), ref.q, mode);
    // The range ends map to 0 and qmax; an exact 0 dequantizes to exactly 0.
    if (mode === "per-token") {
      assertEqualInts([q.data[0], q.data[3]], [0, qmax], "row 0 ends");
      assertEqualInts([q.data[4], q.scale[1], q.zeroPoint[1]], [0, 1, 0], "all-zero row");
      assertEqualInts([q.data[8], q.zeroPoint[2]], [qmax, 0], "positive row");
      assertEqualInts([q.data[14], q.zeroPoint[3]], [0, qmax], "negative row");
    }
    for (let t = 0; t < 4; t++) {
      for (let c = 0; c < 4; c++) {
        if (x[t * 4 + c] === 0 && q.data[t * q.stride + c] !== q.zeroPoint[t]) {
          throw new Error(`0 at [${t}, ${c}] does not quantize to the zero point (${mode})`);
        }
      }
    }
  }
});

Deno.test("round half to even matches the kernel's rounding", () => {
  assertEqualInts([2.5, 3.5, -2.5, -3.5, 0.5, 1.5, 126.5].map(roundHalfEven), [
    2,
    4,
    -2,
    -4,
    0,
    2,
    126,
  ]);
  // Range [0, 255] with qmax 255 gives scale 1 exactly, so x.5 values are exact ties.
  const x = new Float32Array([0, 255, 2.5, 3.5, 126.5]);
  const q = quantizeActivations(x, 1, 5, { qmax: 255 });
  assertEqualInts(Array.from(q.data.subarray(0, 5)), [0, 255, 2, 4, 126]);
});

Deno.test("quantize refuses NaN and infinity with a clear error", () => {
  for (const mode of MODES) {
    for (const bad of [NaN, Infinity, -Infinity]) {
      const x = new Float32Array([1, 2, 3, bad, 5, 6]);
      assertThrows(() => quantizeActivations(x, 2, 3, { mode }), /NaN or infinity/);
      assertThrows(
        () => quantizeActivations(x, 2, 3, { mode, layout: "packed" }),
        /NaN or infinity/,
      );
    }
  }
  assertThrows(() => quantizeActivations(new Float32Array(5), 2, 3), /at least 2 x 3 = 6/);
  assertThrows(() => quantizeActivations(new Float32Array(6), 2, 3, { qmax: 100 }), /127 or 255/);
  if (int8ActivationQmax() === 127) {
    assertThrows(
      () => quantizeActivations(new Float32Array(6), 2, 3, { layout: "packed", qmax: 255 }),
      /up to 127 here, got qmax 255/,
    );
  }
});

Deno.test("quantize reuses a large enough workspace", () => {
  const x = randomF32(8 * 20, 5);
  const first = quantizeActivations(x, 8, 20, { layout: "packed" });
  const second = quantizeActivations(x, 3, 20, { layout: "packed", into: first });
  if (second.data.buffer !== first.data.buffer) throw new Error("Workspace was not reused");
  const rows = quantizeActivations(x, 3, 20);
  if (rows.stride !== rowStride(20)) throw new Error("Unexpected row stride");
});

Deno.test(`weight quantization equals the reference and is symmetric (${variantLabel()})`, () => {
  const [n, k] = [37, 53];
  const w = randomF32(n * k, 9, -2, 2);
  w.fill(0, 5 * k, 6 * k); // an all-zero channel
  w[7 * k + 3] = 10; // a channel with one large weight
  w[8 * k + 1] = -10;
  const q = quantizeWeights({ out: n, in: k, weight: w });
  const ref = quantizeWeightsReference(w, n, k);
  assertEqualInts(q.weight, ref.q, "int8 weights");
  assertEqualInts(q.scale, ref.scale, "weight scales");
  assertEqualInts([q.weight[7 * k + 3], q.weight[8 * k + 1], q.scale[5]], [127, -127, 1], "ends");
  for (let i = 0; i < w.length; i++) {
    if ((w[i] === 0) !== (q.weight[i] === 0) && w[i] === 0) throw new Error("A zero weight moved");
  }
  assertThrows(
    () => quantizeWeights({ out: 1, in: 2, weight: new Float32Array([1, NaN]) }),
    /NaN or infinity/,
  );
});

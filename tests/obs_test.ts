/**
 * OBS pruning's core (compress/obs.ts): the inverse factor against a direct inverse, the sweep
 * against the closed-form OBS update, its reconstruction error against magnitude and Wanda on
 * the same unit count, exact counts, the 4x1 pattern, already-zero units, determinism. The
 * model-level `--method obs` tests are in tests/prune_test.ts.
 */
import assert from "node:assert/strict";
import {
  addOuterProduct,
  cholesky,
  dampen,
  inverseUpperFactor,
  obsPrune,
  type ObsPruneOptions,
  symmetrize,
} from "../compress/obs.ts";
import { lowestUnits, unitScores } from "../compress/prune.ts";
import type { DenseWeight } from "../encoder/weights.ts";

/** Seeded uniform numbers in [-1, 1). */
function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 31 - 1;
  };
}

/** `tokens x n` activations with correlated features (a random mix plus per-feature scales). */
function activations(tokens: number, n: number, seed: number): Float32Array {
  const r = rng(seed);
  const latent = Math.max(2, Math.floor(n / 2));
  const mix = Array.from({ length: latent * n }, r);
  const scale = Array.from({ length: n }, () => 0.2 + 2 * Math.abs(r()));
  const x = new Float32Array(tokens * n);
  for (let t = 0; t < tokens; t++) {
    const z = Array.from({ length: latent }, r);
    for (let i = 0; i < n; i++) {
      let v = 0.3 * r();
      for (let k = 0; k < latent; k++) v += z[k] * mix[k * n + i];
      x[t * n + i] = v * scale[i];
    }
  }
  return x;
}

/** `2 X^T X` through the module's own accumulation. */
function hessian(x: Float32Array, tokens: number, n: number): Float64Array {
  const h = new Float64Array(n * n);
  for (let t = 0; t < tokens; t++) addOuterProduct(h, n, x, t * n);
  symmetrize(h, n);
  return h.map((v) => 2 * v);
}

/** Inverse by Gauss-Jordan elimination with partial pivoting (the test's reference). */
function inverse(a: Float64Array, n: number): Float64Array {
  const m = Float64Array.from(a);
  const inv = new Float64Array(n * n);
  for (let i = 0; i < n; i++) inv[i * n + i] = 1;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(m[r * n + c]) > Math.abs(m[p * n + c])) p = r;
    for (let k = 0; k < n; k++) {
      [m[c * n + k], m[p * n + k]] = [m[p * n + k], m[c * n + k]];
      [inv[c * n + k], inv[p * n + k]] = [inv[p * n + k], inv[c * n + k]];
    }
    const d = m[c * n + c];
    for (let k = 0; k < n; k++) {
      m[c * n + k] /= d;
      inv[c * n + k] /= d;
    }
    for (let r = 0; r < n; r++) {
      if (r === c) continue;
      const f = m[r * n + c];
      for (let k = 0; k < n; k++) {
        m[r * n + k] -= f * m[c * n + k];
        inv[r * n + k] -= f * inv[c * n + k];
      }
    }
  }
  return inv;
}

/** `sum_r (w_r - w'_r)^T H (w_r - w'_r)`: the squared output error on the calibration inputs. */
function outputError(w0: Float64Array, w1: Float64Array, h: Float64Array, out: number): number {
  const n = Math.round(Math.sqrt(h.length));
  let e = 0;
  for (let r = 0; r < out; r++) {
    for (let i = 0; i < n; i++) {
      const di = w0[r * n + i] - w1[r * n + i];
      if (di === 0) continue;
      for (let j = 0; j < n; j++) e += di * h[i * n + j] * (w0[r * n + j] - w1[r * n + j]);
    }
  }
  return e;
}

function randomWeight(out: number, n: number, seed: number): Float64Array {
  const r = rng(seed);
  return Float64Array.from({ length: out * n }, r);
}

/** A damped Hessian and its inverse factor for `tokens x n` random activations. */
function problem(tokens: number, n: number, seed: number) {
  const h = hessian(activations(tokens, n, seed), tokens, n);
  const damped = Float64Array.from(h);
  dampen(damped, n);
  return { h, damped, hinvUpper: inverseUpperFactor(damped, n) };
}

/** Zeroes the units of `mask` (indexed like unitScores) in a copy of `w`. */
function zeroUnits(
  w: Float64Array,
  out: number,
  n: number,
  pattern: "4x1" | "unstructured",
  mask: Uint8Array,
): Float64Array {
  const z = Float64Array.from(w);
  for (let r = 0; r < out; r++) {
    for (let j = 0; j < n; j++) {
      if (mask[(pattern === "4x1" ? r >> 2 : r) * n + j]) z[r * n + j] = 0;
    }
  }
  return z;
}

function asDense(w: Float64Array, out: number, n: number): DenseWeight {
  return { out, in: n, weight: Float32Array.from(w), bias: new Float32Array(out) };
}

Deno.test("obs: the inverse factor is the upper Cholesky factor of H^-1", () => {
  const n = 9;
  const { damped, hinvUpper: u } = problem(40, n, 3);
  const ref = inverse(damped, n);
  for (let i = 0; i < n; i++) {
    assert.ok(u[i * n + i] > 0, `diagonal ${i} is ${u[i * n + i]}`);
    for (let j = 0; j < i; j++) assert.equal(u[i * n + j], 0, `U[${i}, ${j}] below the diagonal`);
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += u[k * n + i] * u[k * n + j];
      const tol = 1e-9 * Math.abs(ref[i * n + i]);
      assert.ok(
        Math.abs(s - ref[i * n + j]) <= tol,
        `(U^T U)[${i}, ${j}] ${s} vs ${ref[i * n + j]}`,
      );
    }
  }
  // L L^T = A for the Cholesky factor itself.
  const l = cholesky(damped, n);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let k = 0; k < n; k++) s += l[i * n + k] * l[j * n + k];
      assert.ok(Math.abs(s - damped[i * n + j]) < 1e-9 * damped[i * n + i]);
    }
  }
  assert.throws(
    () => cholesky(Float64Array.from([1, 2, 2, 1]), 2),
    /not positive definite: pivot 1 is -3/,
  );
  // A dead input (zero on every token) still inverts.
  const dead = new Float64Array(4);
  dead[0] = 4;
  assert.equal(dampen(dead, 2, 0.5), 1.25);
  assert.deepEqual(Array.from(dead), [5.25, 0, 0, 2.25]);
  assert.throws(() => dampen(dead, 2, -1), /Invalid dampening -1/);
});

Deno.test("obs: no pruning leaves the weight unchanged", () => {
  const out = 8;
  const n = 20;
  const { hinvUpper } = problem(30, n, 5);
  const w = randomWeight(out, n, 6);
  const before = Float64Array.from(w);
  const mask = obsPrune({ weight: w, out, in: n, hinvUpper, pattern: "4x1", count: 0 });
  assert.deepEqual(w, before);
  assert.ok(mask.every((m) => m === 0));
});

Deno.test("obs: one pruned column gets the closed-form OBS update", () => {
  const out = 4;
  const n = 6;
  const { damped, hinvUpper } = problem(20, n, 11);
  const w = randomWeight(out, n, 12);
  // Column 0 is tiny, so the one 4x1 unit pruned is (rows 0-3, column 0).
  for (let r = 0; r < out; r++) w[r * n] *= 1e-3;
  const w0 = Float64Array.from(w);
  const mask = obsPrune({ weight: w, out, in: n, hinvUpper, pattern: "4x1", count: 1 });
  assert.deepEqual(Array.from(mask), [1, 0, 0, 0, 0, 0]);
  // Optimum with w'_0 = 0: w'_K = w_K + H_KK^-1 H_K0 w_0, K = columns 1..n-1.
  const k = n - 1;
  const hkk = new Float64Array(k * k);
  for (let i = 0; i < k; i++) {
    for (let j = 0; j < k; j++) hkk[i * k + j] = damped[(i + 1) * n + j + 1];
  }
  const inv = inverse(hkk, k);
  for (let r = 0; r < out; r++) {
    assert.equal(w[r * n], 0);
    for (let i = 0; i < k; i++) {
      let delta = 0;
      for (let j = 0; j < k; j++) delta += inv[i * k + j] * damped[(j + 1) * n] * w0[r * n];
      const want = w0[r * n + i + 1] + delta;
      assert.ok(
        Math.abs(w[r * n + i + 1] - want) < 1e-12,
        `row ${r} column ${i + 1}: ${w[r * n + i + 1]} vs ${want}`,
      );
      assert.notEqual(w[r * n + i + 1], w0[r * n + i + 1], "kept weights were updated");
    }
  }
});

Deno.test("obs: smaller output error than magnitude and Wanda on the same unit count", () => {
  for (const pattern of ["4x1", "unstructured"] as const) {
    for (const sparsity of [0.5, 0.8]) {
      const out = 16;
      const n = 48;
      const tokens = 96;
      const x = activations(tokens, n, 21);
      const { h, hinvUpper } = problem(tokens, n, 21);
      const w0 = randomWeight(out, n, 22);
      const units = (pattern === "4x1" ? out / 4 : out) * n;
      const count = Math.round(sparsity * units);
      const w = Float64Array.from(w0);
      obsPrune({ weight: w, out, in: n, hinvUpper, pattern, count, blockSize: 16 });
      const norms = new Float64Array(n);
      for (let t = 0; t < tokens; t++) for (let i = 0; i < n; i++) norms[i] += x[t * n + i] ** 2;
      const wanda = lowestUnits(
        unitScores(asDense(w0, out, n), pattern, norms.map(Math.sqrt)),
        count,
      );
      const magnitude = lowestUnits(unitScores(asDense(w0, out, n), pattern, null), count);
      const eObs = outputError(w0, w, h, out);
      const eWanda = outputError(w0, zeroUnits(w0, out, n, pattern, wanda), h, out);
      const eMagnitude = outputError(w0, zeroUnits(w0, out, n, pattern, magnitude), h, out);
      const label = `${pattern} ${sparsity}: obs ${eObs}, wanda ${eWanda}, magnitude ${eMagnitude}`;
      assert.ok(eObs < 0.95 * eWanda && eObs < 0.95 * eMagnitude, label);
    }
  }
});

Deno.test("obs: exact unit counts, the 4x1 pattern, already-zero units, determinism", () => {
  // 10 rows: two 4-row units and a short one of 2 rows; 300 columns: blocks of 128, 128, 44.
  const out = 10;
  const n = 300;
  const { hinvUpper } = problem(400, n, 31);
  const run = (o: Partial<ObsPruneOptions> & { count: number }) => {
    const weight = o.weight ?? randomWeight(out, n, 32);
    const mask = obsPrune({ weight, out, in: n, hinvUpper, pattern: "4x1", ...o });
    return { weight, mask };
  };
  for (const sparsity of [0.3, 0.7, 0.9]) {
    const count = Math.round(sparsity * 3 * n);
    const { weight, mask } = run({ count });
    assert.equal(mask.reduce((a, b) => a + b, 0), count, `4x1 count at ${sparsity}`);
    for (let r = 0; r < out; r++) {
      for (let j = 0; j < n; j++) {
        const zero = weight[r * n + j] === 0;
        assert.equal(zero, mask[(r >> 2) * n + j] === 1, `row ${r} column ${j} at ${sparsity}`);
      }
    }
    const un = run({ count: Math.round(sparsity * out * n), pattern: "unstructured" });
    assert.equal(un.mask.reduce((a, b) => a + b, 0), Math.round(sparsity * out * n));
    assert.equal(un.weight.filter((v) => v === 0).length, Math.round(sparsity * out * n));
  }
  // Units that are zero at the start stay zero, even where they outnumber their block's share
  // (300 zero units in the first block, whose share of 450 is 192; the later blocks prune
  // fewer), and where they outnumber the whole count (the count is then the zeros).
  const sparse = randomWeight(out, n, 33);
  for (let r = 0; r < out; r++) for (let j = 0; j < 100; j++) sparse[r * n + j] = 0;
  for (const [count, want] of [[450, 450], [200, 300]]) {
    const { weight: s, mask: sm } = run({ weight: Float64Array.from(sparse), count });
    for (let r = 0; r < out; r++) for (let j = 0; j < 100; j++) assert.equal(s[r * n + j], 0);
    assert.equal(sm.reduce((a, b) => a + b, 0), want, `count ${count}`);
  }
  // The same input gives the same bits.
  const a = run({ count: 500 });
  const b = run({ count: 500 });
  assert.deepEqual(a.weight, b.weight);
  assert.deepEqual(a.mask, b.mask);
  assert.throws(
    () => run({ count: 3 * n + 1 }),
    /Invalid count 901: expected an integer in \[0, 900\]/,
  );
  assert.throws(() => run({ count: 1, blockSize: 0 }), /Invalid block size 0/);
  assert.throws(
    () =>
      obsPrune({ weight: new Float64Array(3), out, in: n, hinvUpper, pattern: "4x1", count: 0 }),
    /Expected 3000 weights for \[10, 300\], got 3/,
  );
});

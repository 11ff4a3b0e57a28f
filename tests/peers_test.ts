/**
 * Benchmark peers: onnxruntime-node one-op models against JS references (always runs), and a
 * smoke test of the Python peers (runs only when tools/peers/setup_peers.ts created
 * `.cache/venv/peers`; says so when skipped).
 */

import assert from "node:assert/strict";
import * as ort from "onnxruntime-node";
import {
  bertFeeds,
  bertInputIds,
  latencyStats,
  loadOrtSession,
  matMulIntegerModel,
  matMulModel,
  timeOrtRuns,
} from "../bench/peers/ort_node.ts";
import {
  DEFAULT_VENV_ROOT,
  exitText,
  PeerError,
  peerPython,
  PythonPeer,
  runPeerOnce,
  stderrSummary,
} from "../bench/peers/mod.ts";
import { writeTestModel } from "./fixtures/write_test_model.ts";
import { withTempDir } from "./helpers.ts";
import { cpuFeatureReport, probeCpuFeatures } from "../ffi/library.ts";
import { mulberry32 as rng } from "../ops/random.ts";

function refMatMul(x: Float32Array, w: Float32Array, m: number, k: number, n: number) {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let kk = 0; kk < k; kk++) {
      const xv = x[i * k + kk];
      for (let j = 0; j < n; j++) y[i * n + j] += xv * w[kk * n + j];
    }
  }
  return y;
}

/**
 * `(x - zp) · w` in s32, exact, or as MLAS's AVX2 u8s8 kernel computes it (`sat16`):
 * `vpmaddubsw` adds the products of K positions 2j and 2j+1 with int16 saturation,
 * `vpmaddwd`/`vpaddd` sum those exactly, and the zero-point is applied afterwards through
 * column sums of W. Without saturation the two are the same sum.
 */
function refMatMulInteger(
  x: Uint8Array,
  zp: number,
  w: Int8Array,
  dims: { m: number; k: number; n: number },
  sat16 = false,
): Int32Array {
  const { m, k, n } = dims;
  const y = new Int32Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let acc = 0;
      let colSum = 0;
      for (let kk = 0; kk < k; kk += 2) {
        const p0 = x[i * k + kk] * w[kk * n + j];
        const p1 = kk + 1 < k ? x[i * k + kk + 1] * w[(kk + 1) * n + j] : 0;
        acc += sat16 ? Math.max(-32768, Math.min(32767, p0 + p1)) : p0 + p1;
        colSum += w[kk * n + j] + (kk + 1 < k ? w[(kk + 1) * n + j] : 0);
      }
      y[i * n + j] = acc - zp * colSum;
    }
  }
  return y;
}

Deno.test("ort-node one-op MatMul equals a JS fp32 reference", async () => {
  const [m, k, n] = [7, 67, 33];
  const r = rng(1);
  const w = Float32Array.from({ length: k * n }, () => r() * 2 - 1);
  const x = Float32Array.from({ length: m * k }, () => r() * 2 - 1);
  // Symbolic M: the same model serves any token count.
  const session = await loadOrtSession(matMulModel({ m: null, k, n, weights: w }), { threads: 2 });
  try {
    const out = await session.run({ X: new ort.Tensor("float32", x, [m, k]) });
    assert.deepEqual(out.Y.dims, [m, n]);
    const y = out.Y.data as Float32Array;
    const ref = refMatMul(x, w, m, k, n);
    for (let i = 0; i < ref.length; i++) {
      const tol = 1e-5 * Math.max(1, Math.abs(ref[i]));
      assert.ok(Math.abs(y[i] - ref[i]) <= tol, `Y[${i}] = ${y[i]}, reference ${ref[i]}`);
    }
  } finally {
    await session.release();
  }
});

Deno.test("ort-node one-op MatMulInteger is exact when no int16 pair can saturate", async () => {
  const dims = { m: 9, k: 130, n: 20 };
  const r = rng(2);
  // |w| <= 63: two u8 x s8 products sum to at most 2 * 255 * 63 = 32130 < 32767.
  const w = Int8Array.from({ length: dims.k * dims.n }, () => Math.floor(r() * 127) - 63);
  const x = Uint8Array.from({ length: dims.m * dims.k }, () => Math.floor(r() * 256));
  const zp = 131;
  const session = await loadOrtSession(
    matMulIntegerModel({ m: dims.m, k: dims.k, n: dims.n, weights: w, xZeroPoint: zp }),
    { threads: 1 },
  );
  try {
    const out = await session.run({ X: new ort.Tensor("uint8", x, [dims.m, dims.k]) });
    assert.equal(out.Y.type, "int32");
    assert.deepEqual(
      Array.from(out.Y.data as Int32Array),
      Array.from(refMatMulInteger(x, zp, w, dims)),
    );
  } finally {
    await session.release();
  }
});

Deno.test("ort-node MatMulInteger at extreme values: exact or MLAS int16 saturation", async () => {
  // Full-range data: on AVX2 without VNNI, MLAS's u8s8 kernel saturates pairs in int16 (the
  // kernel benchmark must know that its ORT baseline is not exact there).
  const dims = { m: 4, k: 64, n: 16 };
  const r = rng(3);
  const w = Int8Array.from(
    { length: dims.k * dims.n },
    (_, i) => (i % 3 === 0 ? 127 : -128) * (r() < 0.9 ? 1 : 0),
  );
  const x = Uint8Array.from({ length: dims.m * dims.k }, () => (r() < 0.8 ? 255 : 0));
  const session = await loadOrtSession(
    matMulIntegerModel({ m: dims.m, k: dims.k, n: dims.n, weights: w, xZeroPoint: 0 }),
    { threads: 1 },
  );
  try {
    const out = await session.run({ X: new ort.Tensor("uint8", x, [dims.m, dims.k]) });
    const got = Array.from(out.Y.data as Int32Array);
    const exact = Array.from(refMatMulInteger(x, 0, w, dims));
    const sat = Array.from(refMatMulInteger(x, 0, w, dims, true));
    assert.notDeepEqual(exact, sat, "test data must be able to saturate");
    const isExact = got.every((v, i) => v === exact[i]);
    const isSat = got.every((v, i) => v === sat[i]);
    assert.ok(
      isExact || isSat,
      `ORT gave ${got.slice(0, 4)}, exact ${exact.slice(0, 4)}, ` +
        `int16-saturated ${sat.slice(0, 4)}`,
    );
    console.log(`ORT MatMulInteger u8s8 on this CPU: ${isExact ? "exact" : "int16-saturating"}`);
  } finally {
    await session.release();
  }
});

Deno.test("one-op model builders and session loading reject bad arguments", async () => {
  assert.throws(
    () => matMulModel({ m: 2, k: 3, n: 4, weights: new Float32Array(11) }),
    /Weights hold 11 values, expected K\*N = 12/,
  );
  assert.throws(
    () => matMulIntegerModel({ m: 2, k: 3, n: 4, weights: new Int8Array(12), xZeroPoint: 256 }),
    /Zero-point must be an integer in \[0, 255\], got '256'/,
  );
  assert.throws(() => matMulModel({ m: 0, k: 3, n: 4, weights: new Float32Array(12) }), /M/);
  await assert.rejects(() => loadOrtSession(new Uint8Array(8), { threads: 0 }), /Thread count/);
  await assert.rejects(() => loadOrtSession(Uint8Array.of(1, 2, 3), { threads: 1 }), /cannot load/);
});

Deno.test("bertInputIds: LCG ids in [1000, 2000), deterministic per seed", () => {
  const a = bertInputIds(2, 64, 5);
  assert.equal(a.length, 128);
  assert.deepEqual(a, bertInputIds(2, 64, 5));
  assert.notDeepEqual(a, bertInputIds(2, 64, 6));
  for (const v of a) assert.ok(v >= 1000n && v < 2000n, `id ${v}`);
  // First value by hand: (5 * 1664525 + 1013904223) mod 2^32 = 1022226848; >>> 16 = 15597.
  assert.equal(a[0], BigInt(1000 + (15597 % 1000)));
  assert.throws(() => bertInputIds(0, 4, 1), /Batch must be/);
});

Deno.test("latencyStats uses numpy's linear percentiles", () => {
  const s = latencyStats([4, 1, 3, 2, 5], 2);
  assert.equal(s.medianMs, 3);
  assert.ok(Math.abs(s.p90Ms - 4.6) < 1e-12);
  assert.equal(s.minMs, 1);
  assert.equal(s.maxMs, 5);
  assert.ok(Math.abs(s.itemsPerS - (2 * 5 * 1000) / 15) < 1e-9);
  assert.throws(() => latencyStats([]), /empty/);
  assert.throws(() => latencyStats([1, NaN]), /not a duration/);
});

Deno.test("stderrSummary picks the assertion or the exception line", () => {
  assert.equal(
    stderrSummary("banner\nAssertion at ./src/x.hpp:120\n\nBacktrace:\n 0# foo\n"),
    "Assertion at ./src/x.hpp:120",
  );
  assert.equal(
    stderrSummary("Traceback (most recent call last):\n  File x\nValueError: bad shape\n"),
    "ValueError: bad shape",
  );
  assert.equal(stderrSummary(""), "");
});

async function hasVenv(runtime: "ort" | "deepsparse"): Promise<boolean> {
  try {
    await Deno.stat(peerPython(runtime));
    return true;
  } catch {
    return false;
  }
}

/**
 * A peers test (`ignore`d without the venv) on a one-layer seeded bert-mini written to a
 * temporary folder, removed afterwards.
 */
function tinyModelTest(
  name: string,
  ignore: boolean,
  seed: number,
  fn: (dir: string, model: string) => Promise<void>,
): void {
  Deno.test({
    name,
    ignore,
    sanitizeResources: false,
    fn: () =>
      withTempDir("peers_test_", async (dir) => {
        const model = `${dir}/tiny.onnx`;
        await writeTestModel(model, {
          preset: "bert-mini",
          config: { numLayers: 1, vocabSize: 2048 },
          seed,
        });
        await fn(dir, model);
      }),
  });
}

const havePeers = await hasVenv("ort");
if (!havePeers) {
  console.log(
    `SKIPPED Python peers smoke test: no venv at ${DEFAULT_VENV_ROOT}/peers ` +
      "(run deno run -A tools/peers/setup_peers.ts)",
  );
}

tinyModelTest(
  "Python peers (ort, openvino) agree with onnxruntime-node on a test BERT",
  !havePeers,
  3,
  async (_dir, model) => {
    const shape = { batch: 2, seq: 16, seed: 4 };
    const session = await loadOrtSession(model, { threads: 1 });
    let refMeanAbs: number;
    try {
      const timed = await timeOrtRuns(session, bertFeeds(session, shape), {
        iterations: 2,
        warmup: 1,
      });
      const y = Object.values(timed.outputs)[0].data as Float32Array;
      refMeanAbs = y.reduce((a, v) => a + Math.abs(v), 0) / y.length;
      assert.equal(timed.latenciesMs.length, 2);
    } finally {
      await session.release();
    }
    const idsSum = bertInputIds(shape.batch, shape.seq, shape.seed).reduce((a, b) => a + b, 0n);
    for (const runtime of ["ort", "openvino"] as const) {
      await using peer = await PythonPeer.start({ runtime, model, threads: 1, ...shape });
      assert.equal(peer.info.inputIdsSum, Number(idsSum), `${runtime}: same token ids`);
      assert.equal(peer.info.model.quantization, "fp32");
      const r = await peer.run({ iterations: 3, warmup: 1 });
      assert.equal(r.iterations, 3);
      assert.equal(r.latenciesMs.length, 3);
      assert.ok(r.p90Ms >= r.medianMs && r.medianMs > 0);
      assert.deepEqual(r.output?.shape, [2, 16, 256]);
      const rel = Math.abs(r.output!.meanAbs! - refMeanAbs) / refMeanAbs;
      assert.ok(rel < 1e-4, `${runtime} mean |y| ${r.output!.meanAbs} vs ORT-node ${refMeanAbs}`);
      const bad = await peer.send({ cmd: "fly" });
      assert.equal(bad.ok, false);
      assert.match(String(bad.error), /unknown command 'fly'/);
      const again = await peer.run({ iterations: 1 });
      assert.equal(again.iterations, 1);
    }
    // Two streams: pooled latencies, one loop per stream.
    const { result } = await runPeerOnce({
      runtime: "ort",
      model,
      threads: 1,
      streams: 2,
      ...shape,
      iterations: 2,
    });
    assert.deepEqual(result.perStreamIterations, [2, 2]);
    assert.equal(result.latenciesMs.length, 4);
  },
);

const haveDeepSparse = havePeers && await hasVenv("deepsparse");
if (havePeers && !haveDeepSparse) {
  console.log(`SKIPPED DeepSparse smoke test: no venv at ${DEFAULT_VENV_ROOT}/deepsparse`);
}

tinyModelTest(
  "DeepSparse runs fp32 like ORT and fails with its assertion on ORT dynamic int8",
  !haveDeepSparse,
  5,
  async (dir, model) => {
    const shape = { batch: 1, seq: 32, threads: 1 };
    const ortRun = await runPeerOnce({ runtime: "ort", model, ...shape, iterations: 1 });
    const ds = await runPeerOnce({ runtime: "deepsparse", model, ...shape, iterations: 2 });
    // DeepSparse names the widest vector ISA it found; expect what this CPU's probe found.
    const cpu = cpuFeatureReport(probeCpuFeatures());
    assert.equal(ds.info.config.cpu_avx_type, cpu.avx512f ? "avx512" : "avx2");
    const a = ortRun.result.output!.meanAbs!;
    const b = ds.result.output!.meanAbs!;
    assert.ok(Math.abs(a - b) / a < 1e-3, `DeepSparse mean |y| ${b} vs ORT ${a}`);
    // ORT's dynamic quantization (DynamicQuantizeLinear + MatMulInteger), written by the
    // peers venv's onnxruntime.quantization.
    const quant = `${dir}/tiny_dyn.onnx`;
    const q = await new Deno.Command(peerPython("ort"), {
      args: [
        "-c",
        "import sys\nfrom onnxruntime.quantization import quantize_dynamic, QuantType\n" +
        "quantize_dynamic(sys.argv[1], sys.argv[2], weight_type=QuantType.QInt8)",
        model,
        quant,
      ],
      stdout: "null",
      stderr: "piped",
    }).output();
    assert.equal(q.code, 0, new TextDecoder().decode(q.stderr));
    try {
      await runPeerOnce({ runtime: "deepsparse", model: quant, ...shape, iterations: 1 });
      assert.fail("DeepSparse 1.8.0 was expected to refuse ORT dynamic int8");
    } catch (e) {
      assert.ok(e instanceof PeerError, String(e));
      assert.equal(e.stage, "exit");
      assert.match(e.message, /Assertion at .*planner\.hpp/);
    }
  },
);

Deno.test({
  name: "Python peer failures surface as PeerError with the peer's message",
  ignore: !havePeers,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "peers_test_" });
    try {
      const bogus = `${dir}/not_a_model.onnx`;
      await Deno.writeTextFile(bogus, "this is not protobuf");
      try {
        await PythonPeer.start({ runtime: "ort", model: bogus });
        assert.fail("a non-ONNX file must not load");
      } catch (e) {
        assert.ok(e instanceof PeerError, String(e));
        assert.equal(e.stage, "inspect");
        assert.match(e.message, /Cannot read ONNX model/);
      }
      await assert.rejects(
        () => PythonPeer.start({ runtime: "ort", model: bogus, python: `${dir}/no_python` }),
        (e: unknown) => e instanceof PeerError && e.stage === "spawn",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("exitText names the exit code, or the signal with a hint for SIGKILL", async () => {
  const fails = await new Deno.Command("sh", { args: ["-c", "exit 3"] }).output();
  assert.equal(exitText(fails), "exited with code 3");
  // A process killed from outside, as the out-of-memory killer does.
  const child = new Deno.Command("sleep", { args: ["30"], stdout: "null", stderr: "null" }).spawn();
  child.kill("SIGKILL");
  const killed = await child.status;
  assert.match(exitText(killed), /^was killed by SIGKILL \(.*out-of-memory killer/);
  const child2 = new Deno.Command("sleep", { args: ["30"], stdout: "null", stderr: "null" })
    .spawn();
  child2.kill("SIGTERM");
  assert.equal(exitText(await child2.status), "was killed by SIGTERM");
});

// Worker faults. A worker process killed under load fails only the requests it was running,
// with 503 and the reason. The signals: SIGKILL, as the out-of-memory killer sends it, and
// SIGABRT, as a native crash ends a process (a Zig safety panic, glibc's heap checks); a
// SIGSEGV sent with kill() does not end a Deno process (V8's trap handler takes it). Then:
// every request is answered exactly once, the worker comes back, readiness is false meanwhile,
// and /metrics and the log report it.
import assert from "node:assert/strict";
import { encodeFrame, MAX_FRAME_BYTES, readFrames, TruncatedFrameError } from "../serve/frames.ts";
import { spawnServer } from "../serve/spawn.ts";
import { maxAbsDiff, post } from "./serve_helpers.ts";

const MODEL = "minilm";
const TEXTS = Array.from(
  { length: 24 },
  (_, i) =>
    `Request ${i}: sparse int8 encoders keep answering while a worker process ${
      "is restarted after a fault ".repeat(1 + (i % 4))
    }`,
);
// Batches differ in padding between the reference and the load: summation order only.
const TOLERANCE = 2e-5;

interface Answer {
  text: number;
  status: number;
  code: string | null;
  message: string | null;
  embedding: number[] | null;
}

function config(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    limits: { maxInputs: 8, queueTimeoutMs: 60_000 },
    models: [{
      name: MODEL,
      model: "all-minilm-l6-v2",
      maxLength: 128,
      maxBatch: 8,
      maxWaitMs: 2,
      maxQueue: 1024,
      ...extra,
    }],
  };
}

async function embed(url: string, text: number): Promise<Answer> {
  const response = await post(`${url}/v1/embeddings`, { model: MODEL, input: TEXTS[text] });
  const body = await response.json();
  return {
    text,
    status: response.status,
    code: body.error?.code ?? null,
    message: body.error?.message ?? null,
    embedding: body.data?.[0]?.embedding ?? null,
  };
}

async function readiness(url: string): Promise<boolean> {
  const r = await fetch(`${url}/v2/health/ready`);
  await r.body?.cancel();
  return r.status === 200;
}

function metric(text: string, line: string): number {
  const found = text.split("\n").find((l) => l.startsWith(line + " "));
  return found === undefined ? 0 : Number(found.slice(line.length + 1));
}

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`Timed out waiting for ${what}`);
}

function workerPid(logs: Record<string, unknown>[]): number {
  const events = logs.filter((l) => l.event === "model_loaded" || l.event === "worker_restarted");
  const last = events.at(-1)!;
  return last.event === "model_loaded" ? (last.pids as number[])[0] : last.pid as number;
}

Deno.test({
  name: "serve: a worker killed under load fails only its batch (503 + reason), then comes back",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const server = await spawnServer({ config: config(), inheritStderr: false });
    try {
      const reference = new Map<number, number[]>();
      for (let i = 0; i < TEXTS.length; i++) {
        const answer = await embed(server.url, i);
        assert.equal(answer.status, 200, answer.message ?? "");
        reference.set(i, answer.embedding!);
      }
      const firstPid = workerPid(server.logs);
      const answers: Answer[] = [];
      let sent = 0;
      let stop = false;
      const clients = Array.from({ length: 6 }, async (_, c) => {
        // Bounded: each client sends until told to stop, at most 400 requests.
        for (let n = 0; n < 400 && !stop; n++) {
          sent++;
          answers.push(await embed(server.url, (c * 7 + n) % TEXTS.length));
        }
      });
      let sawNotReady = false;
      for (const signal of ["SIGKILL", "SIGABRT"] as const) {
        await new Promise((r) => setTimeout(r, 700));
        const pid = workerPid(server.logs);
        Deno.kill(pid, signal);
        let dropped = false;
        await until("readiness to drop", async () => {
          dropped ||= !(await readiness(server.url));
          sawNotReady ||= dropped;
          return dropped ||
            server.logs.some((l) => l.event === "worker_restarted" && l.pid !== pid);
        });
        await until(
          "the worker to come back",
          async () => workerPid(server.logs) !== pid && await readiness(server.url),
        );
      }
      await new Promise((r) => setTimeout(r, 500));
      stop = true;
      await Promise.all(clients);

      // Every request answered once: 200 with its own text's embedding, or 503 with the reason.
      assert.equal(answers.length, sent);
      const failed = answers.filter((a) => a.status !== 200);
      for (const a of failed) {
        assert.equal(a.status, 503, `${a.status}: ${a.message}`);
        assert.equal(a.code, "worker_failed", a.message ?? "");
        assert.match(
          a.message!,
          /Worker \d+ of model "minilm" was killed by signal SIG(KILL|ABRT)/,
        );
      }
      for (const signal of ["SIGKILL", "SIGABRT"]) {
        assert.ok(
          failed.some((a) => a.message!.includes(signal)),
          `no request failed with ${signal}; ${failed.length} failed of ${answers.length}`,
        );
      }
      const ok = answers.filter((a) => a.status === 200);
      assert.ok(ok.length > failed.length, `${ok.length} ok, ${failed.length} failed`);
      for (const a of ok) {
        const diff = maxAbsDiff(a.embedding!, reference.get(a.text)!);
        assert.ok(diff <= TOLERANCE, `text ${a.text}: embedding differs by ${diff}`);
      }
      assert.ok(sawNotReady, "readiness never reported false while the worker restarted");
      assert.notEqual(workerPid(server.logs), firstPid);

      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      const faults = (cause: string) =>
        metric(metrics, `sparsebert_worker_restarts_total{model="${MODEL}",cause="${cause}"}`);
      assert.equal(faults("signal:SIGKILL"), 1);
      assert.equal(faults("signal:SIGABRT"), 1);
      assert.equal(metric(metrics, `sparsebert_workers_live{model="${MODEL}"}`), 1);
      const route = '{route="/v1/embeddings",method="POST",status=';
      assert.equal(
        metric(metrics, `sparsebert_requests_total${route}"200"}`),
        ok.length + TEXTS.length,
      );
      assert.equal(metric(metrics, `sparsebert_requests_total${route}"503"}`), failed.length);
      const died = server.logs.filter((l) => l.event === "worker_died");
      assert.deepEqual(died.map((l) => l.cause), ["signal:SIGKILL", "signal:SIGABRT"]);
      assert.equal(
        died.reduce((s, l) => s + (l.failed_calls as number), 0) > 0,
        true,
        "the log names no lost batch",
      );
    } catch (err) {
      const events = server.logs.filter((l) =>
        typeof l.event === "string" && l.event !== "request"
      );
      throw new Error(
        `${(err as Error).message}; server events:\n${
          events.slice(-12).map((l) => JSON.stringify(l)).join("\n")
        }`,
        { cause: err },
      );
    } finally {
      await server.stop();
    }
  },
});

Deno.test({
  name: "serve: a worker that cannot restart keeps readiness false and answers 503, then recovers",
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const source = new URL("../.cache/models/all-minilm-l6-v2-q/", import.meta.url).pathname;
    const dir = await Deno.makeTempDir({ prefix: "sparsebert-fault-" });
    for (const file of ["model.onnx", "tokenizer.json"]) {
      await Deno.copyFile(`${source}${file}`, `${dir}/${file}`);
    }
    const server = await spawnServer({
      config: {
        ...config({ model: `${dir}/model.onnx` }),
        limits: { queueTimeoutMs: 1500 },
      },
      inheritStderr: false,
    });
    try {
      await Deno.rename(`${dir}/model.onnx`, `${dir}/model.onnx.away`);
      Deno.kill(workerPid(server.logs), "SIGKILL");
      await until(
        "a failed restart",
        () => Promise.resolve(server.logs.some((l) => l.event === "worker_restart_failed")),
      );
      assert.equal(await readiness(server.url), false);
      const model = await fetch(`${server.url}/v2/models/${MODEL}/ready`);
      assert.equal(model.status, 503);
      await model.body?.cancel();
      // A request waits for a worker up to the queue timeout, then gets 503 with the reason.
      const waiting = await embed(server.url, 0);
      assert.equal(waiting.status, 503);
      assert.equal(waiting.code, "worker_unavailable");
      assert.match(waiting.message!, /No worker of model "minilm" came back within 1500 ms/);
      await Deno.rename(`${dir}/model.onnx.away`, `${dir}/model.onnx`);
      await until("the worker to come back", () => readiness(server.url));
      const again = await embed(server.url, 1);
      assert.equal(again.status, 200, again.message ?? "");
      // One death, one replacement: a failed restart is retried, not counted as a new fault.
      const count = (event: string) => server.logs.filter((l) => l.event === event).length;
      assert.equal(count("worker_died"), 1);
      assert.equal(count("worker_restarted"), 1);
      assert.ok(count("worker_restart_failed") >= 1);
    } finally {
      await server.stop();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("worker frames: a stream cut inside a frame is told apart from a malformed frame", async () => {
  const stream = (...parts: Uint8Array[]) =>
    new ReadableStream<Uint8Array>({
      start(c) {
        for (const p of parts) c.enqueue(p);
        c.close();
      },
    });
  const read = async (s: ReadableStream<Uint8Array>) => {
    const values: unknown[] = [];
    for await (const v of readFrames(s)) values.push(v);
    return values;
  };
  const a = encodeFrame({ id: 1 });
  const b = encodeFrame({ id: 2, data: new Float32Array([1, 2]) });
  assert.deepEqual(await read(stream(a, b.subarray(0, 3), b.subarray(3))), [
    { id: 1 },
    { id: 2, data: new Float32Array([1, 2]) },
  ]);
  // A worker that dies while answering: the cause of its end is its exit status.
  await assert.rejects(() => read(stream(a, b.subarray(0, b.length - 1))), TruncatedFrameError);
  // A header no writer of ours sends: the worker broke the protocol.
  const huge = new Uint8Array(4);
  new DataView(huge.buffer).setUint32(0, MAX_FRAME_BYTES + 1, true);
  const malformed = await read(stream(huge)).catch((e) => e);
  assert.ok(malformed instanceof RangeError && !(malformed instanceof TruncatedFrameError));
});

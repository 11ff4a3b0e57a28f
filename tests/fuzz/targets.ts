/**
 * Seeded, bounded fuzzing of every parser a user's bytes reach: ONNX (protobuf structure,
 * tensor sizes), safetensors headers, the compiled `.sbert` file (memory-mapped, read by Zig;
 * its packed sparse and int8 weights are also run through a forward),
 * `tokenizer.json`, and HTTP bodies (JSON, the KServe binary extension). Each case mutates a
 * valid seed input and must end in a result or a clear error (an `Error` with a message): a
 * signal kills the process and fails the run, a case slower than `SLOW_CASE_MS` is reported
 * as a possible hang, and an allocation failure counts as an unbounded allocation.
 *
 * Used by `tests/fuzz_test.ts` (a few thousand cases, seed printed) and `tools/fuzz.ts`
 * (`deno task fuzz --minutes N`).
 *
 * @module
 */
import { BertEncoder } from "../../encoder/bert.ts";
import type { KernelChoiceOptions } from "../../encoder/kernel_choice.ts";
import { compileModel, loadCompiled } from "../../formats/compiled.ts";
import { analyzeOnnxModel, importOnnx } from "../../formats/onnx_import.ts";
import { decodeOnnxModel } from "../../formats/onnx_proto.ts";
import { modelFiles } from "../../hub/registry.ts";
import { parseSafetensors, safeTensorToFloat32 } from "../../formats/safetensors.ts";
import { BertTokenizer } from "../../pipelines/tokenizer.ts";
import { ensureTestModel } from "../fixtures/write_test_model.ts";
import { rng } from "../harness.ts";

/** Every packed kernel kind once per layer: the sparse ones' tables, the int8 ones' headers. */
const PACKED_KINDS: KernelChoiceOptions = {
  cachePath: null,
  roles: {
    qkv: "sparse-i8",
    "attention-output": "dense-i8",
    intermediate: "sparse-f32",
    output: "sparse-i8",
  },
};

/** A case slower than this is reported as a possible hang. */
export const SLOW_CASE_MS = 2000;

/** What a target does with one mutated input. */
export interface FuzzTarget {
  /** Name in reports. */
  name: string;
  /** Valid inputs the mutations start from. */
  seeds: Uint8Array[];
  /** Parses one input; returns normally or throws a clear error. */
  run(input: Uint8Array): Promise<void>;
  /** Frees what the target holds (temp files, servers). */
  close?(): Promise<void>;
}

/** A case that did not end in a result or a clear error. */
export interface FuzzFinding {
  target: string;
  seed: number;
  index: number;
  kind: "not an Error" | "unbounded allocation" | "slow (possible hang)" | "server error";
  message: string;
}

/** Counts of one target's run. */
export interface FuzzStats {
  target: string;
  cases: number;
  ok: number;
  errors: number;
  findings: FuzzFinding[];
  slowestMs: number;
}

const INTERESTING = [0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x40];

/** One seeded mutation of `seed`: bit flips, interesting bytes, huge varints, cuts, splices. */
export function mutate(seed: Uint8Array, next: () => number): Uint8Array {
  let out = seed.slice();
  const edits = 1 + Math.floor(next() * 4);
  for (let e = 0; e < edits; e++) {
    const at = Math.floor(next() * Math.max(out.length, 1));
    switch (Math.floor(next() * 7)) {
      case 0: // flip a bit
        if (out.length > 0) out[at] ^= 1 << Math.floor(next() * 8);
        break;
      case 1: // an interesting byte
        if (out.length > 0) out[at] = INTERESTING[Math.floor(next() * INTERESTING.length)];
        break;
      case 2: { // a huge varint (protobuf lengths and counts)
        const big = [0xff, 0xff, 0xff, 0xff, 0x0f];
        for (let i = 0; i < big.length && at + i < out.length; i++) out[at + i] = big[i];
        break;
      }
      case 3: // truncate
        out = out.slice(0, at);
        break;
      case 4: { // duplicate a slice
        const len = Math.floor(next() * 64);
        const copy = out.slice(at, at + len);
        const grown = new Uint8Array(out.length + copy.length);
        grown.set(out.subarray(0, at));
        grown.set(copy, at);
        grown.set(out.subarray(at), at + copy.length);
        out = grown;
        break;
      }
      case 5: { // random bytes
        const len = 1 + Math.floor(next() * 16);
        for (let i = 0; i < len && at + i < out.length; i++) out[at + i] = Math.floor(next() * 256);
        break;
      }
      default: { // a little-endian u64 / u32 of a huge or negative value (file headers)
        const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
        if (at + 8 <= out.length) {
          view.setBigUint64(at, 0xffff_ffff_ffffn << BigInt(Math.floor(next() * 16)), true);
        } else if (at + 4 <= out.length) view.setUint32(at, 0xffff_fff0, true);
      }
    }
  }
  return out;
}

/** Mutates a JSON document structurally: values replaced by other types, keys dropped. */
export function mutateJson(text: string, next: () => number): Uint8Array {
  const value = JSON.parse(text);
  const replacements: unknown[] = [null, -1, 1e308, "", "x".repeat(300), [], {}, true, 2 ** 31];
  const walk = (node: unknown, depth: number): unknown => {
    if (depth > 6 || node === null || typeof node !== "object") return node;
    const entries = Array.isArray(node)
      ? node.map((v, i) => [i, v] as const)
      : Object.entries(node);
    for (const [key, child] of entries.slice(0, 200)) {
      const r = next();
      const holder = node as Record<string | number, unknown>;
      if (r < 0.02) holder[key] = replacements[Math.floor(next() * replacements.length)];
      else if (r < 0.03 && !Array.isArray(node)) delete holder[key];
      else holder[key] = walk(child, depth + 1);
    }
    return node;
  };
  return new TextEncoder().encode(JSON.stringify(walk(value, 0)));
}

/** Runs `cases` mutated inputs through `target` from `seed`; never throws for a case. */
export async function fuzz(target: FuzzTarget, seed: number, cases: number): Promise<FuzzStats> {
  const next = rng(seed);
  const stats: FuzzStats = {
    target: target.name,
    cases,
    ok: 0,
    errors: 0,
    findings: [],
    slowestMs: 0,
  };
  for (let i = 0; i < cases; i++) {
    const base = target.seeds[Math.floor(next() * target.seeds.length)];
    const input = mutate(base, next);
    const started = performance.now();
    try {
      await target.run(input);
      stats.ok++;
    } catch (error) {
      stats.errors++;
      const finding = classify(error);
      if (finding !== null) {
        stats.findings.push({ target: target.name, seed, index: i, ...finding });
      }
    }
    const ms = performance.now() - started;
    stats.slowestMs = Math.max(stats.slowestMs, ms);
    if (ms > SLOW_CASE_MS) {
      stats.findings.push({
        target: target.name,
        seed,
        index: i,
        kind: "slow (possible hang)",
        message: `${ms.toFixed(0)} ms`,
      });
    }
  }
  return stats;
}

/** Thrown by a target when the system under test misbehaved (e.g. a server's 5xx). */
export class FuzzFailure extends Error {
  /** Creates the failure. */
  constructor(message: string) {
    super(message);
    this.name = "FuzzFailure";
  }
}

function classify(error: unknown): Omit<FuzzFinding, "target" | "seed" | "index"> | null {
  if (error instanceof FuzzFailure) return { kind: "server error", message: error.message };
  if (!(error instanceof Error) || error.message === "") {
    return { kind: "not an Error", message: String(error) };
  }
  if (
    /allocation failed|Invalid typed array length|Invalid array length|out of memory/i.test(
      error.message,
    )
  ) {
    return { kind: "unbounded allocation", message: error.message };
  }
  return null;
}

/** Every parser target, seeded from real files (MiniLM's tokenizer, generated models). */
export async function allTargets(): Promise<FuzzTarget[]> {
  const work = await Deno.makeTempDir({ prefix: "sparsebert_fuzz_" });
  const { path: onnxPath } = await ensureTestModel({
    preset: "bert-mini",
    config: { numLayers: 1, vocabSize: 512, hiddenSize: 64, numHeads: 2, intermediateSize: 128 },
    seed: 11,
  });
  const onnx = await Deno.readFile(onnxPath);
  const tokenizerText = await Deno.readTextFile(modelFiles("all-minilm-l6-v2").tokenizer);
  const weights = await importOnnx(onnxPath);
  const sbertPath = `${work}/seed.sbert`;
  await compileModel(weights, sbertPath, { tokenizer: null, kernels: { kernels: "dense-f32" } });
  const sbert = await Deno.readFile(sbertPath);
  // Sparse and int8 packed weights: their index tables are what the kernels trust, so these
  // cases build the encoder and run a forward (4x1 blocks and CSR for the fp32 layers).
  const sparseSeeds: Uint8Array[] = [];
  for (const pattern of ["4x1", "unstructured"] as const) {
    const { path } = await ensureTestModel({
      preset: "bert-mini",
      config: { numLayers: 1, vocabSize: 512, hiddenSize: 64, numHeads: 2, intermediateSize: 128 },
      sparsity: 0.8,
      pattern,
      seed: 12,
    });
    const out = `${work}/seed-${pattern}.sbert`;
    await compileModel(await importOnnx(path), out, { tokenizer: null, kernels: PACKED_KINDS });
    sparseSeeds.push(await Deno.readFile(out));
  }
  const safetensors = await Deno.readFile(
    new URL("../fixtures/st_dense/2_Dense/model.safetensors", import.meta.url),
  );
  let caseNo = 0;
  const targets: FuzzTarget[] = [
    {
      name: "onnx",
      seeds: [onnx],
      run: (input) => {
        const model = decodeOnnxModel(input, "<fuzz>");
        analyzeOnnxModel(model, "<fuzz>", null);
        return Promise.resolve();
      },
    },
    {
      name: "safetensors",
      seeds: [safetensors],
      run: (input) => {
        const file = parseSafetensors(input, "<fuzz>");
        for (const t of file.tensors.values()) safeTensorToFloat32(t);
        return Promise.resolve();
      },
    },
    {
      name: "sbert",
      seeds: [sbert],
      run: async (input) => {
        const path = `${work}/case-${caseNo++ % 4}.sbert`;
        await Deno.writeFile(path, input);
        const model = await loadCompiled(path);
        model[Symbol.dispose]();
      },
    },
    {
      name: "sbert-packed",
      seeds: sparseSeeds,
      run: async (input) => {
        const path = `${work}/case-${caseNo++ % 4}.sbert`;
        await Deno.writeFile(path, input);
        const model = await loadCompiled(path);
        try {
          using encoder = new BertEncoder(model.weights, {
            linear: model.linear,
            fuseQkv: model.fuseQkv,
          });
          const seq = 6;
          encoder.forward({
            inputIds: new Int32Array(seq).map((_, i) => 101 + i),
            attentionMask: new Int32Array(seq).fill(1),
            batch: 1,
            seq,
          });
        } finally {
          model[Symbol.dispose]();
        }
      },
    },
    {
      name: "tokenizer.json",
      seeds: [new TextEncoder().encode(tokenizerText)],
      run: (input) => {
        const tok = new BertTokenizer(
          JSON.parse(new TextDecoder().decode(input)),
          {},
          {},
          "<fuzz>",
        );
        tok.encodeBatch(["a sentence to tokenize", "another one"], { truncation: true });
        return Promise.resolve();
      },
    },
  ];
  // tokenizer.json mutations are structural too (most byte edits only break the JSON syntax).
  const next = rng(7);
  targets.find((t) => t.name === "tokenizer.json")!.seeds.push(
    ...Array.from({ length: 4 }, () => mutateJson(tokenizerText, next)),
  );
  targets[targets.length - 1].close = () => Deno.remove(work, { recursive: true });
  return targets;
}

/** Valid request bodies of each route family of the server; mutations start from these. */
export const HTTP_BODIES: [string, string][] = [
  ["/v1/embeddings", JSON.stringify({ input: ["a short text", "another"], dimensions: 64 })],
  [
    "/embed",
    JSON.stringify({ inputs: ["tei text"], truncate: true, truncation_direction: "left" }),
  ],
  ["/tokenize", JSON.stringify({ inputs: "tokenize me", add_special_tokens: true })],
  ["/decode", JSON.stringify({ ids: [[101, 7592, 102]], skip_special_tokens: true })],
  [
    "/v2/models/minilm/infer",
    JSON.stringify({ inputs: [{ name: "text", shape: [2], datatype: "BYTES", data: ["a", "b"] }] }),
  ],
];

/**
 * Mutated request bodies against a running server (model "minilm"): every answer must be a
 * 2xx, or a 4xx with a JSON body; a 5xx or a dropped connection is a finding.
 */
export function httpTarget(url: string): FuzzTarget {
  let i = 0;
  return {
    name: "http",
    seeds: HTTP_BODIES.map(([, body]) => new TextEncoder().encode(body)),
    async run(input) {
      const route = HTTP_BODIES[i++ % HTTP_BODIES.length][0];
      let response: Response;
      try {
        response = await fetch(`${url}${route}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: input as Uint8Array<ArrayBuffer>,
        });
      } catch (error) {
        throw new FuzzFailure(`${route}: no answer (${(error as Error).message})`);
      }
      const text = await response.text();
      if (response.status >= 500) {
        throw new FuzzFailure(`${route}: ${response.status} ${text.slice(0, 200)}`);
      }
      if (response.status >= 400) {
        try {
          JSON.parse(text);
        } catch {
          throw new FuzzFailure(`${route}: ${response.status} with a body that is not JSON`);
        }
        throw new Error(`${response.status}`); // a clear refusal
      }
    },
  };
}

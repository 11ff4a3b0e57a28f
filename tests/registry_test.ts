/**
 * Model registry: cache paths, the cached-model check, and the ZIP reader that extracts jars
 * and wheels (stored and deflated entries, CRC-32 check, truncated archives).
 */
import assert from "node:assert/strict";
import {
  ensureModel,
  isModelCached,
  modelFiles,
  modelNames,
  MODELS,
  ZipReader,
} from "../hub/registry.ts";
import { main } from "../tools/fetch_models.ts";
import { runCaptured } from "./helpers.ts";

function crc32(data: Uint8Array): number {
  let c = ~0;
  for (const byte of data) {
    c ^= byte;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

async function deflateRaw(data: Uint8Array): Promise<Uint8Array> {
  const stream = new Blob([data as Uint8Array<ArrayBuffer>]).stream().pipeThrough(
    new CompressionStream("deflate-raw"),
  );
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** A ZIP archive built by hand from the format description (APPNOTE.TXT). */
async function zip(entries: { name: string; data: Uint8Array; deflate: boolean }[]) {
  const parts: Uint8Array[] = [];
  const central: Uint8Array[] = [];
  let offset = 0;
  for (const e of entries) {
    const body = e.deflate ? await deflateRaw(e.data) : e.data;
    const name = new TextEncoder().encode(e.name);
    // A local header and a central directory entry hold the same fields from byte `at` on:
    // method, (time, date,) CRC-32, compressed and uncompressed sizes, name length.
    const header = (signature: number, fixed: number, at: number) => {
      const bytes = new Uint8Array(fixed + name.length);
      const view = new DataView(bytes.buffer);
      view.setUint32(0, signature, true);
      view.setUint16(at, e.deflate ? 8 : 0, true);
      view.setUint32(at + 6, crc32(e.data), true);
      view.setUint32(at + 10, body.length, true);
      view.setUint32(at + 14, e.data.length, true);
      view.setUint16(at + 18, name.length, true);
      bytes.set(name, fixed);
      return { bytes, view };
    };
    const local = header(0x04034b50, 30, 8).bytes;
    const dir = header(0x02014b50, 46, 10);
    dir.view.setUint32(42, offset, true);
    parts.push(local, body);
    central.push(dir.bytes);
    offset += local.length + body.length;
  }
  const cdSize = central.reduce((n, c) => n + c.length, 0);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, entries.length, true);
  ev.setUint16(10, entries.length, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, offset, true);
  const all = [...parts, ...central, end];
  const out = new Uint8Array(all.reduce((n, p) => n + p.length, 0));
  let p = 0;
  for (const part of all) {
    out.set(part, p);
    p += part.length;
  }
  return { bytes: out, dataOffset: 30 + entries[0].name.length };
}

Deno.test("registry: the ZIP reader extracts stored and deflated entries and checks CRC-32", async () => {
  const text = new TextEncoder().encode("tokenizer ".repeat(1000));
  const binary = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7919) & 0xff);
  const { bytes, dataOffset } = await zip([
    { name: "model/tokenizer.json", data: text, deflate: true },
    { name: "model/weights.bin", data: binary, deflate: false },
  ]);
  const reader = new ZipReader(bytes, "test.jar");
  assert.deepEqual(reader.names, ["model/tokenizer.json", "model/weights.bin"]);
  assert.deepEqual(await reader.extract("model/tokenizer.json"), text);
  assert.deepEqual(await reader.extract("model/weights.bin"), binary);
  await assert.rejects(
    () => reader.extract("nope"),
    /Corrupt ZIP archive test.jar: entry "nope" is missing/,
  );
  // A flipped byte inside the second (stored) entry breaks its CRC.
  const corrupt = bytes.slice();
  const storedAt = bytes.length - 22 - 2 * 46 - "model/tokenizer.json".length -
    "model/weights.bin".length - binary.length + 100;
  corrupt[storedAt] ^= 0xff;
  await assert.rejects(
    () => new ZipReader(corrupt, "bad.jar").extract("model/weights.bin"),
    /Corrupt ZIP archive bad.jar: entry "model\/weights.bin" fails its CRC-32 check/,
  );
  // Damage inside the deflated stream fails too (inflate error or CRC).
  const broken = bytes.slice();
  broken[dataOffset + 5] ^= 0x55;
  await assert.rejects(() => new ZipReader(broken, "bad.jar").extract("model/tokenizer.json"));
  assert.throws(
    () => new ZipReader(bytes.subarray(0, bytes.length - 30), "cut.jar"),
    /Corrupt ZIP archive cut.jar: no end-of-central-directory record \(truncated download\?\)/,
  );
});

Deno.test("registry: known models, cache paths and the cached check", async () => {
  assert.deepEqual(modelNames().sort(), [
    "all-minilm-l6-v2",
    "all-minilm-l6-v2-q",
    "all-minilm-l6-v2-st",
    "bge-small-en-v15",
    "bge-small-en-v15-q",
  ]);
  for (const spec of Object.values(MODELS)) {
    assert.match(spec.source.sha256, /^[0-9a-f]{64}$/, `${spec.name} pins a SHA-256`);
    assert.ok(spec.source.version.length > 0, `${spec.name} pins a version`);
  }
  const files = modelFiles("bge-small-en-v15", "/cache");
  assert.deepEqual(files, {
    name: "bge-small-en-v15",
    dir: "/cache/bge-small-en-v15",
    onnx: "/cache/bge-small-en-v15/model.onnx",
    safetensors: null,
    config: null,
    tokenizer: "/cache/bge-small-en-v15/tokenizer.json",
  });
  const empty = await Deno.makeTempDir({ prefix: "sparsebert-cache-" });
  try {
    assert.equal(await isModelCached("all-minilm-l6-v2", { cacheDir: empty }), false);
    // A manifest whose file sizes do not match is not a complete cache entry.
    await Deno.mkdir(`${empty}/all-minilm-l6-v2`);
    await Deno.writeTextFile(
      `${empty}/all-minilm-l6-v2/manifest.json`,
      JSON.stringify({
        name: "all-minilm-l6-v2",
        source: MODELS["all-minilm-l6-v2"].source,
        files: {
          "model.onnx": { size: 10, sha256: "" },
          "tokenizer.json": { size: 10, sha256: "" },
        },
      }),
    );
    await Deno.writeTextFile(`${empty}/all-minilm-l6-v2/model.onnx`, "short");
    await Deno.writeTextFile(`${empty}/all-minilm-l6-v2/tokenizer.json`, "0123456789");
    assert.equal(await isModelCached("all-minilm-l6-v2", { cacheDir: empty }), false);
  } finally {
    await Deno.remove(empty, { recursive: true });
  }
  await assert.rejects(() => ensureModel("gpt-17"), /Unknown model "gpt-17": known models are/);
});

Deno.test("registry: fetch_models --help and --list, unknown names", async () => {
  const help = await runCaptured(main, ["--help"]);
  assert.equal(help.code, 0);
  assert.match(help.output, /Usage: deno task models/);
  const list = await runCaptured(main, ["--list", "--json"]);
  assert.equal(list.code, 0);
  assert.equal(JSON.parse(list.output).length, modelNames().length);
  const unknown = await runCaptured(main, ["nope"]);
  assert.equal(unknown.code, 2);
  assert.match(unknown.output, /unknown model "nope"/);
});

/**
 * ffi/allocator.ts: with the mmap threshold set, large buffers go back to the system once they
 * are collected; without it, glibc keeps them (the 3.5 GB steady state of an int8 BERT-Large
 * process). Each case runs in its own Deno process, since the setting is per process.
 */

import assert from "node:assert/strict";
import { returnLargeBuffersToSystem } from "../ffi/allocator.ts";

const ALLOCATOR = new URL("../ffi/allocator.ts", import.meta.url).href;

/** Frees 200 MB of 2 MB buffers (interleaved with small kept ones) and reports what RSS gave back. */
const PROGRAM = `
import { returnLargeBuffersToSystem } from "${ALLOCATOR}";
const applied = Deno.args[0] === "on" ? returnLargeBuffersToSystem() : false;
const gc = async () => {
  for (let i = 0; i < 3; i++) {
    globalThis.gc();
    await new Promise((r) => setTimeout(r, 50));
  }
};
// A freed large buffer raises glibc's dynamic mmap threshold, as loading a model does.
let warm = new Uint8Array(8 << 20).fill(1);
warm = null;
await gc();
let big = [];
const keep = [];
for (let i = 0; i < 100; i++) {
  big.push(new Uint8Array(2 << 20).fill(1));
  keep.push(new Uint8Array(16 << 10).fill(1));
}
const before = Deno.memoryUsage().rss;
big = [];
await gc();
console.log(JSON.stringify({ applied, returnedMiB: (before - Deno.memoryUsage().rss) / 2 ** 20, kept: keep.length }));
`;

async function run(mode: "on" | "off"): Promise<{ applied: boolean; returnedMiB: number }> {
  const dir = await Deno.makeTempDir({ prefix: "allocator_test_" });
  try {
    await Deno.writeTextFile(`${dir}/program.js`, PROGRAM);
    const env = { ...Deno.env.toObject() };
    delete env.MALLOC_MMAP_THRESHOLD_;
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--v8-flags=--expose-gc", `${dir}/program.js`, mode],
      env,
      clearEnv: true,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    return JSON.parse(text.trim().split("\n").at(-1)!);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** glibc Linux (what Deno's own build links), and no MALLOC_MMAP_THRESHOLD_ of the user's. */
const GLIBC = Deno.build.target.endsWith("linux-gnu") &&
  Deno.env.get("MALLOC_MMAP_THRESHOLD_") === undefined;

Deno.test("the mmap threshold is set once per process on Linux glibc", () => {
  const first = returnLargeBuffersToSystem();
  assert.equal(first, GLIBC);
  assert.equal(returnLargeBuffersToSystem(), first, "idempotent");
});

Deno.test({
  name: "large freed buffers go back to the system with the threshold, and stay without it",
  ignore: !GLIBC,
  fn: async () => {
    const on = await run("on");
    assert.equal(on.applied, true);
    assert.ok(on.returnedMiB > 150, `with the threshold: ${on.returnedMiB} MiB returned`);
    // The same program without the setting: glibc keeps the freed heap (what the setting
    // fixes). This half checks the test can tell the two apart on this glibc.
    const off = await run("off");
    assert.ok(off.returnedMiB < 50, `without the threshold: ${off.returnedMiB} MiB returned`);
  },
});

import assert from "node:assert/strict";
import type { LinearSpec } from "../encoder/bert.ts";
import { KernelChooser } from "../encoder/kernel_choice.ts";
import type { DenseWeight } from "../encoder/weights.ts";
import { randomBlockSparse } from "../ops/sparsity.ts";

const spec: LinearSpec = { layer: 0, role: "intermediate", activation: "none" };

function weight(sparsity: number): DenseWeight {
  const w = randomBlockSparse({ out: 256, in: 128, sparsity, seed: 3 });
  return { out: 256, in: 128, weight: w, bias: new Float32Array(256).fill(0.1) };
}

Deno.test("dense weights get the dense kernel without timing, with the reason", () => {
  const chooser = new KernelChooser({ cachePath: null });
  chooser.build(weight(0), spec)[Symbol.dispose]();
  const d = chooser.decisions[0];
  assert.equal(d.kind, "dense-f32");
  assert.equal(d.timings, undefined);
  assert.match(d.reason, /^dense-f32: fp32 weights; element sparsity 0\.00 < 0\.50$/);
});

Deno.test("precision bf16 (opt-in) gives dense layers the bf16-weight kernel, sparse ones sparse fp32", () => {
  const chooser = new KernelChooser({ cachePath: null, precision: "bf16", autotune: false });
  using dense = chooser.build(weight(0), spec);
  using sparse = chooser.build(weight(0.9), spec);
  assert.deepEqual([dense.kind, sparse.kind], ["dense-bf16", "sparse-f32"]);
  assert.match(chooser.decisions[0].reason, /^dense-bf16: precision bf16; element sparsity 0\.00/);
  assert.match(chooser.decisions[1].reason, /^sparse-f32: precision bf16; element sparsity 0\.90/);
});

Deno.test("a sparse weight gets whichever kernel measured faster, and the cache is used", async () => {
  const cachePath = `${await Deno.makeTempDir()}/autotune.json`;
  const chooser = new KernelChooser({ cachePath, precision: "int8", tuneRows: 32 });
  const w = weight(0.9);
  using op = chooser.build(w, spec);
  const d = chooser.decisions[0];
  const t = d.timings!;
  assert.ok(t["sparse-i8"]! > 0 && t["dense-i8"]! > 0);
  assert.equal(d.kind, t["sparse-i8"]! < t["dense-i8"]! ? "sparse-i8" : "dense-i8");
  assert.equal(op.kind, d.kind);
  assert.match(d.reason, /4x1 block sparsity 0\.90 >= 0\.50; autotune [\d.]+ ms vs/);
  await chooser.saveCache();
  // A second chooser reads the timings instead of measuring; rewriting them flips the choice.
  const file = JSON.parse(await Deno.readTextFile(cachePath));
  const keys = Object.keys(file.entries);
  assert.equal(keys.length, 2);
  for (const key of keys) file.entries[key] = key.includes("|sparse-i8|") ? 0.5 : 2;
  await Deno.writeTextFile(cachePath, JSON.stringify(file));
  const again = new KernelChooser({ cachePath, precision: "int8", tuneRows: 32 });
  again.build(w, spec)[Symbol.dispose]();
  assert.equal(again.decisions[0].kind, "sparse-i8");
  assert.equal(again.decisions[0].cached, true);
  assert.match(again.decisions[0].reason, /autotune 0\.500 ms vs dense-i8 2\.000 ms \(cached\)/);
  for (const key of keys) file.entries[key] = key.includes("|sparse-i8|") ? 3 : 1;
  await Deno.writeTextFile(cachePath, JSON.stringify(file));
  const third = new KernelChooser({ cachePath, precision: "int8", tuneRows: 32 });
  third.build(w, spec)[Symbol.dispose]();
  assert.equal(third.decisions[0].kind, "dense-i8");
});

Deno.test("overrides are honoured and bad options rejected", () => {
  const w = weight(0.9);
  const forced = new KernelChooser({ cachePath: null, kernels: "sparse-f32" });
  using a = forced.build(w, spec);
  assert.equal(a.kind, "sparse-f32");
  assert.equal(forced.decisions[0].reason, "forced by the kernels option");
  const byRole = new KernelChooser({
    cachePath: null,
    kernels: "dense-f32",
    roles: { intermediate: "dense-i8" },
  });
  using b = byRole.build(w, spec);
  using c = byRole.build(w, { ...spec, role: "output" });
  assert.deepEqual([b.kind, c.kind], ["dense-i8", "dense-f32"]);
  assert.equal(byRole.decisions[0].reason, "forced for role intermediate");
  const heuristic = new KernelChooser({ cachePath: null, autotune: false });
  using d = heuristic.build(w, spec);
  assert.equal(d.kind, "sparse-f32");
  assert.match(heuristic.decisions[0].reason, /element sparsity 0\.90 >= 0\.70/);
  assert.throws(
    () => new KernelChooser({ precision: "fp16" as "fp32" }),
    /Unknown precision "fp16"/,
  );
  assert.throws(
    () => new KernelChooser({ kernels: "csr" as "dense-f32" }),
    /Unknown kernels "csr"/,
  );
});

Deno.test("one dense timing per shape serves every sparsity; candidates timed in turns", async () => {
  const cachePath = `${await Deno.makeTempDir()}/autotune.json`;
  const lines: string[] = [];
  const chooser = new KernelChooser({
    cachePath,
    precision: "int8",
    tuneRows: 16,
    log: (line) => lines.push(line),
  });
  chooser.build(weight(0.9), spec)[Symbol.dispose]();
  chooser.build(weight(0.7), spec)[Symbol.dispose]();
  // The second layer times only its sparse candidate: the dense kernel's zeros do not matter.
  assert.equal(lines.length, 3, lines.join("\n"));
  assert.equal(lines.filter((l) => l.includes("dense-i8")).length, 1);
  const [first, second] = chooser.decisions;
  assert.equal(first.timings!["dense-i8"], second.timings!["dense-i8"]);
  assert.equal(second.cached, false);
  await chooser.saveCache();
  const keys = Object.keys(JSON.parse(await Deno.readTextFile(cachePath)).entries).sort();
  assert.equal(keys.length, 3);
  assert.deepEqual(keys.map((k) => k.split("|").slice(1, 3).join("|")), [
    "dense-i8|dense",
    "sparse-i8|s0.70",
    "sparse-i8|s0.90",
  ]);
});

/**
 * Every kernel variant through `SPARSEBERT_ISA`, as a user forces it: the variants this CPU can
 * run load and give the baseline's int8 results bit for bit; the ones it lacks are refused with
 * the "cannot run" error and exit code 1, never a signal. Where the CPU lacks no variant, a
 * simulated feature mask (`featureMask`) exercises the refusal, so both branches run anywhere.
 * Expected values come from the probed features, never from what this machine happens to be.
 */
import * as assert from "node:assert/strict";
import {
  CpuFeature,
  cpuSupports,
  ISA_VARIANTS,
  type IsaVariant,
  probeCpuFeatures,
  VARIANT_NUMERICS,
} from "../ffi/library.ts";

const PROBE = new URL("./isa_variant_probe.ts", import.meta.url).pathname;
const features = probeCpuFeatures();
const runnable = ISA_VARIANTS.filter((isa) => cpuSupports(features, isa));
const lacking = ISA_VARIANTS.filter((isa) => !cpuSupports(features, isa));

/** The feature bit that each variant adds over the one below it. */
const ADDED_FEATURE: Record<Exclude<IsaVariant, "baseline">, number> = {
  avx2: CpuFeature.avx2,
  avx512vnni: CpuFeature.avx512vnni,
};

interface ProbeRun {
  code: number;
  signal: string | null;
  stdout: string;
  stderr: string;
}

async function probe(isa: IsaVariant | null, mask?: number): Promise<ProbeRun> {
  const env = Deno.env.toObject();
  delete env.SPARSEBERT_LIB;
  delete env.SPARSEBERT_ISA;
  if (isa !== null) env.SPARSEBERT_ISA = isa;
  const args = [
    "run",
    "-A",
    "--no-prompt",
    PROBE,
    ...(mask === undefined ? [] : ["--mask", `${mask}`]),
  ];
  const out = await new Deno.Command(Deno.execPath(), { args, env, clearEnv: true }).output();
  const text = new TextDecoder();
  return {
    code: out.code,
    signal: out.signal,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
}

function refused(run: ProbeRun, isa: IsaVariant, what: string): void {
  assert.equal(run.signal, null, `${what}: ended by ${run.signal}: ${run.stderr}`);
  assert.equal(run.code, 1, `${what}: exit code ${run.code}: ${run.stdout}${run.stderr}`);
  assert.match(run.stderr, new RegExp(`cannot run the "${isa}" kernel variant`), what);
}

Deno.test("each variant this CPU runs loads by SPARSEBERT_ISA and equals the baseline's int8 bits on 7-bit codes", async () => {
  assert.ok(runnable.includes("baseline"), "the baseline runs on every x86-64 CPU");
  const results = new Map<IsaVariant, Record<string, string>>();
  for (const isa of runnable) {
    const run = await probe(isa);
    assert.equal(run.code, 0, `${isa}: ${run.stderr}`);
    const line = JSON.parse(run.stdout.trim().split("\n").at(-1)!);
    assert.equal(line.isa, isa, `SPARSEBERT_ISA=${isa} loaded ${line.isa}`);
    assert.equal(line.qmax, VARIANT_NUMERICS[isa].activationQmax, `${isa} activation bound`);
    results.set(isa, line.digests);
  }
  const baseline = results.get("baseline")!;
  assert.deepEqual(Object.keys(baseline).sort(), ["gemm_i8", "spmm_i8"]);
  for (const [isa, digests] of results) {
    assert.deepEqual(digests, baseline, `${isa} int8 outputs differ from the baseline's`);
  }
  console.log(`compared bit for bit with the baseline: ${runnable.join(", ")}`);
});

Deno.test("a variant this CPU lacks is refused with 'cannot run', exit code 1, no signal", async () => {
  for (const isa of lacking) refused(await probe(isa), isa, `SPARSEBERT_ISA=${isa}`);
  if (lacking.length === 0) {
    console.log("this CPU runs every variant: the refusal is checked with simulated masks only");
  }
  // Simulated CPUs: the probed features less the one each variant adds.
  for (const [isa, bit] of Object.entries(ADDED_FEATURE) as [IsaVariant, number][]) {
    const mask = features & ~bit;
    refused(await probe(isa, mask), isa, `${isa} with feature mask ${mask}`);
    const chosen = await probe(null, mask);
    assert.equal(chosen.code, 0, chosen.stderr);
    const line = JSON.parse(chosen.stdout.trim());
    // Without avx2 only the baseline is left; without VNNI, avx2 where the CPU has it.
    const expected = isa === "avx2" || !cpuSupports(mask, "avx2") ? "baseline" : "avx2";
    assert.equal(line.isa, expected, `the best variant under mask ${mask}`);
    assert.match(line.reason, new RegExp(`not ${isa}: this CPU lacks`));
  }
});

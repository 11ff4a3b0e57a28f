/**
 * Child process of `tests/isa_variants_test.ts`: loads the kernel library as a user would
 * (`SPARSEBERT_ISA` decides the variant), runs the int8 kernels on seeded inputs quantized to
 * 7-bit codes (which every variant takes) and prints one JSON line with the loaded variant, its
 * activation bound and a SHA-256 of each kernel's exact outputs, so the parent can compare
 * variants bit for bit.
 *
 * With `--mask N` it instead opens the library with `featureMask: N` (a simulated CPU that lacks
 * features) and prints the variant chosen and why; a refusal is printed to stderr, exit code 1.
 *
 * @module
 */
import { type IsaVariant, kernels, openKernelLibrary } from "../ffi/library.ts";
import { LinearI8 } from "../ops/linear_i8.ts";
import { int8ActivationQmax, quantizeActivations, quantizeWeights } from "../ops/quantize.ts";
import { SparseLinearI8 } from "../ops/sparse_linear_i8.ts";
import { randomBlockSparse } from "../ops/sparsity.ts";
import { randomF32 } from "./harness.ts";

async function sha256(data: ArrayBufferView): Promise<string> {
  const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Exact int8 outputs on shapes around the tile edges and a BERT-sized one. */
async function int8Digests(): Promise<Record<string, string>> {
  const shapes: [number, number, number][] = [[1, 7, 3], [13, 31, 15], [37, 256, 129], [
    128,
    768,
    768,
  ]];
  const parts: Record<string, Int32Array[]> = { gemm_i8: [], spmm_i8: [] };
  let seed = 77;
  for (const [m, k, n] of shapes) {
    const x = randomF32(m * k, seed++, -2, 3);
    const dense = quantizeWeights({ out: n, in: k, weight: randomF32(n * k, seed++) });
    // 7-bit codes: the AVX-512 VNNI variant's own default is 8 bits (int8ActivationQmax).
    using gemm = new LinearI8(dense);
    parts.gemm_i8.push(gemm.forwardExact(quantizeActivations(x, m, k, { qmax: 127 })));
    const weight = randomBlockSparse({ out: n, in: k, sparsity: 0.8, seed: seed++ });
    using spmm = new SparseLinearI8(quantizeWeights({ out: n, in: k, weight }));
    const packed = quantizeActivations(x, m, k, { qmax: 127, layout: "packed" });
    parts.spmm_i8.push(spmm.forwardExact(packed));
  }
  const digests: Record<string, string> = {};
  for (const [name, outputs] of Object.entries(parts)) {
    const total = outputs.reduce((s, o) => s + o.length, 0);
    const all = new Int32Array(total);
    let at = 0;
    for (const o of outputs) {
      all.set(o, at);
      at += o.length;
    }
    digests[name] = await sha256(all);
  }
  return digests;
}

if (import.meta.main) {
  const maskAt = Deno.args.indexOf("--mask");
  if (maskAt >= 0) {
    const featureMask = Number(Deno.args[maskAt + 1]);
    const isa = Deno.env.get("SPARSEBERT_ISA") as IsaVariant | undefined;
    try {
      const lib = openKernelLibrary({ featureMask, isa });
      console.log(JSON.stringify({ isa: lib.isa, reason: lib.reason }));
      lib.close();
    } catch (error) {
      console.error((error as Error).message);
      Deno.exit(1);
    }
  } else {
    const lib = kernels(); // a refusal here is an uncaught KernelLibraryError: exit code 1
    const digests = await int8Digests();
    console.log(JSON.stringify({ isa: lib.isa, qmax: int8ActivationQmax(), digests }));
  }
}

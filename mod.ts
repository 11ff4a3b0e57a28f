/**
 * sparsebert: sparse and int8-quantized BERT-family encoders on CPU, with Zig kernels loaded
 * through `Deno.dlopen`.
 *
 * ```ts
 * import { LinearF32 } from "./mod.ts";
 * using linear = new LinearF32({ out: 2, in: 3, weight: new Float32Array(6) });
 * const y = linear.forward(new Float32Array(3), 1);
 * ```
 *
 * @module
 */
export {
  cpuSupports,
  describeFeatures,
  ISA_VARIANTS,
  type IsaVariant,
  type KernelLibrary,
  KernelLibraryError,
  kernels,
  openKernelLibrary,
  type OpenOptions,
  setThreads,
  threads,
} from "./ffi/library.ts";
export { NativeBuffer } from "./ffi/memory.ts";
export {
  type Activation,
  type ForwardOptions,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./ops/linear.ts";
export { LinearF32 } from "./ops/linear_f32.ts";

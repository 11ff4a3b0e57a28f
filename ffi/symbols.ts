/**
 * The one symbol table of the sparsebert kernel library (`kernels.zig`). Every ISA variant
 * exports the same symbols, so one table binds them all. Keep the order of `kernels.zig`.
 *
 * Conventions: `usize` arguments are `"usize"` (pass numbers or bigints), pointers to data
 * the call reads or writes are `"buffer"` (a TypedArray, or `null` where the kernel allows it),
 * native allocations are `"pointer"`.
 *
 * @module
 */

/** Symbols of the kernel library, as `Deno.dlopen` expects them. */
export const symbols = {
  // library, CPU and threads
  sb_abi_version: { parameters: [], result: "u32" },
  sb_isa_level: { parameters: [], result: "u32" },
  sb_cpu_features: { parameters: [], result: "u32" },
  sb_required_features: { parameters: [], result: "u32" },
  sb_set_threads: { parameters: ["u32"], result: "u32" },
  sb_threads: { parameters: [], result: "u32" },
  // native memory
  sb_alloc: { parameters: ["usize"], result: "pointer" },
  sb_free: { parameters: ["pointer", "usize"], result: "void" },
  // dense fp32 linear
  sb_linear_f32_packed_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_linear_f32_pack: {
    parameters: ["buffer", "buffer", "usize", "usize", "pointer"],
    result: "void",
  },
  sb_linear_f32: {
    parameters: ["buffer", "usize", "usize", "pointer", "usize", "buffer", "buffer", "u32"],
    result: "void",
  },
  // probes
  sb_probe_peak_f32: { parameters: ["u64"], result: "u64" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound library type. */
export type KernelSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** ABI version this table matches; `kernels.zig` exports the same number. */
export const ABI_VERSION = 1;

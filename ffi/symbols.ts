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
  sb_map_file: { parameters: ["buffer", "usize", "usize"], result: "pointer" },
  sb_unmap_file: { parameters: ["pointer", "usize"], result: "void" },
  // dense fp32 linear
  sb_linear_f32_packed_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_linear_f32_pack: {
    parameters: ["buffer", "buffer", "usize", "usize", "pointer"],
    result: "i32",
  },
  sb_linear_f32: {
    parameters: ["buffer", "usize", "usize", "pointer", "usize", "buffer", "buffer", "u32"],
    result: "i32",
  },
  // dense linear with bf16 weights
  sb_linear_bf16_packed_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_linear_bf16_pack: {
    parameters: ["buffer", "buffer", "usize", "usize", "pointer"],
    result: "i32",
  },
  sb_linear_bf16_scratch_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_bf16_hardware: { parameters: [], result: "u32" },
  sb_linear_bf16: {
    // x, m, k, scratch (u32 bf16 pairs), scratch_len, packed, n, residual, y, activation
    parameters: [
      "buffer",
      "usize",
      "usize",
      "buffer",
      "usize",
      "pointer",
      "usize",
      "buffer",
      "buffer",
      "u32",
    ],
    result: "i32",
  },
  // BERT ops: layernorm, attention, embeddings, pooling
  sb_layernorm: {
    parameters: ["buffer", "usize", "usize", "buffer", "buffer", "f32", "buffer"],
    result: "i32",
  },
  sb_attention_scratch_len: { parameters: ["usize", "usize", "usize", "u32"], result: "usize" },
  sb_attention: {
    // attention.Problem (ffi/structs.ts), scratch, scratch_len (floats), precision (0 fp32, 1 int8)
    parameters: ["buffer", "buffer", "usize", "u32"],
    result: "i32",
  },
  sb_embeddings: { parameters: ["buffer"], result: "i32" }, // embeddings.Call (ffi/structs.ts)
  sb_pool: {
    parameters: ["buffer", "usize", "usize", "usize", "buffer", "u32", "u32", "buffer"],
    result: "i32",
  },
  sb_l2_normalize_rows: { parameters: ["buffer", "usize", "usize"], result: "i32" },
  // int8 and sparse linear layers (status i32: 0 ok, < 0 see kernels.zig)
  sb_int8_act_max: { parameters: [], result: "u32" },
  sb_quantize_weights_i8: {
    parameters: ["buffer", "usize", "usize", "buffer", "buffer"],
    result: "i32",
  },
  sb_quantize_rows: {
    parameters: ["buffer", "usize", "usize", "u32", "u32", "buffer", "usize", "buffer", "buffer"],
    result: "i32",
  },
  sb_quantize_packed_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_quantize_packed: {
    parameters: ["buffer", "usize", "usize", "u32", "u32", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  sb_pack_rows_u8: {
    parameters: ["buffer", "usize", "usize", "usize", "buffer"],
    result: "i32",
  },
  sb_u8_max: { parameters: ["buffer", "usize"], result: "u32" },
  sb_u16_max: { parameters: ["buffer", "usize"], result: "u32" },
  sb_pack_f32_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_pack_f32: { parameters: ["buffer", "usize", "usize", "buffer"], result: "void" },
  sb_sparsity_stats_f32: { parameters: ["buffer", "usize", "usize", "buffer"], result: "void" },
  sb_sparsity_stats_i8: { parameters: ["buffer", "usize", "usize", "buffer"], result: "void" },
  sb_spmm_i8_packed_len: { parameters: ["buffer", "usize", "usize"], result: "usize" },
  sb_spmm_i8_pack: {
    parameters: ["buffer", "buffer", "buffer", "usize", "usize", "pointer", "usize"],
    result: "i32",
  },
  sb_spmm_i8_unpack: {
    parameters: ["pointer", "usize", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  // blob, blob bytes, n, k: the header, the tables and the shape, once per blob
  sb_spmm_i8_check: { parameters: ["pointer", "usize", "usize", "usize"], result: "i32" },
  sb_spmm_i8: {
    // blob, blob bytes, packed activations, m, Int8Call (ffi/structs.ts)
    parameters: ["pointer", "usize", "buffer", "usize", "buffer"],
    result: "i32",
  },
  sb_spmm_i8_staging_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_spmm_i8_quantized: {
    parameters: [
      "pointer", // blob
      "usize", // blob bytes
      "buffer", // packed activations
      "usize", // m
      "buffer", // per-token scale
      "buffer", // per-token zero point
      "u32", // activation
      "pointer", // staging scratch (64-byte aligned)
      "usize", // staging bytes
      "buffer", // packed u7 output
      "buffer", // output per-token scale
      "buffer", // output per-token zero point
    ],
    result: "i32",
  },
  sb_gemm_i8_packed_len: { parameters: ["usize", "usize"], result: "usize" },
  sb_gemm_i8_pack: {
    parameters: ["buffer", "buffer", "buffer", "usize", "usize", "pointer", "usize"],
    result: "i32",
  },
  sb_gemm_i8_check: { parameters: ["pointer", "usize", "usize", "usize"], result: "i32" },
  sb_gemm_i8: {
    // blob, blob bytes, u8 activation rows, row stride, m, Int8Call (ffi/structs.ts)
    parameters: ["pointer", "usize", "buffer", "usize", "usize", "buffer"],
    result: "i32",
  },
  sb_spmm_f32_packed_len: { parameters: ["buffer", "usize", "usize"], result: "usize" },
  sb_spmm_f32_pack: {
    parameters: ["buffer", "buffer", "usize", "usize", "pointer", "usize"],
    result: "i32",
  },
  sb_spmm_f32_unpack: { parameters: ["pointer", "usize", "buffer", "buffer"], result: "i32" },
  sb_spmm_f32_check: { parameters: ["pointer", "usize", "usize", "usize"], result: "i32" },
  sb_spmm_f32: {
    parameters: ["pointer", "usize", "buffer", "usize", "buffer", "buffer", "u32"],
    result: "i32",
  },
  // probes
  sb_struct_layout: {
    parameters: ["u32", "buffer", "usize", "buffer", "usize"],
    result: "usize",
  },
  sb_probe_peak_f32: { parameters: ["u64"], result: "u64" },
  sb_probe_peak_i8: { parameters: ["u64"], result: "u64" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The bound library type. */
export type KernelSymbols = Deno.DynamicLibrary<typeof symbols>["symbols"];

/** ABI version this table matches; `kernels.zig` exports the same number. */
export const ABI_VERSION = 1;

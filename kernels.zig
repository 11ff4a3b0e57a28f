//! Root of the C ABI of the sparsebert kernel library. Every `export fn` is a thin wrapper
//! over one op in `kernels/<op>.zig`; arguments are primitives and pointers; shapes are checked
//! by the TypeScript op before the call and asserted again here (trapping in ReleaseSafe).
//! The symbol table that Deno binds is `ffi/symbols.ts`; keep the two in the same order.
const std = @import("std");
const builtin = @import("builtin");
const cpu = @import("kernels/cpu.zig");
const pool = @import("kernels/pool.zig");
const vmath = @import("kernels/vmath.zig");
const linear_f32 = @import("kernels/linear_f32.zig");
const linear_bf16 = @import("kernels/linear_bf16.zig");
const probe = @import("kernels/probe.zig");
const layernorm = @import("kernels/layernorm.zig");
const attention = @import("kernels/attention.zig");
const attention_i8 = @import("kernels/attention_i8.zig");
const embeddings = @import("kernels/embeddings.zig");
const pooling = @import("kernels/pooling.zig");
const int8 = @import("kernels/int8.zig");
const int8_epilogue = @import("kernels/int8_epilogue.zig");
const quantize = @import("kernels/quantize.zig");
const quantize_packed = @import("kernels/quantize_packed.zig");
const quantize_staged = @import("kernels/quantize_staged.zig");
const pack_f32 = @import("kernels/pack_f32.zig");
const sparse_format = @import("kernels/sparse_format.zig");
const sparse_f32_blocks = @import("kernels/sparse_f32_blocks.zig");
const spmm_i8 = @import("kernels/spmm_i8.zig");
const gemm_i8 = @import("kernels/gemm_i8.zig");
const spmm_f32 = @import("kernels/spmm_f32.zig");
const probe_i8 = @import("kernels/probe_i8.zig");
const mapped_file = @import("kernels/mapped_file.zig");
const transpose = @import("kernels/transpose.zig");

/// Bumped whenever an exported signature changes; the loader refuses a mismatched library.
pub const abi_version: u32 = 1;
const allocation_alignment: std.mem.Alignment = .@"64";

// ---- library, CPU and threads ----

export fn sb_abi_version() u32 {
    return abi_version;
}

export fn sb_isa_level() u32 {
    return cpu.isa_level;
}

export fn sb_cpu_features() u32 {
    return cpu.features();
}

export fn sb_required_features() u32 {
    return cpu.requiredFeatures();
}

export fn sb_set_threads(count: u32) u32 {
    // The pool pins this library (RTLD_NODELETE) before its first worker starts.
    return pool.setThreadCount(@max(count, 1));
}

export fn sb_threads() u32 {
    return pool.threadCount();
}

// ---- native memory (64-byte aligned) for packed weights and workspaces ----

export fn sb_alloc(bytes: usize) ?[*]u8 {
    if (bytes == 0) return null;
    return std.heap.c_allocator.rawAlloc(bytes, allocation_alignment, @returnAddress());
}

export fn sb_free(ptr: ?[*]u8, bytes: usize) void {
    const p = ptr orelse return;
    std.heap.c_allocator.rawFree(p[0..bytes], allocation_alignment, @returnAddress());
}

/// Maps the first `bytes` bytes of the file at `path` (UTF-8, `path_len` bytes, no NUL)
/// copy-on-write: pages are read from the page cache on first touch, and a write changes only
/// this process's copy. Null when the file cannot be opened, is shorter than `bytes`, or the map
/// fails. Undo with `sb_unmap_file`.
export fn sb_map_file(path: [*]const u8, path_len: usize, bytes: usize) ?[*]u8 {
    const mapped = mapped_file.map(path[0..path_len], bytes) catch return null;
    return mapped.ptr;
}

export fn sb_unmap_file(ptr: ?[*]u8, bytes: usize) void {
    const p = ptr orelse return;
    mapped_file.unmap(p, bytes);
}

// ---- dense fp32 linear ----

export fn sb_linear_f32_packed_len(n: usize, k: usize) usize {
    return linear_f32.packedLen(n, k);
}

export fn sb_linear_f32_pack(weight: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, packed_weights: [*]f32) i32 {
    if (!positive(.{ n, k })) return -3;
    linear_f32.pack(weight, bias, n, k, packed_weights);
    return 0;
}

export fn sb_linear_f32(
    x: [*]const f32,
    m: usize,
    k: usize,
    packed_weights: [*]const f32,
    n: usize,
    residual: ?[*]const f32,
    y: [*]f32,
    activation: u32,
) i32 {
    const act = denseCallActivation(.{ m, k, n }, residual, y, activation) orelse return -3;
    linear_f32.forward(x, m, k, packed_weights, n, residual, y, act);
    return 0;
}

// ---- dense linear with bf16 weights ----

export fn sb_linear_bf16_packed_len(n: usize, k: usize) usize {
    return linear_bf16.packedLen(n, k);
}

export fn sb_linear_bf16_pack(weight: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, packed_weights: [*]u32) i32 {
    if (!positive(.{ n, k })) return -3;
    linear_bf16.pack(weight, bias, n, k, packed_weights);
    return 0;
}

export fn sb_linear_bf16_scratch_len(m: usize, k: usize) usize {
    return linear_bf16.scratchLen(m, k);
}

/// 1 when `sb_linear_bf16` runs `vdpbf16ps` here, 0 when it runs the exact fp32 emulation.
export fn sb_bf16_hardware() u32 {
    return @intFromBool(linear_bf16.usesHardware());
}

export fn sb_linear_bf16(
    x: [*]const f32,
    m: usize,
    k: usize,
    scratch: [*]u32,
    scratch_len: usize,
    packed_weights: [*]const u32,
    n: usize,
    residual: ?[*]const f32,
    y: [*]f32,
    activation: u32,
) i32 {
    const act = denseCallActivation(.{ m, k, n }, residual, y, activation) orelse return -3;
    if (scratch_len < linear_bf16.scratchLen(m, k)) return -3;
    linear_bf16.forward(x, m, k, scratch, packed_weights, n, residual, y, act);
    return 0;
}

// ---- BERT ops: layernorm, attention, embeddings, pooling ----

export fn sb_layernorm(
    x: [*]const f32,
    rows: usize,
    cols: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    y: [*]f32,
) i32 {
    if (!positive(.{ rows, cols }) or !(eps >= 0) or !std.math.isFinite(eps)) return -3;
    layernorm.forward(x, rows, cols, gamma, beta, eps, y);
    return 0;
}

/// Attention precision codes: 0 fp32 products (`attention.zig`), 1 int8 (`attention_i8.zig`).
const AttentionPrecision = enum(u32) { f32 = 0, int8 = 1 };

fn attentionShapeOk(seq: usize, head_size: usize) bool {
    return seq >= 1 and seq <= attention.max_seq and head_size >= 1 and head_size <= attention.max_head_size;
}

/// Floats of scratch for `threads` threads, or 0 for a shape or precision the kernels refuse.
export fn sb_attention_scratch_len(seq: usize, head_size: usize, threads: usize, precision: u32) usize {
    if (!attentionShapeOk(seq, head_size) or threads == 0) return 0;
    return switch (enumCode(AttentionPrecision, precision) orelse return 0) {
        .f32 => attention.scratchLen(seq, head_size, threads),
        .int8 => attention_i8.scratchLen(seq, head_size, threads),
    };
}

export fn sb_attention(problem: *const attention.Problem, scratch: [*]f32, scratch_len: usize, precision: u32) i32 {
    const p = enumCode(AttentionPrecision, precision) orelse return -3;
    const width = problem.heads * problem.head_size;
    if (problem.batch == 0 or problem.heads == 0 or !attentionShapeOk(problem.seq, problem.head_size)) return -3;
    if (problem.ld < width or problem.ld_out < width) return -3;
    if (!std.math.isFinite(problem.mask_value) or !std.math.isFinite(problem.scale)) return -3;
    if (scratch_len < sb_attention_scratch_len(problem.seq, problem.head_size, 1, precision)) return status(error.BufferTooSmall);
    switch (p) {
        .f32 => attention.forward(problem, scratch, scratch_len),
        .int8 => {
            if (@intFromPtr(scratch) % 64 != 0) return -3;
            attention_i8.forward(problem, @alignCast(scratch), scratch_len);
        },
    }
    return 0;
}

export fn sb_embeddings(call: *const embeddings.Call) i32 {
    if (!positive(.{ call.batch, call.seq, call.hidden, call.vocab }) or call.seq > call.max_positions) return -3;
    if ((call.token_type == null) != (call.type_vocab == 0)) return -3;
    if (call.token_type_ids != null and call.token_type == null) return -3;
    if (!(call.eps >= 0) or !std.math.isFinite(call.eps)) return -3;
    // Ids index the tables: one out of range would read past them (-7).
    const rows = call.batch * call.seq;
    for (call.input_ids[0..rows]) |id| if (id < 0 or id >= call.vocab) return -7;
    if (call.token_type_ids) |ids| for (ids[0..rows]) |id| if (id < 0 or id >= call.type_vocab) return -7;
    embeddings.forward(call);
    return 0;
}

export fn sb_pool(
    x: [*]const f32,
    batch: usize,
    seq: usize,
    hidden: usize,
    mask: [*]const u8,
    mode: u32,
    normalize: u32,
    out: [*]f32,
) i32 {
    if (!positive(.{ batch, seq, hidden }) or normalize > 1) return -3;
    const pooling_mode = enumCode(pooling.Mode, mode) orelse return -3;
    pooling.forward(x, batch, seq, hidden, mask, pooling_mode, normalize != 0, out);
    return 0;
}

export fn sb_l2_normalize_rows(x: [*]f32, rows: usize, cols: usize) i32 {
    if (!positive(.{ rows, cols })) return -3;
    pooling.normalizeRows(x, rows, cols);
    return 0;
}

// ---- int8 and sparse linear layers ----
// Status results: 0 ok, -1 non-finite input, -2 bad packed blob, -3 bad argument (an enum
// code, or a size or stride the kernel cannot take), -4 shape too large for the format, -5
// buffer too small, -6 activation above the kernels' bound (`sb_int8_act_max`), -7 a token id
// outside its embedding table.
//
// The size checks below are explicit, not `assert`s: the kernels' asserts are optimizer
// assumptions in ReleaseFast, the build users load, so a bad call from a binding would be
// undefined behaviour there instead of status -3.

/// The largest activation code the int8 kernels of this library take: 255 with VNNI, else 127.
export fn sb_int8_act_max() u32 {
    return int8.act_max;
}

fn status(err: anyerror) i32 {
    return switch (err) {
        error.NonFinite => -1,
        error.BadBlob => -2,
        error.TooLarge => -4,
        error.BufferTooSmall => -5,
        else => -3,
    };
}

/// An int8 kernel's output code with its u8 requantization, checked: null for an unknown code,
/// or for a u8 output whose scale, zero point or qmax the kernels cannot take.
fn int8Output(output: u32, out_scale: f32, out_zero: i32, out_qmax: u32) ?struct { output: int8.Output, requant: int8.Requant } {
    const out = enumCode(int8.Output, output) orelse return null;
    const bad_u8 = !(out_scale > 0) or !std.math.isFinite(out_scale) or (out_qmax != 127 and out_qmax != 255) or
        out_zero < 0 or out_zero > out_qmax;
    if (out == .u8 and bad_u8) return null;
    return .{ .output = out, .requant = .{ .inv_scale = 1 / out_scale, .zero = out_zero, .qmax = @intCast(@min(out_qmax, 255)) } };
}

fn enumCode(comptime E: type, code: u32) ?E {
    inline for (std.meta.fields(E)) |f| if (f.value == code) return @enumFromInt(code);
    return null;
}

/// The checks both dense float linears make at the C ABI: sizes of at least 1, a residual that is
/// not the output, a known activation code (returned; null when any check fails).
fn denseCallActivation(sizes: anytype, residual: ?[*]const f32, y: [*]f32, activation: u32) ?vmath.Activation {
    if (!positive(sizes)) return null;
    if (residual) |r| if (@intFromPtr(r) == @intFromPtr(y)) return null;
    return enumCode(vmath.Activation, activation);
}

/// Whether every size is at least 1.
fn positive(sizes: anytype) bool {
    inline for (sizes) |size| if (size == 0) return false;
    return true;
}

export fn sb_quantize_weights_i8(w: [*]const f32, n: usize, k: usize, q: [*]i8, scale: [*]f32) i32 {
    if (!positive(.{ n, k })) return -3;
    quantize.quantizeWeights(w, n, k, q, scale) catch |e| return status(e);
    return 0;
}

export fn sb_quantize_rows(x: [*]const f32, m: usize, k: usize, mode: u32, qmax: u32, q: [*]u8, ldq: usize, scale: [*]f32, zero: [*]i32) i32 {
    if (!positive(.{ m, k }) or ldq < k) return -3;
    const md = enumCode(quantize.Mode, mode) orelse return -3;
    if (qmax != 127 and qmax != 255) return -3;
    if (md == .ort_u8 and qmax != 255) return -3;
    quantize.quantizeRows(x, m, k, md, qmax, q, ldq, scale, zero) catch |e| return status(e);
    return 0;
}

export fn sb_quantize_packed_len(m: usize, k: usize) usize {
    return quantize_packed.packedLen(m, k);
}

export fn sb_quantize_packed(x: [*]const f32, m: usize, k: usize, mode: u32, qmax: u32, packed_x: [*]u8, scale: [*]f32, zero: [*]i32) i32 {
    if (!positive(.{ m, k })) return -3;
    const md = enumCode(quantize.Mode, mode) orelse return -3;
    if (md == .ort_u8 or (qmax != 127 and qmax != 255) or qmax > int8.act_max) return -3;
    quantize_packed.quantizePacked(x, m, k, md, qmax, packed_x, scale, zero) catch |e| return status(e);
    return 0;
}

export fn sb_pack_rows_u8(q: [*]const u8, m: usize, k: usize, ldq: usize, packed_x: [*]u8) i32 {
    if (!positive(.{ m, k }) or ldq < k) return -3;
    return if (quantize_packed.packRows(q, m, k, ldq, packed_x)) 0 else -6;
}

export fn sb_u8_max(data: [*]const u8, len: usize) u32 {
    return quantize.maxValue(u8, data, len);
}

/// Largest u16 lane of `len` bytes (`len` even) of the packed activation layout: above 255 when
/// a lane's high byte, which the kernels take to be 0, is not.
export fn sb_u16_max(data: [*]const u8, len: usize) u32 {
    if (len % 2 != 0) return std.math.maxInt(u32);
    return quantize.maxValue(u16, @ptrCast(data), len / 2);
}

export fn sb_pack_f32_len(m: usize, k: usize) usize {
    return pack_f32.packedF32Len(m, k);
}

export fn sb_pack_f32(x: [*]const f32, m: usize, k: usize, out: [*]f32) void {
    pack_f32.packF32(x, m, k, out);
}

export fn sb_sparsity_stats_f32(w: [*]const f32, n: usize, k: usize, out: *sparse_format.Stats) void {
    out.* = sparse_format.stats(f32, w, n, k);
}

export fn sb_sparsity_stats_i8(w: [*]const i8, n: usize, k: usize, out: *sparse_format.Stats) void {
    out.* = sparse_format.stats(i8, w, n, k);
}

export fn sb_spmm_i8_packed_len(q: [*]const i8, n: usize, k: usize) usize {
    return sparse_format.i8PackedLen(q, n, k) catch 0;
}

export fn sb_spmm_i8_pack(q: [*]const i8, scale: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, blob: [*]align(64) u8, blob_len: usize) i32 {
    if (!positive(.{ n, k })) return -3;
    sparse_format.i8Pack(q, scale, bias, n, k, blob, blob_len) catch |e| return status(e);
    return 0;
}

export fn sb_spmm_i8_unpack(blob: [*]align(64) u8, blob_len: usize, q: [*]i8, scale: [*]f32, bias: [*]f32) i32 {
    sparse_format.i8Unpack(blob, blob_len, q, scale, bias) catch |e| return status(e);
    return 0;
}

/// What `sb_gemm_i8` and `sb_spmm_i8` read besides the weights and activations: the
/// activations' per-token parameters, the residual, the output and its epilogue. An `extern
/// struct` (`ffi/structs.ts` INT8_CALL writes it).
const Int8Call = extern struct {
    x_scale: [*]const f32,
    x_zero: [*]const i32,
    /// Token-major [m, n] fp32 added after the activation, or null.
    residual: ?[*]const f32,
    /// Token-major [m, n] output of the element type `output` names.
    y: *anyopaque,
    /// `int8.Output`: 0 f32, 1 u8, 2 s32.
    output: u32,
    /// `vmath.Activation`.
    activation: u32,
    /// The u8 output's scale, zero point and qmax (ignored otherwise).
    out_scale: f32,
    out_zero: i32,
    out_qmax: u32,
    /// 0: the kernels' own codes (up to `sb_int8_act_max`); 1: ONNX Runtime's u8 numerics
    /// (`sb_gemm_i8` only).
    numerics: u32,
};

/// 0 when a checked blob's header is of shape [n, k], else -2 (bytes of another layer).
fn shapeStatus(header: anytype, n: usize, k: usize) i32 {
    return if (header.n == n and header.k == k) 0 else -2;
}

/// Checks an int8 sparse blob once, before its first kernel call: its header, its tables
/// (`sparse_format.checkI8`) and its shape, which must be [n, k]. The kernel calls then check
/// the header only.
export fn sb_spmm_i8_check(blob: [*]align(64) u8, blob_len: usize, n: usize, k: usize) i32 {
    const v = sparse_format.checkI8(blob, blob_len) catch |e| return status(e);
    return shapeStatus(v.header, n, k);
}

export fn sb_spmm_i8(blob: [*]align(64) u8, blob_len: usize, packed_x: [*]const u8, m: usize, call: *const Int8Call) i32 {
    if (m == 0 or call.numerics != 0) return -3;
    const target = int8Output(call.output, call.out_scale, call.out_zero, call.out_qmax) orelse return -3;
    const args = spmm_i8.Args{
        .w = sparse_format.view(blob, blob_len) catch |e| return status(e),
        .x = packed_x,
        .m = m,
        .x_scale = call.x_scale,
        .x_zero = call.x_zero,
        .residual = call.residual,
        .y = call.y,
        .output = target.output,
        .requant = target.requant,
        .activation = enumCode(vmath.Activation, call.activation) orelse return -3,
    };
    spmm_i8.forward(&args);
    return 0;
}

export fn sb_spmm_i8_staging_len(m: usize, n: usize) usize {
    return spmm_i8.Staging.len(m, n);
}

/// `sb_spmm_i8` with an fp32 epilogue and no residual whose output goes straight to per-token
/// u7 codes in the packed layout (`packed_y`, `sb_quantize_packed_len(m, n)` bytes; `y_scale`,
/// `y_zero` [m]): the bytes `sb_spmm_i8` then `sb_quantize_packed` (per token) would write.
export fn sb_spmm_i8_quantized(
    blob: [*]align(64) u8,
    blob_len: usize,
    packed_x: [*]const u8,
    m: usize,
    x_scale: [*]const f32,
    x_zero: [*]const i32,
    activation: u32,
    staging: [*]align(64) u8,
    staging_len: usize,
    packed_y: [*]u8,
    y_scale: [*]f32,
    y_zero: [*]i32,
) i32 {
    if (m == 0) return -3;
    const w = sparse_format.view(blob, blob_len) catch |e| return status(e);
    if (staging_len < spmm_i8.Staging.len(m, w.header.n)) return status(error.BufferTooSmall);
    var scratch = spmm_i8.Staging.init(staging, m, w.header.n);
    const args = spmm_i8.Args{
        .w = w,
        .x = packed_x,
        .m = m,
        .x_scale = x_scale,
        .x_zero = x_zero,
        .residual = null,
        .y = staging,
        .output = .f32,
        .requant = .{},
        .activation = enumCode(vmath.Activation, activation) orelse return -3,
    };
    spmm_i8.forwardQuantized(&args, &scratch, packed_y, y_scale, y_zero) catch |e| return status(e);
    return 0;
}

export fn sb_gemm_i8_packed_len(n: usize, k: usize) usize {
    return gemm_i8.packedLen(n, k) catch 0;
}

export fn sb_gemm_i8_pack(q: [*]const i8, scale: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, blob: [*]align(64) u8, blob_len: usize) i32 {
    if (!positive(.{ n, k })) return -3;
    gemm_i8.pack(q, scale, bias, n, k, blob, blob_len) catch |e| return status(e);
    return 0;
}

/// Checks a dense int8 blob's header and shape ([n, k]) once, before its first kernel call.
export fn sb_gemm_i8_check(blob: [*]align(64) u8, blob_len: usize, n: usize, k: usize) i32 {
    const v = gemm_i8.view(blob, blob_len) catch |e| return status(e);
    return shapeStatus(v.header, n, k);
}

export fn sb_gemm_i8(blob: [*]align(64) u8, blob_len: usize, x: [*]const u8, ldx: usize, m: usize, call: *const Int8Call) i32 {
    if (call.numerics > 1) return -3;
    const target = int8Output(call.output, call.out_scale, call.out_zero, call.out_qmax) orelse return -3;
    const w = gemm_i8.view(blob, blob_len) catch |e| return status(e);
    // Rows of whole 4-byte groups, zero-padded past k (`sb_quantize_rows` with ldq from k).
    if (m == 0 or ldx % 4 != 0 or ldx < 4 * @as(usize, w.header.k4)) return -3;
    const args = gemm_i8.Args{
        .w = w,
        .x = x,
        .ldx = ldx,
        .m = m,
        .x_scale = call.x_scale,
        .x_zero = call.x_zero,
        .residual = call.residual,
        .y = call.y,
        .output = target.output,
        .requant = target.requant,
        .activation = enumCode(vmath.Activation, call.activation) orelse return -3,
        .ort_numerics = call.numerics == 1,
    };
    gemm_i8.forward(&args);
    return 0;
}

export fn sb_spmm_f32_packed_len(w: [*]const f32, n: usize, k: usize) usize {
    return sparse_format.f32PackedLen(w, n, k) catch 0;
}

export fn sb_spmm_f32_pack(w: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, blob: [*]align(64) u8, blob_len: usize) i32 {
    if (!positive(.{ n, k })) return -3;
    sparse_format.f32Pack(w, bias, n, k, blob, blob_len) catch |e| return status(e);
    return 0;
}

export fn sb_spmm_f32_unpack(blob: [*]align(64) u8, blob_len: usize, w: [*]f32, bias: [*]f32) i32 {
    sparse_format.f32Unpack(blob, blob_len, w, bias) catch |e| return status(e);
    return 0;
}

/// Checks an fp32 sparse blob once, before its first kernel call: its header, its tables
/// (`sparse_format.checkF32Weights`) and its shape, which must be [n, k].
export fn sb_spmm_f32_check(blob: [*]align(64) u8, blob_len: usize, n: usize, k: usize) i32 {
    return switch (sparse_format.checkF32Weights(blob, blob_len) catch |e| return status(e)) {
        inline else => |v| shapeStatus(v.header, n, k),
    };
}

export fn sb_spmm_f32(
    blob: [*]align(64) u8,
    blob_len: usize,
    packed_x: [*]const f32,
    m: usize,
    residual: ?[*]const f32,
    y: [*]f32,
    activation: u32,
) i32 {
    if (m == 0) return -3;
    const args = spmm_f32.Args{
        .w = sparse_format.viewF32Weights(blob, blob_len) catch |e| return status(e),
        .x = packed_x,
        .m = m,
        .residual = residual,
        .y = y,
        .activation = enumCode(vmath.Activation, activation) orelse return -3,
    };
    spmm_f32.forward(&args);
    return 0;
}

// ---- argument structs ----

/// The structs passed by pointer, by code: 0 `Int8Call`, 1 `attention.Problem`,
/// 2 `embeddings.Call`.
const abi_structs = .{ Int8Call, attention.Problem, embeddings.Call };

/// Writes the byte offset of each field of struct `which` (at most `capacity` of them) to
/// `offsets` and the field names, comma separated, to `names` (`names_len` bytes), and returns
/// the struct's size; 0 for an unknown code or too little room. `ffi/structs.ts` checks its
/// layouts against these, names included (two 4-byte fields swapped keep their offsets).
export fn sb_struct_layout(which: u32, offsets: [*]u32, capacity: usize, names: [*]u8, names_len: usize) usize {
    inline for (abi_structs, 0..) |T, code| {
        if (which == code) {
            const fields = std.meta.fields(T);
            const joined = comptime blk: {
                var text: []const u8 = "";
                for (fields, 0..) |f, i| text = text ++ (if (i == 0) "" else ",") ++ f.name;
                break :blk text;
            };
            if (capacity < fields.len or names_len < joined.len) return 0;
            inline for (fields, 0..) |f, i| offsets[i] = @offsetOf(T, f.name);
            @memcpy(names[0..joined.len], joined);
            return @sizeOf(T);
        }
    }
    return 0;
}

// ---- probes ----

export fn sb_probe_peak_f32(iterations: u64) u64 {
    return probe.peakF32(iterations);
}

export fn sb_probe_peak_i8(iterations: u64) u64 {
    return probe_i8.peakI8(iterations);
}

test {
    std.testing.refAllDecls(@This());
    _ = cpu;
    _ = pool;
    _ = vmath;
    _ = linear_f32;
    _ = linear_bf16;
    _ = layernorm;
    _ = attention;
    _ = attention_i8;
    _ = embeddings;
    _ = pooling;
    _ = int8;
    _ = int8_epilogue;
    _ = quantize;
    _ = quantize_packed;
    _ = quantize_staged;
    _ = pack_f32;
    _ = sparse_format;
    _ = sparse_f32_blocks;
    _ = spmm_i8;
    _ = gemm_i8;
    _ = spmm_f32;
    _ = probe_i8;
    _ = mapped_file;
    _ = transpose;
}

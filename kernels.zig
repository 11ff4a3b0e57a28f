//! Root of the C ABI of the sparsebert kernel library. Every `export fn` is a thin wrapper
//! over one op in `kernels/<op>.zig`; arguments are primitives and pointers; shapes are checked
//! by the TypeScript op before the call and asserted again here (trapping in ReleaseSafe).
//! The symbol table that Deno binds is `ffi/symbols.ts`; keep the two in the same order.
const std = @import("std");
const cpu = @import("kernels/cpu.zig");
const pool = @import("kernels/pool.zig");
const vmath = @import("kernels/vmath.zig");
const linear_f32 = @import("kernels/linear_f32.zig");
const probe = @import("kernels/probe.zig");

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

// ---- dense fp32 linear ----

export fn sb_linear_f32_packed_len(n: usize, k: usize) usize {
    return linear_f32.packedLen(n, k);
}

export fn sb_linear_f32_pack(weight: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, packed_weights: [*]f32) void {
    linear_f32.pack(weight, bias, n, k, packed_weights);
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
) void {
    linear_f32.forward(x, m, k, packed_weights, n, residual, y, @enumFromInt(activation));
}

// ---- probes ----

export fn sb_probe_peak_f32(iterations: u64) u64 {
    return probe.peakF32(iterations);
}

test {
    std.testing.refAllDecls(@This());
    _ = cpu;
    _ = pool;
    _ = vmath;
    _ = linear_f32;
}

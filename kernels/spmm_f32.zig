//! Unstructured sparse fp32 linear layer: Y = act(W X^T + b) + R with W in CSR
//! (`sparse_format.zig`, one row per output channel) and X in the packed f32 layout
//! (`pack_f32.packF32`: chunks of 16 tokens, token-contiguous per input channel).
//!
//! Per output channel and chunk, every non-zero w (input channel k) does two FMAs:
//! acc[0..16 tokens] += w * X[k][0..16], spread over 4 accumulator pairs to hide the FMA
//! latency. 16 channels x 16 tokens are then transposed (8x8 blocks) into a token-major tile
//! and written as whole 64-byte rows, as in `spmm_i8`.
//!
//! Envelope (AVX2, Zen 3): a non-zero costs 4 loads (index, value, two 32-byte activation
//! halves) for 32 FLOPs; the activation chunk (64 bytes per k: 48 KiB at k = 768) sits in L2,
//! whose ~32 B/cycle bound this kernel near half the FMA peak on random patterns.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");
const format = @import("sparse_format.zig");
const pack_f32 = @import("pack_f32.zig");
const layout = @import("quantize_packed.zig");
const transpose = @import("transpose.zig");

const F8 = @Vector(8, f32);
const chunk_tokens = layout.chunk_tokens;
/// Output channels per tile: one 64-byte row of fp32 per token.
const tile_channels: usize = 16;
const V16 = @Vector(tile_channels, f32);
/// Weight bytes (values and indices) per slice of tiles, kept in L2 while chunks pass.
const slice_bytes: usize = 128 * 1024;

pub const Args = struct {
    w: format.F32View,
    /// Packed activations, `pack_f32.packedF32Len(m, k)` floats.
    x: [*]const f32,
    m: usize,
    /// Token-major [m, n] fp32 added after the activation, or null.
    residual: ?[*]const f32,
    /// Token-major [m, n] output.
    y: [*]f32,
    activation: vmath.Activation,
};

/// Runs the layer on the worker pool.
pub fn forward(args: *const Args) void {
    assert(args.m >= 1 and args.w.header.n >= 1 and args.w.header.k >= 1);
    switch (args.activation) {
        inline else => |act| pool.parallel(Args, args, Worker(act).run),
    }
}

/// First tile whose cumulative cost (non-zeros plus 4 per channel) reaches `target`.
fn splitPoint(row_ptr: [*]const u32, n: usize, target: u64) usize {
    const tiles = (n + tile_channels - 1) / tile_channels;
    var lo: usize = 0;
    var hi: usize = tiles;
    while (lo < hi) {
        const mid = lo + (hi - lo) / 2;
        const row = mid * tile_channels;
        if (@as(u64, row_ptr[row]) + 4 * row < target) lo = mid + 1 else hi = mid;
    }
    return lo;
}

fn Worker(comptime act: vmath.Activation) type {
    return struct {
        fn run(args: *const Args, ith: u32, nth: u32) void {
            const n: usize = args.w.header.n;
            const tiles = (n + tile_channels - 1) / tile_channels;
            const total: u64 = args.w.header.nnz + 4 * n;
            const begin = if (ith == 0) 0 else splitPoint(args.w.row_ptr, n, total * ith / nth);
            const end = if (ith + 1 == nth) tiles else splitPoint(args.w.row_ptr, n, total * (ith + 1) / nth);
            var slice_begin = begin;
            while (slice_begin < end) {
                var slice_end = slice_begin + 1;
                while (slice_end < end and nnzBetween(args, slice_begin, slice_end) * 8 < slice_bytes) slice_end += 1;
                for (0..layout.chunksOf(args.m)) |chunk| {
                    for (slice_begin..slice_end) |tile| outputTile(act, args, tile, chunk);
                }
                slice_begin = slice_end;
            }
        }
    };
}

fn nnzBetween(args: *const Args, tile_begin: usize, tile_end: usize) usize {
    const n: usize = args.w.header.n;
    const r1 = @min(tile_end * tile_channels, n);
    return args.w.row_ptr[r1] - args.w.row_ptr[tile_begin * tile_channels];
}

inline fn loadX(p: [*]const f32) F8 {
    return @as(*align(4) const F8, @ptrCast(p)).*;
}

/// The hot loop: one output channel over one chunk (16 tokens).
fn rowKernel(xc: [*]const f32, col: [*]const u32, value: [*]const f32, count: usize) [2]F8 {
    const zero: F8 = @splat(0);
    var acc: [4][2]F8 = @splat(.{ zero, zero });
    var e: usize = 0;
    while (e + 4 <= count) : (e += 4) {
        inline for (0..4) |j| {
            const w: F8 = @splat(value[e + j]);
            const x = xc + @as(usize, col[e + j]) * chunk_tokens;
            acc[j][0] = @mulAdd(F8, w, loadX(x), acc[j][0]);
            acc[j][1] = @mulAdd(F8, w, loadX(x + 8), acc[j][1]);
        }
    }
    while (e < count) : (e += 1) {
        const w: F8 = @splat(value[e]);
        const x = xc + @as(usize, col[e]) * chunk_tokens;
        acc[0][0] = @mulAdd(F8, w, loadX(x), acc[0][0]);
        acc[0][1] = @mulAdd(F8, w, loadX(x + 8), acc[0][1]);
    }
    return .{
        (acc[0][0] + acc[1][0]) + (acc[2][0] + acc[3][0]),
        (acc[0][1] + acc[1][1]) + (acc[2][1] + acc[3][1]),
    };
}

fn outputTile(comptime act: vmath.Activation, args: *const Args, tile: usize, chunk: usize) void {
    const w = args.w;
    const n: usize = w.header.n;
    const k: usize = w.header.k;
    const xc = args.x + chunk * k * chunk_tokens;
    const c0 = tile * tile_channels;
    const channels: usize = @min(tile_channels, n - c0);
    var buffer: [chunk_tokens][tile_channels]f32 align(64) = undefined;
    // Two groups of 8 channels: compute, transpose 8x8 per token half, store.
    inline for (0..2) |group| {
        var rows: [2][8]F8 = undefined;
        inline for (0..8) |j| {
            const c = c0 + group * 8 + j;
            if (c < n) {
                const e0 = w.row_ptr[c];
                const e1 = w.row_ptr[c + 1];
                const sums = rowKernel(xc, w.col + e0, w.value + e0, e1 - e0);
                const b: F8 = @splat(w.bias[c]);
                rows[0][j] = act.apply(8, sums[0] + b);
                rows[1][j] = act.apply(8, sums[1] + b);
            } else {
                rows[0][j] = @splat(0);
                rows[1][j] = @splat(0);
            }
        }
        inline for (0..2) |half| {
            const t = transpose.f32x8(rows[half]);
            inline for (0..8) |j| buffer[half * 8 + j][group * 8 ..][0..8].* = t[j];
        }
    }
    const t0 = chunk * chunk_tokens;
    const tokens: usize = @min(chunk_tokens, args.m - t0);
    for (0..tokens) |j| {
        const row: *const [tile_channels]f32 = &buffer[j];
        var v: V16 = row.*;
        const at = (t0 + j) * n + c0;
        if (channels == tile_channels) {
            if (args.residual) |res| v += res[at..][0..tile_channels].*;
            args.y[at..][0..tile_channels].* = v;
        } else {
            for (0..channels) |c| {
                const r: f32 = if (args.residual) |res| res[at + c] else 0;
                args.y[at + c] = v[c] + r;
            }
        }
    }
}

// ---- tests ----

const testing = std.testing;

fn checkShape(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    const gpa = testing.allocator;
    var prng = std.Random.DefaultPrng.init(seed);
    const rnd = prng.random();
    const w = try gpa.alloc(f32, n * k);
    defer gpa.free(w);
    for (w) |*v| v.* = if (rnd.uintLessThan(u32, 100) < keep_percent) rnd.floatNorm(f32) else 0;
    const bias = try gpa.alloc(f32, n);
    defer gpa.free(bias);
    for (bias, 0..) |*b, i| b.* = @as(f32, @floatFromInt(i % 5)) * 0.1 - 0.2;
    const len = try format.f32PackedLen(w.ptr, n, k);
    const blob = try gpa.alignedAlloc(u8, .@"64", len);
    defer gpa.free(blob);
    try format.f32Pack(w.ptr, bias.ptr, n, k, blob.ptr, len);
    const x = try gpa.alloc(f32, m * k);
    defer gpa.free(x);
    for (x) |*v| v.* = rnd.floatNorm(f32);
    const xp = try gpa.alloc(f32, pack_f32.packedF32Len(m, k));
    defer gpa.free(xp);
    pack_f32.packF32(x.ptr, m, k, xp.ptr);
    const res = try gpa.alloc(f32, m * n);
    defer gpa.free(res);
    for (res, 0..) |*r, i| r.* = @as(f32, @floatFromInt(i % 9)) * 0.25;
    const y = try gpa.alloc(f32, m * n);
    defer gpa.free(y);
    for ([_]bool{ false, true }) |with_residual| {
        const args = Args{
            .w = try format.viewF32(blob.ptr, len),
            .x = xp.ptr,
            .m = m,
            .residual = if (with_residual) res.ptr else null,
            .y = y.ptr,
            .activation = .none,
        };
        forward(&args);
        for (0..m) |t| for (0..n) |c| {
            var want: f64 = bias[c];
            var mag: f64 = @abs(bias[c]);
            for (0..k) |kk| {
                want += @as(f64, x[t * k + kk]) * w[c * k + kk];
                mag += @abs(@as(f64, x[t * k + kk]) * w[c * k + kk]);
            }
            if (with_residual) want += res[t * n + c];
            try testing.expectApproxEqAbs(want, @as(f64, y[t * n + c]), 1e-5 * (1 + mag));
        };
    }
}

test "spmm_f32 matches the naive sum on odd shapes" {
    try checkShape(1, 1, 1, 100, 1);
    try checkShape(5, 7, 3, 60, 2);
    try checkShape(17, 21, 29, 30, 3);
    try checkShape(33, 40, 100, 10, 4);
    try checkShape(16, 8, 40, 0, 5);
}

test "spmm_f32 on two threads" {
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkShape(40, 96, 200, 20, 6);
}

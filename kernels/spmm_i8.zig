//! Sparse int8 linear layer: Y = act(dequant(W_q X_q^T) + b) + R with W_q in 4x1 blocks
//! (`sparse_format.zig`) and X_q u7 activations in the packed token-contiguous layout
//! (`quantize.zig`). Output Y is token-major [m, n]: fp32, requantized u8, or exact s32.
//!
//! Micro-kernel: one block row (4 output channels) x one chunk (16 tokens), 8 ymm
//! accumulators. Per group of 4 kept blocks (input channels k0..k3):
//!   ab = x[k0] | x[k1] << 8; cd = x[k2] | x[k3] << 8 (u16 lanes: byte pairs of two channels)
//!   a0, a1 = unpack lo/hi 16-bit (ab, cd)           (dwords: 4 channels for 8 tokens each)
//!   per channel r: w = broadcast(dword r); acc[r] += dot4(a0, w), dot4(a1, w)
//! That is 8 dot-product steps (256 MACs) against 4 loads, 2 shifts, 2 ORs and 2 shuffles; the
//! multiplies stay the bottleneck (2 per step on AVX2, 1 with VNNI).
//!
//! Epilogue (per channel c, token t), exact in s32 up to the float conversion:
//!   y = act((acc - zero[t] * wsum[c]) * scale_x[t] * scale_w[c] + bias[c]) + R[t, c]
//! where the erf GELU is `vmath.geluErfInt8` (within 6e-5 of the exact GELU; the layer's 7-bit
//! activations cost far more than that).
//!
//! Threads split block rows by kept groups (plus one per block row for the epilogue), so an
//! uneven pattern still gives every thread the same work. Each thread walks its block rows in
//! slices of about `slice_bytes` of weights, and every 16-token chunk passes over one slice
//! while it is in L2.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");
const int8 = @import("int8.zig");
const format = @import("sparse_format.zig");
const quantize = @import("quantize.zig");

const I32x8 = int8.I32x8;
const F8 = @Vector(8, f32);
const F4 = @Vector(4, f32);
const U16x16 = @Vector(16, u16);
const chunk_tokens = quantize.chunk_tokens;
const row_bytes = quantize.packed_row_bytes;
/// Weight bytes (values and indices) per slice of block rows.
const slice_bytes: usize = 96 * 1024;
const group_bytes: usize = 16 + 8;
/// Stored index (k * format.k_unit) to byte offset (k * row_bytes).
const k_scale = row_bytes / format.k_unit;

pub const Args = struct {
    w: format.I8View,
    /// Packed activations, `quantize.packedLen(m, k)` bytes.
    x: [*]const u8,
    m: usize,
    x_scale: [*]const f32,
    x_zero: [*]const i32,
    /// Token-major [m, n] fp32 added after the activation, or null.
    residual: ?[*]const f32,
    /// Token-major [m, n] output of the element type `output` names.
    y: *anyopaque,
    output: int8.Output,
    requant: int8.Requant,
    activation: vmath.Activation,
};

/// Runs the layer on the worker pool.
pub fn forward(args: *const Args) void {
    const h = args.w.header;
    assert(args.m >= 1 and h.n >= 1 and h.k >= 1);
    if (std.debug.runtime_safety) checkActivations(args.x, args.m, h.k);
    switch (args.output) {
        inline else => |out| switch (args.activation) {
            inline else => |act| pool.parallel(Args, args, Worker(out, act).run),
        },
    }
}

/// Safe builds check the activations' 7-bit bound (the saturation rule of `int8.zig`).
fn checkActivations(x: [*]const u8, m: usize, k: usize) void {
    const rows = quantize.chunksOf(m) * k;
    for (0..rows) |i| {
        const lo: *align(1) const [16]u16 = @ptrCast(x + i * row_bytes);
        for (lo) |v| assert(v <= int8.act_max);
    }
}

/// Block rows per output tile: 16 channels, one cache line of fp32 per token.
const tile_block_rows: usize = 4;
const tile_channels: usize = 4 * tile_block_rows;

/// First tile whose cumulative cost reaches `target`; a tile costs its groups plus one per
/// block row (the epilogue).
fn splitPoint(group_ptr: [*]const u32, block_rows: usize, target: u64) usize {
    const tiles = (block_rows + tile_block_rows - 1) / tile_block_rows;
    var lo: usize = 0;
    var hi: usize = tiles;
    while (lo < hi) {
        const mid = lo + (hi - lo) / 2;
        const br = mid * tile_block_rows;
        if (@as(u64, group_ptr[br]) + br < target) lo = mid + 1 else hi = mid;
    }
    return lo;
}

fn Worker(comptime out: int8.Output, comptime act: vmath.Activation) type {
    return struct {
        fn run(args: *const Args, ith: u32, nth: u32) void {
            const h = args.w.header;
            const block_rows: usize = h.block_rows;
            const tiles = (block_rows + tile_block_rows - 1) / tile_block_rows;
            const total: u64 = @as(u64, h.groups) + block_rows;
            const begin = if (ith == 0) 0 else splitPoint(args.w.group_ptr, block_rows, total * ith / nth);
            const end = if (ith + 1 == nth) tiles else splitPoint(args.w.group_ptr, block_rows, total * (ith + 1) / nth);
            var slice_begin = begin;
            while (slice_begin < end) {
                // Grow the slice of tiles until its weights reach slice_bytes.
                var slice_end = slice_begin + 1;
                while (slice_end < end and groupsBetween(args, slice_begin, slice_end) * group_bytes < slice_bytes) {
                    slice_end += 1;
                }
                for (0..quantize.chunksOf(args.m)) |chunk| {
                    const tokens = Tokens.of(args, chunk);
                    for (slice_begin..slice_end) |tile| outputTile(out, act, args, tile, &tokens);
                }
                slice_begin = slice_end;
            }
        }
    };
}

fn groupsBetween(args: *const Args, tile_begin: usize, tile_end: usize) usize {
    const block_rows: usize = args.w.header.block_rows;
    const br1 = @min(tile_end * tile_block_rows, block_rows);
    return args.w.group_ptr[br1] - args.w.group_ptr[tile_begin * tile_block_rows];
}

/// Per-token quantization parameters of one chunk; lanes past m hold zeros.
const Tokens = struct {
    chunk: usize,
    count: usize,
    zero: [2]I32x8,
    scale: [2]F8,

    fn of(args: *const Args, chunk: usize) Tokens {
        const t0 = chunk * chunk_tokens;
        var result = Tokens{
            .chunk = chunk,
            .count = @min(chunk_tokens, args.m - t0),
            .zero = @splat(@splat(0)),
            .scale = @splat(@splat(0)),
        };
        for (0..result.count) |j| {
            result.zero[j / 8][j % 8] = args.x_zero[t0 + j];
            result.scale[j / 8][j % 8] = args.x_scale[t0 + j];
        }
        return result;
    }
};

inline fn loadRow(p: [*]const u8) U16x16 {
    return @as(*align(1) const U16x16, @ptrCast(p)).*;
}

/// One group: 4 input channels x 4 output channels x 16 tokens.
inline fn step(acc: *[4][2]I32x8, xc: [*]const u8, ks: [*]const u16, w: [*]const i8) void {
    const lo16 = @Vector(16, i32){ 0, -1, 1, -2, 2, -3, 3, -4, 8, -9, 9, -10, 10, -11, 11, -12 };
    const hi16 = @Vector(16, i32){ 4, -5, 5, -6, 6, -7, 7, -8, 12, -13, 13, -14, 14, -15, 15, -16 };
    const eight: U16x16 = @splat(8);
    // The four indices as one scalar load: left to itself, LLVM gathers them into a vector and
    // extracts each with vpextrd, which costs the vector pipes about 2 cycles per step (measured
    // 16.2 -> 14.5 cycles per step at 90%, k = 768; 17.5 -> 14.6 at k = 3072).
    const four = std.mem.readInt(u64, @ptrCast(ks), .little);
    const k0: usize = @as(u16, @truncate(four));
    const k1: usize = @as(u16, @truncate(four >> 16));
    const k2: usize = @as(u16, @truncate(four >> 32));
    const k3: usize = @as(u16, @truncate(four >> 48));
    const ab = loadRow(xc + k0 * k_scale) | loadRow(xc + k1 * k_scale) << eight;
    const cd = loadRow(xc + k2 * k_scale) | loadRow(xc + k3 * k_scale) << eight;
    const a0: int8.U8x32 = @bitCast(@shuffle(u16, ab, cd, lo16));
    const a1: int8.U8x32 = @bitCast(@shuffle(u16, ab, cd, hi16));
    inline for (0..4) |r| {
        const wb = int8.broadcast4(i8, w + 4 * r);
        acc[r][0] = int8.dot4(acc[r][0], a0, wb);
        acc[r][1] = int8.dot4(acc[r][1], a1, wb);
    }
}

/// Accumulators of one block row over one chunk: acc[r][0] tokens 0-7, acc[r][1] tokens 8-15.
fn microKernel(xc: [*]const u8, group_k: [*]const u16, weights: [*]const i8, groups: usize) [4][2]I32x8 {
    var acc: [4][2]I32x8 = @splat(.{ @as(I32x8, @splat(0)), @as(I32x8, @splat(0)) });
    var g: usize = 0;
    while (g + 2 <= groups) : (g += 2) {
        step(&acc, xc, group_k + 4 * g, weights + 16 * g);
        step(&acc, xc, group_k + 4 * g + 4, weights + 16 * g + 16);
    }
    if (g < groups) step(&acc, xc, group_k + 4 * g, weights + 16 * g);
    return acc;
}

/// Token-major 4-wide columns of a 4 x 8 block: result[j] = {v[0][j], v[1][j], v[2][j], v[3][j]}.
inline fn transpose4x8(comptime T: type, v: [4]@Vector(8, T)) [8]@Vector(4, T) {
    const lo = @Vector(8, i32){ 0, -1, 1, -2, 4, -5, 5, -6 };
    const hi = @Vector(8, i32){ 2, -3, 3, -4, 6, -7, 7, -8 };
    const lo64 = @Vector(8, i32){ 0, 1, -1, -2, 4, 5, -5, -6 };
    const hi64 = @Vector(8, i32){ 2, 3, -3, -4, 6, 7, -7, -8 };
    const t01lo = @shuffle(T, v[0], v[1], lo);
    const t01hi = @shuffle(T, v[0], v[1], hi);
    const t23lo = @shuffle(T, v[2], v[3], lo);
    const t23hi = @shuffle(T, v[2], v[3], hi);
    const c = [4]@Vector(8, T){
        @shuffle(T, t01lo, t23lo, lo64), // tokens 0, 4
        @shuffle(T, t01lo, t23lo, hi64), // tokens 1, 5
        @shuffle(T, t01hi, t23hi, lo64), // tokens 2, 6
        @shuffle(T, t01hi, t23hi, hi64), // tokens 3, 7
    };
    var result: [8]@Vector(4, T) = undefined;
    inline for (0..4) |j| {
        result[j] = @shuffle(T, c[j], undefined, @Vector(4, i32){ 0, 1, 2, 3 });
        result[j + 4] = @shuffle(T, c[j], undefined, @Vector(4, i32){ 4, 5, 6, 7 });
    }
    return result;
}

/// Computes 16 channels x 16 tokens into a token-major buffer, then writes whole rows of 16
/// channels per token: one cache line of fp32, instead of four partial lines at a large stride
/// (which thrash one L1 set when n * 4 is a multiple of 4 KiB).
fn outputTile(comptime out: int8.Output, comptime act: vmath.Activation, args: *const Args, tile: usize, tokens: *const Tokens) void {
    const T = if (out == .s32) i32 else f32;
    var buffer: [chunk_tokens][tile_channels]T align(64) = undefined;
    const block_rows: usize = args.w.header.block_rows;
    const br0 = tile * tile_block_rows;
    const count: usize = @min(tile_block_rows, block_rows - br0);
    for (0..count) |b| blockRow(out, act, args, br0 + b, tokens, T, &buffer, 4 * b);
    if (count < tile_block_rows) for (&buffer) |*row| @memset(row[4 * count ..], 0);

    const n: usize = args.w.header.n;
    const c0 = br0 * 4;
    const channels: usize = @min(tile_channels, n - c0);
    const t0 = tokens.chunk * chunk_tokens;
    for (0..tokens.count) |j| {
        const at = (t0 + j) * n + c0;
        const V = @Vector(tile_channels, T);
        const row: *const [tile_channels]T = &buffer[j];
        var v: V = row.*;
        if (out == .s32) {
            storeRow(i32, @as([*]i32, @ptrCast(@alignCast(args.y))) + at, v, channels);
            continue;
        }
        if (args.residual) |res| v += loadRow16(res + at, channels);
        if (out == .f32) {
            storeRow(f32, @as([*]f32, @ptrCast(@alignCast(args.y))) + at, v, channels);
        } else {
            storeRow(u8, @as([*]u8, @ptrCast(args.y)) + at, requantize(v, args.requant), channels);
        }
    }
}

/// One block row: accumulates, applies the per-channel epilogue and writes channels
/// `col..col + 4` of `buffer` for the chunk's 16 tokens.
fn blockRow(
    comptime out: int8.Output,
    comptime act: vmath.Activation,
    args: *const Args,
    br: usize,
    tokens: *const Tokens,
    comptime T: type,
    buffer: *[chunk_tokens][tile_channels]T,
    col: usize,
) void {
    const w = args.w;
    const k: usize = w.header.k;
    const g0 = w.group_ptr[br];
    const g1 = w.group_ptr[br + 1];
    const xc = args.x + tokens.chunk * k * row_bytes;
    const acc = microKernel(xc, w.group_k + 4 * @as(usize, g0), w.weights + 16 * @as(usize, g0), g1 - g0);

    const c0 = br * 4;
    var exact: [4][2]I32x8 = undefined;
    inline for (0..4) |r| inline for (0..2) |half| {
        exact[r][half] = acc[r][half] -% tokens.zero[half] *% @as(I32x8, @splat(w.wsum[c0 + r]));
    };
    if (out == .s32) {
        inline for (0..2) |half| {
            const cols = transpose4x8(i32, .{ exact[0][half], exact[1][half], exact[2][half], exact[3][half] });
            inline for (0..8) |j| buffer[half * 8 + j][col..][0..4].* = cols[j];
        }
        return;
    }
    const sw: F4 = w.scale[c0..][0..4].*;
    const bias: F4 = w.bias[c0..][0..4].*;
    var f: [4][2]F8 = undefined;
    inline for (0..4) |r| inline for (0..2) |half| {
        const s = tokens.scale[half] * @as(F8, @splat(sw[r]));
        const v: F8 = @floatFromInt(exact[r][half]);
        const pre = v * s + @as(F8, @splat(bias[r]));
        f[r][half] = act.applyInt8(8, pre);
    };
    inline for (0..2) |half| {
        const cols = transpose4x8(f32, .{ f[0][half], f[1][half], f[2][half], f[3][half] });
        inline for (0..8) |j| buffer[half * 8 + j][col..][0..4].* = cols[j];
    }
}

inline fn loadRow16(p: [*]const f32, count: usize) @Vector(tile_channels, f32) {
    if (count == tile_channels) return p[0..tile_channels].*;
    var v: @Vector(tile_channels, f32) = @splat(0);
    for (0..count) |c| v[c] = p[c];
    return v;
}

inline fn storeRow(comptime T: type, p: [*]T, v: @Vector(tile_channels, T), count: usize) void {
    if (count == tile_channels) {
        p[0..tile_channels].* = v;
    } else {
        for (0..count) |c| p[c] = v[c];
    }
}

fn requantize(v: @Vector(tile_channels, f32), rq: int8.Requant) @Vector(tile_channels, u8) {
    const V = @Vector(tile_channels, f32);
    const I = @Vector(tile_channels, i32);
    const magic: V = @splat(12582912.0);
    const scaled = v * @as(V, @splat(rq.inv_scale));
    // Clamp before rounding so that huge values stay within the magic-number range.
    const bounded = std.math.clamp(scaled, @as(V, @splat(-1.0e6)), @as(V, @splat(1.0e6)));
    const r: I = @intFromFloat((bounded + magic) - magic);
    const q = std.math.clamp(r + @as(I, @splat(rq.zero)), @as(I, @splat(0)), @as(I, @splat(rq.qmax)));
    return @intCast(q);
}

// ---- tests ----

const testing = std.testing;

fn randomWeights(q: []i8, n: usize, k: usize, keep_percent: u32, rnd: std.Random) void {
    for (0..(n + 3) / 4) |br| for (0..k) |kk| {
        const keep = rnd.uintLessThan(u32, 100) < keep_percent;
        for (0..4) |r| {
            const row = br * 4 + r;
            if (row < n) q[row * k + kk] = if (keep) rnd.int(i8) else 0;
        }
    };
}

fn checkShape(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    const gpa = testing.allocator;
    var prng = std.Random.DefaultPrng.init(seed);
    const rnd = prng.random();
    const q = try gpa.alloc(i8, n * k);
    defer gpa.free(q);
    randomWeights(q, n, k, keep_percent, rnd);
    q[0] = -128;
    q[n * k - 1] = 127;
    const scale = try gpa.alloc(f32, n);
    defer gpa.free(scale);
    const bias = try gpa.alloc(f32, n);
    defer gpa.free(bias);
    for (scale, bias, 0..) |*s, *b, i| {
        s.* = 0.001 * @as(f32, @floatFromInt(i % 7 + 1));
        b.* = @as(f32, @floatFromInt(i % 5)) - 2;
    }
    const len = try format.i8PackedLen(q.ptr, n, k);
    const blob = try gpa.alignedAlloc(u8, .@"64", len);
    defer gpa.free(blob);
    try format.i8Pack(q.ptr, scale.ptr, bias.ptr, n, k, blob.ptr, len);

    // Activations: per-token u7 with extremes.
    const xq = try gpa.alloc(u8, m * k);
    defer gpa.free(xq);
    for (xq) |*v| v.* = rnd.uintAtMost(u8, 127);
    xq[0] = 127;
    xq[xq.len - 1] = 0;
    const x_scale = try gpa.alloc(f32, m);
    defer gpa.free(x_scale);
    const x_zero = try gpa.alloc(i32, m);
    defer gpa.free(x_zero);
    for (x_scale, x_zero, 0..) |*s, *z, t| {
        s.* = 0.02 + 0.001 * @as(f32, @floatFromInt(t % 3));
        z.* = @intCast(t % 128);
    }
    const packed_x = try gpa.alignedAlloc(u8, .@"64", quantize.packedLen(m, k));
    defer gpa.free(packed_x);
    try testing.expect(quantize.packRows(xq.ptr, m, k, k, packed_x.ptr));

    const y32 = try gpa.alloc(i32, m * n);
    defer gpa.free(y32);
    var args = Args{
        .w = try format.view(blob.ptr, len),
        .x = packed_x.ptr,
        .m = m,
        .x_scale = x_scale.ptr,
        .x_zero = x_zero.ptr,
        .residual = null,
        .y = y32.ptr,
        .output = .s32,
        .requant = .{},
        .activation = .none,
    };
    forward(&args);
    const yf = try gpa.alloc(f32, m * n);
    defer gpa.free(yf);
    const res = try gpa.alloc(f32, m * n);
    defer gpa.free(res);
    for (res, 0..) |*r, i| r.* = @as(f32, @floatFromInt(i % 13)) * 0.5;
    args.output = .f32;
    args.y = yf.ptr;
    args.residual = res.ptr;
    args.activation = .gelu_erf;
    forward(&args);
    for (0..m) |t| for (0..n) |c| {
        var want: i32 = 0;
        for (0..k) |kk| want += (@as(i32, xq[t * k + kk]) - x_zero[t]) * q[c * k + kk];
        try testing.expectEqual(want, y32[t * n + c]);
        const pre = @as(f64, @floatFromInt(want)) * x_scale[t] * scale[c] + bias[c];
        const gelu = 0.5 * pre * (1 + erf64(pre / std.math.sqrt2));
        const expect = gelu + res[t * n + c];
        try testing.expectApproxEqAbs(expect, @as(f64, yf[t * n + c]), 1e-4 * (1 + @abs(expect)));
    };
}

fn erf64(x: f64) f64 {
    const ax = @abs(x);
    if (ax >= 3) {
        // Asymptotic erfc; its truncation error is below 1e-8 from 3 up.
        const x2 = ax * ax;
        const series = 1 - 1 / (2 * x2) + 3 / (4 * x2 * x2) - 15 / (8 * x2 * x2 * x2);
        const erfc = @exp(-x2) / (ax * std.math.sqrt(std.math.pi)) * series;
        return std.math.sign(x) * (1 - erfc);
    }
    // Maclaurin series, well conditioned below 3.
    var term = x;
    var sum = x;
    var i: usize = 1;
    while (i < 200) : (i += 1) {
        const fi: f64 = @floatFromInt(i);
        term *= -x * x / fi;
        const add = term / (2 * fi + 1);
        sum += add;
        if (@abs(add) < 1e-17) break;
    }
    return sum * 2 / std.math.sqrt(std.math.pi);
}

test "spmm_i8 matches the naive sum on odd shapes" {
    try checkShape(1, 1, 1, 100, 1);
    try checkShape(5, 7, 3, 60, 2);
    try checkShape(17, 13, 29, 30, 3);
    try checkShape(33, 64, 100, 10, 4);
    try checkShape(16, 8, 40, 0, 5);
    try checkShape(20, 12, 600, 30, 7);
}

test "spmm_i8 splits an uneven pattern over threads" {
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkShape(40, 96, 200, 20, 6);
}

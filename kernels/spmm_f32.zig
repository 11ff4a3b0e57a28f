//! Sparse fp32 linear layer: Y = act(W X^T + b) + R with W in CSR (`sparse_format.zig`, one
//! row per output channel) or in 4x1 blocks (`sparse_f32_blocks.zig`, for weights pruned so),
//! and X in the packed f32 layout (`pack_f32.packF32`: chunks of 16 tokens, token-contiguous
//! per input channel).
//!
//! 4x1 blocks: per kept block (input channel k, channels 4br..4br+3), the 16 tokens of X[k] are
//! loaded once (two 32-byte loads) and each of the 4 weights broadcast into two FMAs: 8 FMAs
//! against 6 loads and one index, where CSR pays 4 loads per 2 FMAs. With AVX-512's 32
//! registers two sets of 8 accumulators (even and odd blocks) hide the FMA latency; AVX2's 16
//! hold one set.
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
const builtin = @import("builtin");
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
    w: format.F32Weights,
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
    assert(args.m >= 1);
    switch (args.w) {
        .csr => |w| assert(w.header.n >= 1 and w.header.k >= 1),
        .blocks => |w| assert(w.header.n >= 1 and w.header.k >= 1),
    }
    switch (args.activation) {
        inline else => |act| pool.parallel(Args, args, Worker(act).run),
    }
}

/// A layout's rows (output channels for CSR, block rows for 4x1 blocks) as the thread split
/// and the slicing see them: `ptr[r]` is the first entry of row r.
const Rows = struct {
    ptr: [*]const u32,
    count: usize,
    per_tile: usize,
    /// Cost of a row's epilogue, in entries.
    row_cost: u64,
    /// Weight bytes per entry (index and values).
    entry_bytes: usize,

    fn tiles(self: Rows) usize {
        return (self.count + self.per_tile - 1) / self.per_tile;
    }

    /// First tile whose cumulative cost (entries plus `row_cost` per row) reaches `target`.
    fn splitPoint(self: Rows, target: u64) usize {
        var lo: usize = 0;
        var hi: usize = self.tiles();
        while (lo < hi) {
            const mid = lo + (hi - lo) / 2;
            const row = mid * self.per_tile;
            if (@as(u64, self.ptr[row]) + self.row_cost * row < target) lo = mid + 1 else hi = mid;
        }
        return lo;
    }

    fn bytesBetween(self: Rows, tile_begin: usize, tile_end: usize) usize {
        const r1 = @min(tile_end * self.per_tile, self.count);
        return (self.ptr[r1] - self.ptr[tile_begin * self.per_tile]) * self.entry_bytes;
    }
};

/// This thread's share of the tiles, in slices of about `slice_bytes` of weights that every
/// chunk passes over while they are in L2.
fn runTiles(
    comptime act: vmath.Activation,
    comptime tileFn: fn (comptime vmath.Activation, *const Args, usize, usize) void,
    args: *const Args,
    rows: Rows,
    ith: u32,
    nth: u32,
) void {
    const total: u64 = rows.ptr[rows.count] + rows.row_cost * rows.count;
    const begin = if (ith == 0) 0 else rows.splitPoint(total * ith / nth);
    const end = if (ith + 1 == nth) rows.tiles() else rows.splitPoint(total * (ith + 1) / nth);
    var slice_begin = begin;
    while (slice_begin < end) {
        var slice_end = slice_begin + 1;
        while (slice_end < end and rows.bytesBetween(slice_begin, slice_end) < slice_bytes) slice_end += 1;
        for (0..layout.chunksOf(args.m)) |chunk| {
            for (slice_begin..slice_end) |tile| tileFn(act, args, tile, chunk);
        }
        slice_begin = slice_end;
    }
}

fn Worker(comptime act: vmath.Activation) type {
    return struct {
        fn run(args: *const Args, ith: u32, nth: u32) void {
            switch (args.w) {
                .csr => |w| {
                    const rows = Rows{ .ptr = w.row_ptr, .count = w.header.n, .per_tile = tile_channels, .row_cost = 4, .entry_bytes = 8 };
                    runTiles(act, outputTile, args, rows, ith, nth);
                },
                .blocks => |w| {
                    // A block is a u32 index and 4 weights; its row's epilogue costs about 2 blocks.
                    const rows = Rows{ .ptr = w.block_ptr, .count = w.header.block_rows, .per_tile = tile_block_rows, .row_cost = 2, .entry_bytes = 20 };
                    runTiles(act, blockTile, args, rows, ith, nth);
                },
            }
        }
    };
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

/// `rowKernel` on AVX-512: each non-zero's 16 tokens in one zmm, one FMA.
fn rowKernelWide(xc: [*]const f32, col: [*]const u32, value: [*]const f32, count: usize) V16 {
    var acc: [4]V16 = @splat(@splat(0));
    var e: usize = 0;
    while (e + 4 <= count) : (e += 4) {
        inline for (0..4) |j| {
            const x: V16 = (xc + @as(usize, col[e + j]) * chunk_tokens)[0..chunk_tokens].*;
            acc[j] = @mulAdd(V16, @splat(value[e + j]), x, acc[j]);
        }
    }
    while (e < count) : (e += 1) {
        const x: V16 = (xc + @as(usize, col[e]) * chunk_tokens)[0..chunk_tokens].*;
        acc[0] = @mulAdd(V16, @splat(value[e]), x, acc[0]);
    }
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

/// `outputTile` on AVX-512: the 16 channel rows transposed in registers (see `blockTileWide`).
fn outputTileWide(comptime act: vmath.Activation, args: *const Args, tile: usize, chunk: usize) void {
    const w = args.w.csr;
    const n: usize = w.header.n;
    const xc = args.x + chunk * w.header.k * chunk_tokens;
    const c0 = tile * tile_channels;
    var rows: [tile_channels]V16 = @splat(@splat(0));
    inline for (0..tile_channels) |j| {
        if (c0 + j < n) {
            const e0 = w.row_ptr[c0 + j];
            rows[j] = rowKernelWide(xc, w.col + e0, w.value + e0, w.row_ptr[c0 + j + 1] - e0);
        }
    }
    const columns: [chunk_tokens][tile_channels]f32 align(64) = @bitCast(transpose.square16(f32, rows));
    writeTile(act, args, n, c0, chunk, &columns, tileBias(w.bias, n, c0));
}

fn outputTile(comptime act: vmath.Activation, args: *const Args, tile: usize, chunk: usize) void {
    if (wide) return outputTileWide(act, args, tile, chunk);
    const w = args.w.csr;
    const n: usize = w.header.n;
    const k: usize = w.header.k;
    const xc = args.x + chunk * k * chunk_tokens;
    const c0 = tile * tile_channels;
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
                rows[0][j] = sums[0];
                rows[1][j] = sums[1];
            } else {
                rows[0][j] = @splat(0);
                rows[1][j] = @splat(0);
            }
        }
        storeGroup(&buffer, group, rows);
    }
    writeTile(act, args, n, c0, chunk, &buffer, tileBias(w.bias, n, c0));
}

/// Channels `c0..c0 + 16` of a bias of `len` values, zeros past its end.
fn tileBias(bias: [*]const f32, len: usize, c0: usize) V16 {
    var out: [tile_channels]f32 = @splat(0);
    const have = @min(tile_channels, len - c0);
    @memcpy(out[0..have], bias[c0..][0..have]);
    return out;
}

/// Writes channels `c0..c0 + 16` (those below n) of a chunk's tokens from the token-major
/// `buffer`, adding the residual: whole 64-byte rows where the tile is full.
/// Channels `8 * group ..` of 16 tokens (rows[half][channel], tokens 8 * half ..) into the
/// token-major tile: one 8x8 transpose per token half.
inline fn storeGroup(buffer: *[chunk_tokens][tile_channels]f32, comptime group: usize, rows: [2][8]F8) void {
    inline for (0..2) |half| {
        const t = transpose.f32x8(rows[half]);
        inline for (0..8) |j| buffer[half * 8 + j][group * 8 ..][0..8].* = t[j];
    }
}

/// Each token's row gets its `bias` (16 channels, zeros past n) and the activation here, two
/// vectors at a time: applied in the kernels' loops on eight vectors at once, the erf GELU's
/// temporaries spilled and doubled the intermediate layer's time (BERT-Base 90% 4x1, blocks).
fn writeTile(
    comptime act: vmath.Activation,
    args: *const Args,
    n: usize,
    c0: usize,
    chunk: usize,
    buffer: *const [chunk_tokens][tile_channels]f32,
    bias: V16,
) void {
    const channels: usize = @min(tile_channels, n - c0);
    const t0 = chunk * chunk_tokens;
    const tokens: usize = @min(chunk_tokens, args.m - t0);
    for (0..tokens) |j| {
        const row: *const [tile_channels]f32 = &buffer[j];
        var v: V16 = row.*;
        v = act.apply(tile_channels, v + bias);
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

// ---- 4x1 blocks ----

const blocks_format = @import("sparse_f32_blocks.zig");
/// AVX-512: a channel's 16 tokens in one zmm, and the output tile transposed in registers.
const wide = std.Target.x86.featureSetHas(builtin.cpu.features, .avx512f);
/// Accumulator sets of the block kernel (see the file comment).
const block_sets: usize = if (wide) 2 else 1;
/// Block rows per 16-channel tile.
const tile_block_rows: usize = tile_channels / blocks_format.block_height;

/// One kept block: the 16 tokens of input channel `kk` times its 4 weights into `acc`.
inline fn blockStep(acc: *[4][2]F8, xc: [*]const f32, kk: u32, w: [4]f32) void {
    const x = xc + @as(usize, kk) * chunk_tokens;
    const x0 = loadX(x);
    const x1 = loadX(x + 8);
    inline for (0..4) |r| {
        const wr: F8 = @splat(w[r]);
        acc[r][0] = @mulAdd(F8, wr, x0, acc[r][0]);
        acc[r][1] = @mulAdd(F8, wr, x1, acc[r][1]);
    }
}

/// The hot loop: one block row (4 channels) over one chunk; sums[r][half] = channel r, tokens
/// 8 * half ..
fn blockRowKernel(xc: [*]const f32, block_k: [*]const u32, weights: [*]const [4]f32, count: usize) [4][2]F8 {
    const zero: F8 = @splat(0);
    var acc: [block_sets][4][2]F8 = @splat(@splat(.{ zero, zero }));
    var b: usize = 0;
    while (b + block_sets <= count) : (b += block_sets) {
        inline for (0..block_sets) |set| blockStep(&acc[set], xc, block_k[b + set], weights[b + set]);
    }
    while (b < count) : (b += 1) blockStep(&acc[0], xc, block_k[b], weights[b]);
    var sums = acc[0];
    inline for (1..block_sets) |set| inline for (0..4) |r| inline for (0..2) |half| {
        sums[r][half] += acc[set][r][half];
    };
    return sums;
}

/// `blockRowKernel` on AVX-512: each block's 16 tokens in one zmm, its 4 weights broadcast from
/// memory into 4 FMAs (half the instructions of two 8-wide halves).
fn blockRowKernelWide(xc: [*]const f32, block_k: [*]const u32, weights: [*]const [4]f32, count: usize) [4]V16 {
    var acc: [block_sets][4]V16 = @splat(@splat(@splat(0)));
    var b: usize = 0;
    while (b + block_sets <= count) : (b += block_sets) {
        inline for (0..block_sets) |set| {
            const x: V16 = (xc + @as(usize, block_k[b + set]) * chunk_tokens)[0..chunk_tokens].*;
            inline for (0..4) |r| acc[set][r] = @mulAdd(V16, @splat(weights[b + set][r]), x, acc[set][r]);
        }
    }
    while (b < count) : (b += 1) {
        const x: V16 = (xc + @as(usize, block_k[b]) * chunk_tokens)[0..chunk_tokens].*;
        inline for (0..4) |r| acc[0][r] = @mulAdd(V16, @splat(weights[b][r]), x, acc[0][r]);
    }
    var sums = acc[0];
    inline for (1..block_sets) |set| inline for (0..4) |r| {
        sums[r] += acc[set][r];
    };
    return sums;
}

fn blockTile(comptime act: vmath.Activation, args: *const Args, tile: usize, chunk: usize) void {
    if (wide) return blockTileWide(act, args, tile, chunk);
    const w = args.w.blocks;
    const n: usize = w.header.n;
    const k: usize = w.header.k;
    const block_rows: usize = w.header.block_rows;
    const xc = args.x + chunk * k * chunk_tokens;
    var buffer: [chunk_tokens][tile_channels]f32 align(64) = undefined;
    // Two groups of 8 channels (2 block rows each): compute, transpose 8x8 per token half, store.
    inline for (0..2) |group| {
        var rows: [2][8]F8 = undefined;
        inline for (0..2) |pair| {
            const br = tile * tile_block_rows + group * 2 + pair;
            if (br < block_rows) {
                const b0 = w.block_ptr[br];
                const sums = blockRowKernel(xc, w.block_k + b0, w.weights + b0, w.block_ptr[br + 1] - b0);
                inline for (0..4) |r| {
                    rows[0][pair * 4 + r] = sums[r][0];
                    rows[1][pair * 4 + r] = sums[r][1];
                }
            } else {
                inline for (0..4) |r| {
                    rows[0][pair * 4 + r] = @splat(0);
                    rows[1][pair * 4 + r] = @splat(0);
                }
            }
        }
        storeGroup(&buffer, group, rows);
    }
    writeTile(act, args, n, tile * tile_channels, chunk, &buffer, tileBias(w.bias, 4 * block_rows, tile * tile_channels));
}

/// `blockTile` on AVX-512: the tile's 16 channel rows stay in zmm registers and are transposed
/// there (the buffer of `storeGroup`, written in 32-byte pieces and read back in 64-byte rows,
/// stalls on failed store forwarding, as it did in `spmm_i8`).
fn blockTileWide(comptime act: vmath.Activation, args: *const Args, tile: usize, chunk: usize) void {
    const w = args.w.blocks;
    const block_rows: usize = w.header.block_rows;
    const xc = args.x + chunk * w.header.k * chunk_tokens;
    var rows: [tile_channels]V16 = @splat(@splat(0));
    inline for (0..tile_block_rows) |b| {
        const br = tile * tile_block_rows + b;
        if (br < block_rows) {
            const b0 = w.block_ptr[br];
            const sums = blockRowKernelWide(xc, w.block_k + b0, w.weights + b0, w.block_ptr[br + 1] - b0);
            inline for (0..4) |r| rows[4 * b + r] = sums[r];
        }
    }
    const columns: [chunk_tokens][tile_channels]f32 align(64) = @bitCast(transpose.square16(f32, rows));
    writeTile(act, args, w.header.n, tile * tile_channels, chunk, &columns, tileBias(w.bias, 4 * block_rows, tile * tile_channels));
}

// ---- tests ----

const testing = std.testing;

const Pattern = enum { elements, blocks };

fn checkShape(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    try checkPattern(.elements, m, n, k, keep_percent, seed);
}

/// Random weights keeping `keep_percent` of the elements, or of the 4x1 blocks (whole), against
/// the naive sum; the blob must be in the layout the pattern calls for.
fn checkPattern(pattern: Pattern, m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    const gpa = testing.allocator;
    var prng = std.Random.DefaultPrng.init(seed);
    const rnd = prng.random();
    const w = try gpa.alloc(f32, n * k);
    defer gpa.free(w);
    switch (pattern) {
        .elements => for (w) |*v| {
            v.* = if (rnd.uintLessThan(u32, 100) < keep_percent) rnd.floatNorm(f32) else 0;
        },
        .blocks => for (0..(n + 3) / 4) |br| for (0..k) |kk| {
            const keep = rnd.uintLessThan(u32, 100) < keep_percent;
            for (br * 4..@min(n, br * 4 + 4)) |row| w[row * k + kk] = if (keep) rnd.floatNorm(f32) else 0;
        },
    }
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
    // Plain, then with the erf GELU and a residual (the intermediate and output layers' forms).
    for ([_]bool{ false, true }) |with_residual| {
        const args = Args{
            .w = try format.viewF32Weights(blob.ptr, len),
            .x = xp.ptr,
            .m = m,
            .residual = if (with_residual) res.ptr else null,
            .y = y.ptr,
            .activation = if (with_residual) .gelu_erf else .none,
        };
        // (A lone short block row, n < 4, is mostly padding: CSR is the right layout there.)
        if (pattern == .blocks and keep_percent > 0 and n >= 4) try testing.expect(args.w == .blocks);
        if (pattern == .elements and keep_percent < 50) try testing.expect(args.w == .csr);
        forward(&args);
        for (0..m) |t| for (0..n) |c| {
            var want: f64 = bias[c];
            var mag: f64 = @abs(bias[c]);
            for (0..k) |kk| {
                want += @as(f64, x[t * k + kk]) * w[c * k + kk];
                mag += @abs(@as(f64, x[t * k + kk]) * w[c * k + kk]);
            }
            if (with_residual) {
                want = 0.5 * want * (1 + vmath.erfReference(want / std.math.sqrt2)) + res[t * n + c];
            }
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

test "spmm_f32 on 4x1 blocks matches the naive sum, on one and two threads" {
    try checkPattern(.blocks, 1, 1, 1, 100, 11);
    try checkPattern(.blocks, 5, 7, 3, 60, 12);
    try checkPattern(.blocks, 17, 21, 29, 30, 13);
    try checkPattern(.blocks, 33, 42, 100, 10, 14);
    try checkPattern(.blocks, 16, 8, 40, 0, 15);
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkPattern(.blocks, 40, 98, 200, 20, 16);
}

//! Sparse int8 linear layer: Y = act(dequant(W_q X_q^T) + b) + R with W_q in 4x1 blocks
//! (`sparse_format.zig`) and X_q u7 activations in the packed token-contiguous layout
//! (`quantize_packed.zig`). Output Y is token-major [m, n]: fp32, requantized u8, or exact s32.
//!
//! Micro-kernel: one block row (4 output channels) x one chunk (16 tokens). Per group of 4 kept
//! blocks (input channels k0..k3):
//!   ab = x[k0] | x[k1] << 8; cd = x[k2] | x[k3] << 8 (u16 lanes: byte pairs of two channels)
//!   interleave 16-bit (ab, cd)                        (dwords: 4 channels of each token)
//!   per channel r: acc[r] += dot4(tokens, broadcast(weight dword r))
//! AVX2 and the scalar path hold a channel's 16 tokens in two ymm halves (8 accumulators, 8
//! dot-product steps per group). VNNI holds them in one zmm: 4 `vpdpbusd` per group, each
//! broadcasting its weight dword from memory, with two sets of 4 accumulators so that the
//! instruction's latency does not bound the loop (measured on a Zen 4: 5.2 -> 4.5 cycles per
//! group). 256 MACs per group against 4 loads, 2 shifts, 2 ORs and 1-2 shuffles.
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
const epilogue = @import("int8_epilogue.zig");
const format = @import("sparse_format.zig");
const quantize = @import("quantize.zig");
const layout = @import("quantize_packed.zig");
const quantize_staged = @import("quantize_staged.zig");
const pack_f32 = @import("pack_f32.zig");
const transpose = @import("transpose.zig");

const I32x16 = int8.I32x16;
const F8 = @Vector(8, f32);
const F4 = @Vector(4, f32);
const U16x16 = @Vector(16, u16);
const chunk_tokens = layout.chunk_tokens;
const row_bytes = layout.packed_row_bytes;
/// Weight bytes (values and indices) per slice of block rows.
const slice_bytes: usize = 96 * 1024;
const group_bytes: usize = 16 + 8;
/// Input channels per panel. A chunk's activations take 32 bytes per input channel, so with
/// k = 3072 one chunk (96 KiB) spills a 32 KiB L1 and a group's four rows come from L2; a layer
/// that wide runs each slice panel by panel (32 KiB of a chunk's rows each), keeping the partial
/// sums of the slice's block rows between panels. (Panels of 512 lost at 90%: about 13 groups
/// per block row and panel, too few to pay for the carry.)
const panel_k: usize = 1024;
/// Most block rows of a slice that runs in panels: their partial sums (`Carry`) stay 8 KiB.
const carry_block_rows: usize = 32;
/// Stored index (k * format.k_unit) to byte offset (k * row_bytes).
const k_scale = row_bytes / format.k_unit;

pub const Args = struct {
    w: format.I8View,
    /// Packed activations, `layout.packedLen(m, k)` bytes.
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
    /// Set by `forwardQuantized` only: y is staged there instead of written to `y`.
    staging: ?*Staging = null,
};

/// Scratch of `forwardQuantized`, carved from one 64-byte aligned buffer of `len(m, n)` bytes:
/// the fp32 result in the packed order of `quantize_packed.zig` and each thread's per-token ranges.
pub const Staging = struct {
    /// [chunks][n][16] fp32 (`pack_f32.packedF32Len(m, n)` floats).
    y: [*]f32,
    /// [max_threads][chunks]: the ranges of what each thread staged; merged into the first.
    ranges: [*]quantize_staged.ChunkRange,
    /// [chunks] per-token quantization parameters (`quantize_staged.quantizeStaged`'s scratch).
    inv: [*]@Vector(chunk_tokens, f32),
    zero: [*]@Vector(chunk_tokens, i32),
    /// Threads of the last staged run (the job's nth).
    threads: std.atomic.Value(u32) = .init(0),
    /// Channels [split[i], split[i + 1]) were staged by thread i (the quantizer reuses it).
    split: [pool.max_threads + 1]usize = undefined,

    fn yBytes(m: usize, n: usize) usize {
        return (pack_f32.packedF32Len(m, n) * 4 + 63) / 64 * 64;
    }

    pub fn len(m: usize, n: usize) usize {
        const chunks = layout.chunksOf(m);
        return yBytes(m, n) + chunks * (pool.max_threads * @sizeOf(quantize_staged.ChunkRange) + 2 * 64);
    }

    pub fn init(buffer: [*]align(64) u8, m: usize, n: usize) Staging {
        const chunks = layout.chunksOf(m);
        const ranges_at = yBytes(m, n);
        const inv_at = ranges_at + chunks * pool.max_threads * @sizeOf(quantize_staged.ChunkRange);
        comptime assert(@sizeOf(quantize_staged.ChunkRange) % 64 == 0);
        return .{
            .y = @ptrCast(@alignCast(buffer)),
            .ranges = @ptrCast(@alignCast(buffer + ranges_at)),
            .inv = @ptrCast(@alignCast(buffer + inv_at)),
            .zero = @ptrCast(@alignCast(buffer + inv_at + chunks * 64)),
        };
    }
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

/// Runs the layer (fp32 epilogue, no residual) and quantizes its output per token into the
/// packed layout that the next `spmm_i8` reads: the same codes, scales and zero points as
/// `forward` followed by `layout.quantizePacked(.per_token, int8.act_max)`, but the epilogue stages its
/// values in packed order and keeps their per-token ranges, so the quantizer neither
/// transposes nor takes a range pass over the token-major output.
pub fn forwardQuantized(
    args: *const Args,
    staging: *Staging,
    packed_y: [*]u8,
    y_scale: [*]f32,
    y_zero: [*]i32,
) quantize.Error!void {
    const h = args.w.header;
    assert(args.m >= 1 and h.n >= 1 and h.k >= 1);
    assert(args.output == .f32 and args.residual == null);
    if (std.debug.runtime_safety) checkActivations(args.x, args.m, h.k);
    var staged = args.*;
    staged.staging = staging;
    staging.threads.store(0, .monotonic);
    switch (args.activation) {
        inline else => |act| pool.parallel(Args, &staged, Worker(.f32, act).run),
    }
    const chunks = layout.chunksOf(args.m);
    const nth = staging.threads.load(.monotonic);
    assert(nth >= 1 and nth <= pool.max_threads);
    for (1..nth) |t| for (0..chunks) |c| staging.ranges[c].merge(&staging.ranges[t * chunks + c]);
    try quantize_staged.quantizeStaged(staging.y, args.m, h.n, staging.ranges, staging.split[0 .. nth + 1], staging.inv, staging.zero, packed_y, y_scale, y_zero);
}

/// Safe builds check the activations' bound (`int8.act_max`, the saturation rule of `int8.zig`).
fn checkActivations(x: [*]const u8, m: usize, k: usize) void {
    const rows = layout.chunksOf(m) * k;
    for (0..rows) |i| {
        const lo: *align(1) const [16]u16 = @ptrCast(x + i * row_bytes);
        for (lo) |v| assert(v <= int8.act_max);
    }
}

/// Block rows per output tile: 16 channels, one cache line of fp32 per token, one row of the
/// shared epilogue.
const tile_block_rows: usize = 4;
const tile_channels: usize = 4 * tile_block_rows;
comptime {
    assert(tile_channels == epilogue.lanes);
}

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
            const chunks = layout.chunksOf(args.m);
            const panels = panelsOf(h.k);
            const max_tiles: usize = if (panels > 1) carry_block_rows / tile_block_rows else tiles;
            if (args.staging) |st| {
                if (ith == 0) st.threads.store(nth, .monotonic);
                st.split[ith] = @min(begin * tile_channels, h.n);
                if (ith + 1 == nth) st.split[nth] = h.n;
                for (st.ranges[ith * chunks ..][0..chunks]) |*r| r.* = quantize_staged.ChunkRange.empty;
            }
            var slice_begin = begin;
            while (slice_begin < end) {
                // Grow the slice of tiles until its weights reach slice_bytes (in panels, also
                // until the slice's partial sums fill the carry).
                var slice_end = slice_begin + 1;
                while (slice_end < end and slice_end - slice_begin < max_tiles and
                    groupsBetween(args, slice_begin, slice_end) * group_bytes < slice_bytes)
                {
                    slice_end += 1;
                }
                var starts: PanelStarts = undefined;
                if (panels > 1) starts.find(args, slice_begin, slice_end, panels);
                const slice_block_rows = @min(slice_end * tile_block_rows, block_rows) - slice_begin * tile_block_rows;
                for (0..chunks) |chunk| {
                    const tokens = Tokens.of(args, chunk);
                    var carry: Carry = undefined;
                    const carried: ?*const Carry = if (panels > 1) blk: {
                        carry.accumulate(args, &starts, slice_block_rows, &tokens);
                        break :blk &carry;
                    } else null;
                    if (args.staging) |st| {
                        const range = &st.ranges[ith * chunks + chunk];
                        for (slice_begin..slice_end) |tile| stagedTile(act, args, tile, &tokens, carried, range);
                    } else {
                        for (slice_begin..slice_end) |tile| outputTile(out, act, args, tile, &tokens, carried);
                    }
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

/// Panels of a layer with k input channels, `panel_k` wide (one up to k = 1024: 32 KiB of a chunk's
/// rows, where 768 x 3072 measured no headroom).
/// VNNI only: there the group loop runs near the `vpdpbusd` rate, so rows read from L2 show
/// (a Zen 4, one thread, 3072 x 768: 70% 1.46x faster in panels, 90% 1.04x; two threads, 4096 x
/// 1024: 90% 1.45x, 70% 1.2-1.9x); the AVX2 loop is bound by its multiply-add chain and measured
/// no faster (docs/BENCHMARKS.md).
fn panelsOf(k: usize) usize {
    if (int8.path != .vnni or k <= panel_k) return 1;
    return (k + panel_k - 1) / panel_k;
}

/// Most panels of a layer (k <= `format.max_k_i8`).
const max_panels: usize = (format.max_k_i8 + panel_k - 1) / panel_k;

/// Where each panel's groups begin in each block row of a slice, found once per slice (every
/// chunk reuses it). A group belongs to the panel of its first input channel (its others may lie
/// further on: a read outside the panel, never a wrong sum).
const PanelStarts = struct {
    br0: usize,
    panels: usize,
    /// [block row of the slice][panel]; [i][panels] is the block row's end.
    start: [carry_block_rows][max_panels + 1]u32,

    fn find(self: *PanelStarts, args: *const Args, tile_begin: usize, tile_end: usize, panels: usize) void {
        const w = args.w;
        const br0 = tile_begin * tile_block_rows;
        const br1 = @min(tile_end * tile_block_rows, w.header.block_rows);
        assert(br0 < br1 and br1 - br0 <= carry_block_rows);
        assert(panels >= 2 and panels <= max_panels and (panels - 1) * panel_k < w.header.k);
        self.br0 = br0;
        self.panels = panels;
        for (br0..br1) |br| {
            const row = &self.start[br - br0];
            var g = w.group_ptr[br];
            const g1 = w.group_ptr[br + 1];
            row[0] = g;
            for (1..panels) |p| {
                const limit = p * panel_k * format.k_unit;
                while (g < g1 and w.group_k[4 * @as(usize, g)] < limit) g += 1;
                row[p] = g;
            }
            row[panels] = g1;
        }
    }
};

/// The sums of a slice's block rows over one chunk and every panel but the last.
const Carry = struct {
    starts: *const PanelStarts,
    sums: [carry_block_rows]BlockSums,

    fn accumulate(self: *Carry, args: *const Args, starts: *const PanelStarts, block_rows: usize, tokens: *const Tokens) void {
        const w = args.w;
        assert(block_rows >= 1 and block_rows <= carry_block_rows);
        self.starts = starts;
        for (self.sums[0..block_rows]) |*sums| sums.* = @splat(@splat(@splat(0)));
        const xc = args.x + tokens.chunk * @as(usize, w.header.k) * row_bytes;
        for (0..starts.panels - 1) |p| {
            for (0..block_rows) |i| {
                const g0: usize = starts.start[i][p];
                const g1: usize = starts.start[i][p + 1];
                if (g1 == g0) continue;
                const acc = microKernel(xc, w.group_k + 4 * g0, w.weights + 16 * g0, g1 - g0);
                // Sums wrap modulo 2^32 as `microKernel`'s do: panel by panel, the same bits.
                inline for (0..4) |r| inline for (0..halves) |h| {
                    self.sums[i][r][h] +%= acc[r][h];
                };
            }
        }
    }

    /// The first group of block row `br`'s last panel.
    fn lastPanel(self: *const Carry, br: usize) u32 {
        const s = self.starts;
        return s.start[br - s.br0][s.panels - 1];
    }
};

/// A chunk's 16 tokens are held in `halves` vectors: one zmm on VNNI, two ymm elsewhere.
const halves: usize = if (int8.path == .vnni) 1 else 2;
const half_tokens: usize = chunk_tokens / halves;
const HalfI32 = @Vector(half_tokens, i32);
const HalfF32 = @Vector(half_tokens, f32);
/// One block row over one chunk: sums[r][h] = channel r, tokens h * half_tokens ...
const BlockSums = [4][halves]HalfI32;
const BlockValues = [4][halves]HalfF32;

/// Per-token quantization parameters of one chunk; lanes past m hold zeros.
const Tokens = struct {
    chunk: usize,
    count: usize,
    zero: [halves]HalfI32,
    scale: [halves]HalfF32,

    fn of(args: *const Args, chunk: usize) Tokens {
        const t0 = chunk * chunk_tokens;
        var result = Tokens{
            .chunk = chunk,
            .count = @min(chunk_tokens, args.m - t0),
            .zero = @splat(@splat(0)),
            .scale = @splat(@splat(0)),
        };
        for (0..result.count) |j| {
            result.zero[j / half_tokens][j % half_tokens] = args.x_zero[t0 + j];
            result.scale[j / half_tokens][j % half_tokens] = args.x_scale[t0 + j];
        }
        return result;
    }
};

inline fn loadRow(p: [*]const u8) U16x16 {
    return @as(*align(1) const U16x16, @ptrCast(p)).*;
}

/// The four input channels of a group as byte offsets into a packed chunk.
inline fn groupOffsets(ks: [*]const u16) [4]usize {
    // The four indices as one scalar load: left to itself, LLVM gathers them into a vector and
    // extracts each with vpextrd, which costs the vector pipes about 2 cycles per step (measured
    // 16.2 -> 14.5 cycles per step at 90%, k = 768; 17.5 -> 14.6 at k = 3072).
    const four = std.mem.readInt(u64, @ptrCast(ks), .little);
    const k0: usize = @as(u16, @truncate(four));
    const k1: usize = @as(u16, @truncate(four >> 16));
    const k2: usize = @as(u16, @truncate(four >> 32));
    const k3: usize = @as(u16, @truncate(four >> 48));
    return .{ k0 * k_scale, k1 * k_scale, k2 * k_scale, k3 * k_scale };
}

/// The (x[k0], x[k1]) and (x[k2], x[k3]) byte pairs of a group's 16 tokens, in packed order.
inline fn bytePairs(xc: [*]const u8, ks: [*]const u16) [2]U16x16 {
    const eight: U16x16 = @splat(8);
    const o = groupOffsets(ks);
    return .{
        loadRow(xc + o[0]) | loadRow(xc + o[1]) << eight,
        loadRow(xc + o[2]) | loadRow(xc + o[3]) << eight,
    };
}

/// Natural token t takes its dword from packed position tokenAt(t) of the (ab, cd) pairs.
const natural_dwords: @Vector(32, i32) = blk: {
    var mask: [32]i32 = undefined;
    for (0..chunk_tokens) |t| {
        const p: i32 = @intCast(layout.tokenAt(t));
        mask[2 * t] = p;
        mask[2 * t + 1] = ~p;
    }
    break :blk mask;
};

/// One group on VNNI: 4 input channels x 4 output channels x 16 tokens in four zmm `vpdpbusd`s.
inline fn stepZmm(acc: *[4]I32x16, xc: [*]const u8, ks: [*]const u16, w: [*]const i8) void {
    const pairs = bytePairs(xc, ks);
    const a: I32x16 = @bitCast(@shuffle(u16, pairs[0], pairs[1], natural_dwords));
    inline for (0..4) |r| {
        const word = std.mem.readInt(i32, @ptrCast(w + 4 * r), .little);
        acc[r] = int8.dot4x16(acc[r], a, @splat(word));
    }
}

/// One group on AVX2 and the scalar path: tokens 0-7 and 8-15 of each channel in two halves.
inline fn stepYmm(acc: *BlockSums, xc: [*]const u8, ks: [*]const u16, w: [*]const i8) void {
    const lo16 = @Vector(16, i32){ 0, -1, 1, -2, 2, -3, 3, -4, 8, -9, 9, -10, 10, -11, 11, -12 };
    const hi16 = @Vector(16, i32){ 4, -5, 5, -6, 6, -7, 7, -8, 12, -13, 13, -14, 14, -15, 15, -16 };
    const pairs = bytePairs(xc, ks);
    const a0: int8.U8x32 = @bitCast(@shuffle(u16, pairs[0], pairs[1], lo16));
    const a1: int8.U8x32 = @bitCast(@shuffle(u16, pairs[0], pairs[1], hi16));
    inline for (0..4) |r| {
        const wb = int8.broadcast4(i8, w + 4 * r);
        acc[r][0] = int8.dot4(acc[r][0], a0, wb);
        acc[r][1] = int8.dot4(acc[r][1], a1, wb);
    }
}

/// Accumulators of one block row over one chunk.
fn microKernel(xc: [*]const u8, group_k: [*]const u16, weights: [*]const i8, groups: usize) BlockSums {
    var g: usize = 0;
    if (int8.path == .vnni) {
        var acc: [2][4]I32x16 = @splat(@splat(@splat(0)));
        while (g + 2 <= groups) : (g += 2) {
            stepZmm(&acc[0], xc, group_k + 4 * g, weights + 16 * g);
            stepZmm(&acc[1], xc, group_k + 4 * g + 4, weights + 16 * g + 16);
        }
        if (g < groups) stepZmm(&acc[0], xc, group_k + 4 * g, weights + 16 * g);
        var sums: BlockSums = undefined;
        inline for (0..4) |r| sums[r][0] = acc[0][r] +% acc[1][r];
        return sums;
    }
    var acc: BlockSums = @splat(@splat(@splat(0)));
    while (g + 2 <= groups) : (g += 2) {
        stepYmm(&acc, xc, group_k + 4 * g, weights + 16 * g);
        stepYmm(&acc, xc, group_k + 4 * g + 4, weights + 16 * g + 16);
    }
    if (g < groups) stepYmm(&acc, xc, group_k + 4 * g, weights + 16 * g);
    return acc;
}

/// Computes 16 channels x 16 tokens and writes whole rows of 16 channels per token: one cache
/// line of fp32, instead of four partial lines at a large stride (which thrash one L1 set when
/// n * 4 is a multiple of 4 KiB). VNNI transposes the tile in registers; AVX2, with 16 ymm,
/// through a token-major buffer, 4 channels of a token at a time. (On VNNI that buffer, read back
/// in whole rows, stalled on failed store forwarding: the register transpose made the 90%
/// 768 x 3072 layer 11% faster on a Zen 4.)
fn outputTile(comptime out: int8.Output, comptime act: vmath.Activation, args: *const Args, tile: usize, tokens: *const Tokens, carried: ?*const Carry) void {
    const T = if (out == .s32) i32 else f32;
    const block_rows: usize = args.w.header.block_rows;
    const br0 = tile * tile_block_rows;
    const count: usize = @min(tile_block_rows, block_rows - br0);
    const n: usize = args.w.header.n;
    const c0 = br0 * 4;
    const channels: usize = @min(tile_channels, n - c0);
    const at = tokens.chunk * chunk_tokens * n + c0;
    const target = epilogue.Target{ .y = args.y, .residual = args.residual, .requant = args.requant };
    if (halves == 1) {
        var rows: [tile_channels]@Vector(chunk_tokens, T) = @splat(@splat(0));
        inline for (0..tile_block_rows) |b| {
            if (b < count) {
                const v = blockRow(out, args, br0 + b, tokens, carried);
                inline for (0..4) |r| rows[4 * b + r] = v[r][0];
            }
        }
        const columns = transpose.square16(T, rows);
        inline for (0..chunk_tokens) |j| {
            if (j < tokens.count) storeToken(out, act, target, at + j * n, columns[j], channels);
        }
    } else {
        var buffer: [chunk_tokens][tile_channels]T align(64) = undefined;
        inline for (0..tile_block_rows / 2) |pair| pairToBuffer(out, args, br0 + 2 * pair, count -| 2 * pair, tokens, carried, T, &buffer, 8 * pair);
        // Through a pointer: `buffer[j]` as a value copies the whole buffer (1 KiB) per token.
        for (0..tokens.count) |j| {
            const row: *const [tile_channels]T = &buffer[j];
            storeToken(out, act, target, at + j * n, row.*, channels);
        }
    }
}

/// Two block rows (`count` of them real, at most 2) into channels `col..col + 8` of the
/// token-major `buffer`: one 8 x 8 transpose per half of 8 tokens, so that every 32-byte row
/// piece is stored whole and read back whole (pieces of 16 bytes read back as 32 failed store
/// forwarding).
fn pairToBuffer(
    comptime out: int8.Output,
    args: *const Args,
    br: usize,
    count: usize,
    tokens: *const Tokens,
    carried: ?*const Carry,
    comptime T: type,
    buffer: *[chunk_tokens][tile_channels]T,
    col: usize,
) void {
    const Row = @Vector(half_tokens, T);
    var rows: [halves][8]Row = @splat(@splat(@splat(0)));
    inline for (0..2) |b| {
        if (b < count) {
            const v = blockRow(out, args, br + b, tokens, carried);
            inline for (0..halves) |h| inline for (0..4) |r| {
                rows[h][4 * b + r] = v[r][h];
            };
        }
    }
    inline for (0..halves) |h| {
        const t: [8]F8 = transpose.f32x8(@bitCast(rows[h]));
        inline for (0..half_tokens) |j| buffer[h * half_tokens + j][col..][0..8].* = @bitCast(t[j]);
    }
}

/// One token's row of a tile to the output: the exact sums, or the activation and the shared
/// epilogue. (The activation runs here, per token, rather than on a block row's eight vectors,
/// where its temporaries spilled: GELU cost the intermediate layer of BERT-Base 11 -> 5 cycles per
/// 8 outputs, Zig harness of this kernel, one thread.)
inline fn storeToken(
    comptime out: int8.Output,
    comptime act: vmath.Activation,
    target: epilogue.Target,
    at: usize,
    row: @Vector(tile_channels, if (out == .s32) i32 else f32),
    channels: usize,
) void {
    if (out == .s32) {
        epilogue.storeExact(target, at, row, channels);
    } else {
        epilogue.storeActivated(out, target, at, act.applyInt8(tile_channels, row), channels);
    }
}

/// One block row over one chunk: the s32 sums with the activation zero point removed (the last
/// panel's groups added to the `carried` sums of the others, when the layer runs in panels).
fn exactSums(args: *const Args, br: usize, tokens: *const Tokens, carried: ?*const Carry) BlockSums {
    const w = args.w;
    const k: usize = w.header.k;
    const g0 = if (carried) |c| c.lastPanel(br) else w.group_ptr[br];
    const g1 = w.group_ptr[br + 1];
    assert(g0 <= g1);
    const xc = args.x + tokens.chunk * k * row_bytes;
    var acc = microKernel(xc, w.group_k + 4 * @as(usize, g0), w.weights + 16 * @as(usize, g0), g1 - g0);
    if (carried) |c| inline for (0..4) |r| inline for (0..halves) |h| {
        acc[r][h] +%= c.sums[br - c.starts.br0][r][h];
    };
    const c0 = br * 4;
    var exact: BlockSums = undefined;
    inline for (0..4) |r| inline for (0..halves) |h| {
        exact[r][h] = acc[r][h] -% tokens.zero[h] *% @as(HalfI32, @splat(w.wsum[c0 + r]));
    };
    return exact;
}

/// `exact` dequantized per token and channel, plus the bias: the activation's input.
fn dequantize(args: *const Args, br: usize, tokens: *const Tokens, exact: BlockSums) BlockValues {
    const c0 = br * 4;
    const sw: F4 = args.w.scale[c0..][0..4].*;
    const bias: F4 = args.w.bias[c0..][0..4].*;
    var f: BlockValues = undefined;
    inline for (0..4) |r| inline for (0..halves) |h| {
        const s = tokens.scale[h] * @as(HalfF32, @splat(sw[r]));
        const v: HalfF32 = @floatFromInt(exact[r][h]);
        f[r][h] = v * s + @as(HalfF32, @splat(bias[r]));
    };
    return f;
}

/// One block row over one chunk, before the activation: the exact sums for an s32 output, else
/// their dequantized values.
inline fn blockRow(comptime out: int8.Output, args: *const Args, br: usize, tokens: *const Tokens, carried: ?*const Carry) if (out == .s32) BlockSums else BlockValues {
    const exact = exactSums(args, br, tokens, carried);
    return if (out == .s32) exact else dequantize(args, br, tokens, exact);
}

/// `forwardQuantized`'s tile: 16 channels x 16 tokens staged in packed order (no transpose),
/// the activation applied row by row (two vectors at a time, as in `outputTile`), and the
/// per-token ranges of the staged values widened.
fn stagedTile(comptime act: vmath.Activation, args: *const Args, tile: usize, tokens: *const Tokens, carried: ?*const Carry, range: *quantize_staged.ChunkRange) void {
    const st = args.staging.?;
    const n: usize = args.w.header.n;
    const block_rows: usize = args.w.header.block_rows;
    const br0 = tile * tile_block_rows;
    const chunk_rows = st.y + tokens.chunk * n * chunk_tokens;
    for (br0..@min(br0 + tile_block_rows, block_rows)) |br| {
        const f = dequantize(args, br, tokens, exactSums(args, br, tokens, carried));
        inline for (0..4) |r| {
            // The last block row may run past n: its padding channels are not staged.
            if (br * 4 + r < n) {
                const row = chunk_rows + (br * 4 + r) * chunk_tokens;
                inline for (0..halves) |h| row[h * half_tokens ..][0..half_tokens].* = f[r][h];
            }
        }
    }
    var widened = range.*;
    const c1 = @min(n, (br0 + tile_block_rows) * 4);
    for (br0 * 4..c1) |c| {
        const row: *[chunk_tokens]f32 = (chunk_rows + c * chunk_tokens)[0..chunk_tokens];
        const v = act.applyInt8(chunk_tokens, row.*);
        row.* = v;
        widened.add(v);
    }
    range.* = widened;
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

/// A random sparse layer and per-token u7 activations (with extremes) for the tests.
const Fixture = struct {
    m: usize,
    n: usize,
    k: usize,
    q: []i8,
    scale: []f32,
    bias: []f32,
    blob: []align(64) u8,
    xq: []u8,
    x_scale: []f32,
    x_zero: []i32,
    packed_x: []align(64) u8,

    fn init(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !Fixture {
        const gpa = testing.allocator;
        var prng = std.Random.DefaultPrng.init(seed);
        const rnd = prng.random();
        const q = try gpa.alloc(i8, n * k);
        randomWeights(q, n, k, keep_percent, rnd);
        q[0] = -128;
        q[n * k - 1] = 127;
        const scale = try gpa.alloc(f32, n);
        const bias = try gpa.alloc(f32, n);
        for (scale, bias, 0..) |*s, *b, i| {
            s.* = 0.001 * @as(f32, @floatFromInt(i % 7 + 1));
            b.* = @as(f32, @floatFromInt(i % 5)) - 2;
        }
        const len = try format.i8PackedLen(q.ptr, n, k);
        const blob = try gpa.alignedAlloc(u8, .@"64", len);
        try format.i8Pack(q.ptr, scale.ptr, bias.ptr, n, k, blob.ptr, len);
        const xq = try gpa.alloc(u8, m * k);
        for (xq) |*v| v.* = rnd.uintAtMost(u8, int8.act_max);
        xq[0] = int8.act_max;
        xq[xq.len - 1] = 0;
        const x_scale = try gpa.alloc(f32, m);
        const x_zero = try gpa.alloc(i32, m);
        for (x_scale, x_zero, 0..) |*s, *z, t| {
            s.* = 0.02 + 0.001 * @as(f32, @floatFromInt(t % 3));
            z.* = @intCast((t * 37) % 128);
        }
        const packed_x = try gpa.alignedAlloc(u8, .@"64", layout.packedLen(m, k));
        try testing.expect(layout.packRows(xq.ptr, m, k, k, packed_x.ptr));
        return .{ .m = m, .n = n, .k = k, .q = q, .scale = scale, .bias = bias, .blob = blob, .xq = xq, .x_scale = x_scale, .x_zero = x_zero, .packed_x = packed_x };
    }

    fn deinit(self: Fixture) void {
        const gpa = testing.allocator;
        gpa.free(self.q);
        gpa.free(self.scale);
        gpa.free(self.bias);
        gpa.free(self.blob);
        gpa.free(self.xq);
        gpa.free(self.x_scale);
        gpa.free(self.x_zero);
        gpa.free(self.packed_x);
    }

    fn args(self: Fixture, y: *anyopaque, output: int8.Output, activation: vmath.Activation) !Args {
        return .{
            .w = try format.view(self.blob.ptr, self.blob.len),
            .x = self.packed_x.ptr,
            .m = self.m,
            .x_scale = self.x_scale.ptr,
            .x_zero = self.x_zero.ptr,
            .residual = null,
            .y = y,
            .output = output,
            .requant = .{},
            .activation = activation,
        };
    }
};

fn checkShape(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    const gpa = testing.allocator;
    const f = try Fixture.init(m, n, k, keep_percent, seed);
    defer f.deinit();
    const y32 = try gpa.alloc(i32, m * n);
    defer gpa.free(y32);
    var args = try f.args(y32.ptr, .s32, .none);
    forward(&args);
    const yf = try gpa.alloc(f32, m * n);
    defer gpa.free(yf);
    const res = try gpa.alloc(f32, m * n);
    defer gpa.free(res);
    for (res, 0..) |*r, i| r.* = @as(f32, @floatFromInt(i % 13)) * 0.5;
    args = try f.args(yf.ptr, .f32, .gelu_erf);
    args.residual = res.ptr;
    forward(&args);
    for (0..m) |t| for (0..n) |c| {
        var want: i32 = 0;
        for (0..k) |kk| want += (@as(i32, f.xq[t * k + kk]) - f.x_zero[t]) * f.q[c * k + kk];
        try testing.expectEqual(want, y32[t * n + c]);
        const pre = @as(f64, @floatFromInt(want)) * f.x_scale[t] * f.scale[c] + f.bias[c];
        const gelu = 0.5 * pre * (1 + vmath.erfReference(pre / std.math.sqrt2));
        const expect = gelu + res[t * n + c];
        try testing.expectApproxEqAbs(expect, @as(f64, yf[t * n + c]), 1e-4 * (1 + @abs(expect)));
    };
}

test "spmm_i8 matches the naive sum on odd shapes" {
    try checkShape(1, 1, 1, 100, 1);
    try checkShape(5, 7, 3, 60, 2);
    try checkShape(17, 13, 29, 30, 3);
    try checkShape(33, 64, 100, 10, 4);
    try checkShape(16, 8, 40, 0, 5);
    try checkShape(20, 12, 600, 30, 7);
}

test "spmm_i8 runs a wide layer in panels (and slices) with the same sums" {
    // k > panel_k: three panels on VNNI (none elsewhere), the last one short; n spans several
    // slices, the last tile partial.
    try checkShape(17, 300, 2100, 20, 8);
    try checkShape(3, 9, 2049, 5, 9); // a last panel of one input channel
    try checkShape(5, 9, 2049, 0, 17); // nearly every panel of every block row empty
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkShape(33, 200, 1500, 40, 10);
    try checkQuantizedOutput(19, 150, 2100, 20, 16);
}

test "spmm_i8 splits an uneven pattern over threads" {
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkShape(40, 96, 200, 20, 6);
}

fn checkQuantizedOutput(m: usize, n: usize, k: usize, keep_percent: u32, seed: u64) !void {
    const gpa = testing.allocator;
    const f = try Fixture.init(m, n, k, keep_percent, seed);
    defer f.deinit();
    const y = try gpa.alloc(f32, m * n);
    defer gpa.free(y);
    const want = try gpa.alignedAlloc(u8, .@"64", layout.packedLen(m, n));
    defer gpa.free(want);
    const got = try gpa.alignedAlloc(u8, .@"64", layout.packedLen(m, n));
    defer gpa.free(got);
    const params = try gpa.alloc(f32, 2 * m);
    defer gpa.free(params);
    const zeros = try gpa.alloc(i32, 2 * m);
    defer gpa.free(zeros);
    const scratch = try gpa.alignedAlloc(u8, .@"64", Staging.len(m, n));
    defer gpa.free(scratch);
    for ([_]vmath.Activation{ .none, .gelu_erf }) |act| {
        const args = try f.args(y.ptr, .f32, act);
        forward(&args);
        try layout.quantizePacked(y.ptr, m, n, .per_token, int8.act_max, want.ptr, params.ptr, zeros.ptr);
        @memset(scratch, 0xff); // NaN everywhere: nothing may be read before it is written
        var staging = Staging.init(scratch.ptr, m, n);
        try forwardQuantized(&args, &staging, got.ptr, params[m..].ptr, zeros[m..].ptr);
        try testing.expectEqualSlices(u8, want, got);
        try testing.expectEqualSlices(f32, params[0..m], params[m..]);
        try testing.expectEqualSlices(i32, zeros[0..m], zeros[m..]);
    }
}

test "spmm_i8 forwardQuantized writes quantizePacked's bytes of forward's output" {
    try checkQuantizedOutput(1, 4, 8, 100, 11);
    try checkQuantizedOutput(21, 13, 40, 30, 12);
    try checkQuantizedOutput(40, 96, 200, 20, 13);
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkQuantizedOutput(40, 96, 200, 20, 14);
    try checkQuantizedOutput(130, 70, 64, 10, 15);
}

//! The packed activation layout of `spmm_i8`: chunks of 16 tokens; per chunk and input
//! channel k, 32 bytes: 16 x u16 `q`. Tokens sit in the order 0-3, 8-11, 4-7, 12-15 so that the
//! kernel's 16-bit unpacks return them in natural order. A kernel forms (x[k0], x[k1]) byte
//! pairs with a shift and an OR: row[k0] | row[k1] << 8. (Half the bytes of storing `q << 8` as
//! well: a 768-channel chunk stays in L1.) Written from fp32 rows (`quantizePacked`, the codes of
//! `quantize.zig`) or from already quantized rows (`packRows`).
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const transpose = @import("transpose.zig");
const quantize = @import("quantize.zig");
const int8 = @import("int8.zig");

const Ctx = quantize.Ctx;
const Mode = quantize.Mode;
const Error = quantize.Error;
const Range = quantize.Range;
const laneCodes = quantize.laneCodes;
const tokenParams = quantize.tokenParams;

/// Tokens per chunk of the packed layouts (this one, `pack_f32.zig`'s, the staged one).
pub const chunk_tokens: usize = 16;
/// Bytes per (chunk, input channel) of the packed u8 layout.
pub const packed_row_bytes: usize = 32;

const F8 = @Vector(8, f32);
const I8v = @Vector(8, i32);
const U16x8 = @Vector(8, u16);

/// Chunks of `chunk_tokens` covering m tokens.
pub fn chunksOf(m: usize) usize {
    return (m + chunk_tokens - 1) / chunk_tokens;
}

/// Bytes of the packed u8 layout for m tokens and k channels.
pub fn packedLen(m: usize, k: usize) usize {
    return chunksOf(m) * k * packed_row_bytes;
}

/// Token stored at position `p` of a packed chunk (the order is its own inverse).
pub fn tokenAt(p: usize) usize {
    assert(p < chunk_tokens);
    return (p & 3) | ((p & 4) << 1) | ((p & 8) >> 1);
}

/// 8x8 transpose: out[c][r] = in[r][c] (u16 rows of `storePacked`; fp32 blocks use
/// `transpose.f32x8`).
inline fn transpose8(comptime T: type, rows: [8]@Vector(8, T)) [8]@Vector(8, T) {
    const V = @Vector(8, T);
    const lo16 = @Vector(8, i32){ 0, -1, 1, -2, 2, -3, 3, -4 };
    const hi16 = @Vector(8, i32){ 4, -5, 5, -6, 6, -7, 7, -8 };
    const lo32 = @Vector(8, i32){ 0, 1, -1, -2, 2, 3, -3, -4 };
    const hi32 = @Vector(8, i32){ 4, 5, -5, -6, 6, 7, -7, -8 };
    const lo64 = @Vector(8, i32){ 0, 1, 2, 3, -1, -2, -3, -4 };
    const hi64 = @Vector(8, i32){ 4, 5, 6, 7, -5, -6, -7, -8 };
    var t: [8]V = undefined;
    inline for (0..4) |i| {
        t[2 * i] = @shuffle(T, rows[2 * i], rows[2 * i + 1], lo16);
        t[2 * i + 1] = @shuffle(T, rows[2 * i], rows[2 * i + 1], hi16);
    }
    // t[0] = r0/r1 columns 0-3, t[1] = r0/r1 columns 4-7, t[2] = r2/r3 columns 0-3, ...
    var u: [8]V = undefined;
    inline for (0..2) |h| {
        const a = 4 * h; // rows 0-3 or 4-7
        u[a + 0] = @shuffle(T, t[a + 0], t[a + 2], lo32); // columns 0-1
        u[a + 1] = @shuffle(T, t[a + 0], t[a + 2], hi32); // columns 2-3
        u[a + 2] = @shuffle(T, t[a + 1], t[a + 3], lo32); // columns 4-5
        u[a + 3] = @shuffle(T, t[a + 1], t[a + 3], hi32); // columns 6-7
    }
    var out: [8]V = undefined;
    inline for (0..4) |c| {
        out[2 * c] = @shuffle(T, u[c], u[4 + c], lo64);
        out[2 * c + 1] = @shuffle(T, u[c], u[4 + c], hi64);
    }
    return out;
}

/// Writes the packed u8 layout for one chunk and the 8 channels from `k0`; `rows[p]` holds
/// the 8 quantized values of the token stored at position p. Only `width` channels are kept.
inline fn storePacked(dst: [*]u8, k0: usize, width: usize, rows: [16]U16x8) void {
    const a = transpose8(u16, rows[0..8].*);
    const b = transpose8(u16, rows[8..16].*);
    for (0..width) |c| {
        const lo: @Vector(16, u16) = std.simd.join(a[c], b[c]);
        const row: *align(1) [16]u16 = @ptrCast(dst + (k0 + c) * packed_row_bytes);
        row.* = lo;
    }
}

/// u16 lane p of a packed row holds token tokenAt(p): the shuffle from natural token order.
const packed_order = blk: {
    var o: [chunk_tokens]i32 = undefined;
    for (0..chunk_tokens) |p| o[p] = @intCast(tokenAt(p));
    break :blk o;
};

/// One packed row from the 16 tokens' codes of a channel in natural order.
pub inline fn packedRow(lo: I8v, hi: I8v) @Vector(chunk_tokens, u16) {
    const q: @Vector(chunk_tokens, u16) = @intCast(std.simd.join(lo, hi));
    return @shuffle(u16, q, undefined, @as(@Vector(chunk_tokens, i32), packed_order));
}

/// Channels per `packedBlock`: one 64-byte line of each token row, read whole (token rows
/// k * 4 bytes apart share an L1 set when k * 4 is a multiple of 4 KiB, so a line read in
/// halves would be fetched twice).
const block_channels: usize = 16;

/// Quantizes `width` (<= 16) channels from `k0` of one chunk: per half of 8 tokens, 8 x 8
/// blocks of the token-major rows are transposed in registers, so every vector holds one
/// channel of 8 tokens and quantizes with per-lane (per-token) parameters; two halves make one
/// packed row. Rows of padding tokens read as 0 (their parameters give code 0).
fn packedBlock(ctx: *const Ctx, t0: usize, k0: usize, width: usize, inv: [2]F8, zero: [2]I8v, dst: [*]u8) void {
    const qmax: i32 = @intCast(ctx.qmax);
    var codes: [2][block_channels]I8v = undefined;
    inline for (0..2) |half| {
        var rows: [2][8]F8 = @splat(@splat(@splat(0)));
        for (0..8) |r| {
            const t = t0 + half * 8 + r;
            if (t >= ctx.m) break;
            const x = ctx.x + t * ctx.k + k0;
            if (width == block_channels) {
                rows[0][r] = x[0..8].*;
                rows[1][r] = x[8..16].*;
            } else {
                for (0..width) |c| rows[c / 8][r][c % 8] = x[c];
            }
        }
        inline for (0..2) |b| {
            const cols = transpose.f32x8(rows[b]);
            inline for (0..8) |c| codes[half][8 * b + c] = laneCodes(cols[c], inv[half], zero[half], qmax);
        }
    }
    for (0..width) |c| {
        const row: *align(1) [chunk_tokens]u16 = @ptrCast(dst + (k0 + c) * packed_row_bytes);
        row.* = packedRow(codes[0][c], codes[1][c]);
    }
}

fn packedWork(ctx: *const Ctx, ith: u32, nth: u32) void {
    const chunks = chunksOf(ctx.m);
    const part = pool.split(chunks, ith, nth);
    for (part.begin..part.end) |chunk| {
        const t0 = chunk * chunk_tokens;
        // Lanes are tokens in natural order; padding tokens and failed ones quantize to 0.
        var inv: [2]F8 = @splat(@splat(0));
        var zero: [2]I8v = @splat(@splat(0));
        for (0..chunk_tokens) |j| {
            if (t0 + j >= ctx.m) break;
            const p = tokenParams(ctx, t0 + j) orelse continue;
            assert(!p.divide);
            inv[j / 8][j % 8] = p.inv;
            zero[j / 8][j % 8] = p.zero;
        }
        const dst = ctx.packed_u8.? + chunk * ctx.k * packed_row_bytes;
        var k0: usize = 0;
        while (k0 < ctx.k) : (k0 += block_channels) {
            packedBlock(ctx, t0, k0, @min(block_channels, ctx.k - k0), inv, zero, dst);
        }
    }
}

/// Quantizes x [m, k] (fp32, row-major) to codes in [0, qmax] (127, or 255 where the kernels
/// take 8 bits: `int8.act_max`) and writes the packed layout of `spmm_i8` (`packedLen(m, k)`
/// bytes); writes each token's scale and zero point.
pub fn quantizePacked(
    x: [*]const f32,
    m: usize,
    k: usize,
    mode: Mode,
    qmax: u32,
    packed_x: [*]u8,
    scale: [*]f32,
    zero: [*]i32,
) Error!void {
    assert(m >= 1 and k >= 1);
    assert(mode != .ort_u8); // ORT's codes: rows layout only
    assert((qmax == 127 or qmax == 255) and qmax <= int8.act_max);
    try quantize.run(.{ .x = x, .m = m, .k = k, .mode = mode, .qmax = qmax, .scale = scale, .zero = zero }, .{ .packed_u8 = packed_x }, packedWork);
}

/// Packs already quantized rows q [m][ldq] (values <= `int8.act_max`) into the `spmm_i8`
/// layout. Returns false (and writes nothing useful) if a value exceeds `int8.act_max`.
pub fn packRows(q: [*]const u8, m: usize, k: usize, ldq: usize, packed_x: [*]u8) bool {
    assert(m >= 1 and k >= 1 and ldq >= k);
    const chunks = chunksOf(m);
    var worst: u8 = 0;
    for (0..chunks) |chunk| {
        const t0 = chunk * chunk_tokens;
        var k0: usize = 0;
        while (k0 < k) : (k0 += 8) {
            const width: usize = @min(8, k - k0);
            var rows: [16]U16x8 = undefined;
            for (0..chunk_tokens) |p| {
                rows[p] = @splat(0);
                const t = t0 + tokenAt(p);
                if (t >= m) continue;
                for (0..width) |c| {
                    const v = q[t * ldq + k0 + c];
                    worst = @max(worst, v);
                    rows[p][c] = v;
                }
            }
            storePacked(packed_x + chunk * k * packed_row_bytes, k0, width, rows);
        }
    }
    return worst <= int8.act_max;
}

// ---- tests ----

test "tokenAt is a permutation and its own inverse" {
    var seen = [_]bool{false} ** chunk_tokens;
    for (0..chunk_tokens) |p| {
        seen[tokenAt(p)] = true;
        try std.testing.expectEqual(p, tokenAt(tokenAt(p)));
    }
    for (seen) |s| try std.testing.expect(s);
}

test "transpose8 transposes" {
    var rows: [8]@Vector(8, u16) = undefined;
    for (0..8) |r| for (0..8) |c| {
        rows[r][c] = @intCast(r * 8 + c);
    };
    const t = transpose8(u16, rows);
    for (0..8) |r| for (0..8) |c| try std.testing.expectEqual(@as(u16, @intCast(c * 8 + r)), t[r][c]);
}

test "quantizeRows and quantizePacked agree with the scalar formula" {
    const m = 21;
    const k = 13;
    var x: [m * k]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt((i * 7919) % 1000)) / 100.0 - 3.0;
    x[5] = -7.5;
    x[40] = 12.25;
    for ([_]Mode{ .per_tensor, .per_token }) |mode| {
        var q: [m * 16]u8 = undefined;
        var scale: [m]f32 = undefined;
        var zero: [m]i32 = undefined;
        try quantize.quantizeRows(&x, m, k, mode, 127, &q, 16, &scale, &zero);
        var packed_x: [packedLen(m, k)]u8 = undefined;
        var scale2: [m]f32 = undefined;
        var zero2: [m]i32 = undefined;
        try quantizePacked(&x, m, k, mode, 127, &packed_x, &scale2, &zero2);
        for (0..m) |t| {
            const r = if (mode == .per_tensor) quantize.range(&x, m * k) else quantize.range(x[t * k ..].ptr, k);
            const p = quantize.Params.of(r.min, r.max, 127);
            try std.testing.expectEqual(p.scale, scale[t]);
            try std.testing.expectEqual(p.zero, zero[t]);
            try std.testing.expectEqual(p.scale, scale2[t]);
            try std.testing.expectEqual(p.zero, zero2[t]);
            for (0..k) |c| {
                const want = quantize.refQuant(x[t * k + c], p, 127);
                try std.testing.expectEqual(want, q[t * 16 + c]);
                const chunk = t / chunk_tokens;
                const pos = tokenAt(t % chunk_tokens);
                const row = packed_x[chunk * k * packed_row_bytes + c * packed_row_bytes ..];
                try std.testing.expectEqual(@as(u8, want), row[2 * pos]);
                try std.testing.expectEqual(@as(u8, 0), row[2 * pos + 1]);
            }
            for (k..16) |c| try std.testing.expectEqual(@as(u8, 0), q[t * 16 + c]);
        }
        var repacked: [packedLen(m, k)]u8 = undefined;
        @memset(&repacked, 0xaa);
        try std.testing.expect(packRows(&q, m, k, 16, &repacked));
        // Padding tokens of the last chunk are zero in both.
        try std.testing.expectEqualSlices(u8, &packed_x, &repacked);
    }
}

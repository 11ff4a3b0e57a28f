//! Dynamic activation quantization to unsigned 7/8-bit integers, and the activation layouts the
//! sparse kernels read.
//!
//! Quantization (asymmetric, range always includes 0 so that 0 is exact):
//!   scale = (max - min) / qmax     (1 when that is below the smallest normal f32)
//!   inv   = 1 / scale
//!   zero  = clamp(rne(-min * inv), 0, qmax)
//!   q     = clamp(rne(x * inv) + zero, 0, qmax)
//! with every operation in f32 and rne = round half to even. `min`/`max` are taken per tensor
//! or per token (row). The int8 kernels take qmax = 127 (see `int8.zig` for why).
//!
//! Layouts:
//!   rows     u8 [m][ldq], token-major, for the dense int8 GEMM (ldq >= k, padding zeroed).
//!   packed   for `spmm_i8`: chunks of 16 tokens; per chunk and input channel k, 32 bytes:
//!            16 x u16 `q`. Tokens sit in the order 0-3, 8-11, 4-7, 12-15 so that the
//!            kernel's 16-bit unpacks return them in natural order. A kernel forms
//!            (x[k0], x[k1]) byte pairs with a shift and an OR: row[k0] | row[k1] << 8. (Half
//!            the bytes of storing `q << 8` as well: a 768-channel chunk stays in L1.)
//!   f32 packed  for `spmm_f32`: chunks of 16 tokens; per chunk and k, 16 f32 (natural order).
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const transpose = @import("transpose.zig");

/// Tokens per chunk of the packed layouts.
pub const chunk_tokens: usize = 16;
/// Bytes per (chunk, input channel) of the packed u8 layout.
pub const packed_row_bytes: usize = 32;

/// `ort_u8` is ONNX Runtime's DynamicQuantizeLinear: per tensor, qmax 255, zero point
/// rne(clamp(-min / scale, 0, 255)), q = clamp(rne(x / scale) + zero, 0, 255), divisions where
/// the other modes multiply by 1 / scale, so that an ORT `quantize_dynamic` model can be run
/// with ORT's exact activation codes (rows layout only).
pub const Mode = enum(u32) { per_tensor = 0, per_token = 1, ort_u8 = 2 };

pub const Error = error{NonFinite};

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

/// Floats of the packed f32 layout for m tokens and k channels.
pub fn packedF32Len(m: usize, k: usize) usize {
    return chunksOf(m) * k * chunk_tokens;
}

/// Token stored at position `p` of a packed chunk (the order is its own inverse).
pub fn tokenAt(p: usize) usize {
    assert(p < chunk_tokens);
    return (p & 3) | ((p & 4) << 1) | ((p & 8) >> 1);
}

/// Quantization parameters of one range.
pub const Params = struct {
    scale: f32,
    inv: f32,
    zero: i32,
    /// Quantize as x / scale (ORT) instead of x * inv.
    divide: bool = false,

    /// ONNX Runtime's DynamicQuantizeLinear parameters of a range (u8).
    pub fn ort(min_value: f32, max_value: f32) Params {
        assert(min_value <= 0 and max_value >= 0);
        if (max_value == min_value) return .{ .scale = 1, .inv = 1, .zero = 0, .divide = true };
        const scale = (max_value - min_value) / 255.0;
        const zero = rne(std.math.clamp(-min_value / scale, 0.0, 255.0));
        return .{ .scale = scale, .inv = 1.0 / scale, .zero = zero, .divide = true };
    }

    pub fn of(min_value: f32, max_value: f32, qmax: u32) Params {
        assert(qmax == 127 or qmax == 255);
        assert(min_value <= 0 and max_value >= 0);
        const scale = (max_value - min_value) / @as(f32, @floatFromInt(qmax));
        if (!(scale >= std.math.floatMin(f32))) return .{ .scale = 1, .inv = 1, .zero = 0 };
        const inv = 1.0 / scale;
        const zero = std.math.clamp(rne(-min_value * inv), 0, @as(i32, @intCast(qmax)));
        return .{ .scale = scale, .inv = inv, .zero = zero };
    }
};

/// Round half to even for |v| < 2^22 (all values here are within +-256).
pub inline fn rne(v: f32) i32 {
    const magic: f32 = 12582912.0; // 1.5 * 2^23
    return @intFromFloat((v + magic) - magic);
}

inline fn rneVec(v: F8) I8v {
    const magic: F8 = @splat(12582912.0);
    return @intFromFloat((v + magic) - magic);
}

/// Codes of 8 values with per-lane parameters: clamp(rne(v * inv) + zero, 0, qmax).
inline fn laneCodes(v: F8, inv: F8, zero: I8v, qmax: i32) I8v {
    return std.math.clamp(rneVec(v * inv) + zero, @as(I8v, @splat(0)), @as(I8v, @splat(qmax)));
}

inline fn quantizeVec(v: F8, p: Params, qmax: i32) I8v {
    // x * inv is within [-qmax - 1, qmax + 1] by construction: the range holds x.
    if (!p.divide) return laneCodes(v, @splat(p.inv), @splat(p.zero), qmax);
    // ORT's division: clamp before rounding so that huge quotients stay within the
    // magic-number range (its scale comes from the tensor's own range, but is 1 for an
    // all-zero tensor whatever the rounding of the others).
    const scaled = v / @as(F8, @splat(p.scale));
    const bounded = std.math.clamp(scaled, @as(F8, @splat(-1024.0)), @as(F8, @splat(1024.0)));
    return std.math.clamp(rneVec(bounded) + @as(I8v, @splat(p.zero)), @as(I8v, @splat(0)), @as(I8v, @splat(qmax)));
}

const Range = struct { min: f32, max: f32, nan: bool };

/// min (<= 0), max (>= 0) and whether a NaN was seen, over x[0..count].
fn range(x: [*]const f32, count: usize) Range {
    // Four independent accumulators: one min/max chain would wait on vminps' latency.
    const lanes = 4;
    var lo: [lanes]F8 = @splat(@splat(0));
    var hi: [lanes]F8 = @splat(@splat(0));
    var nan: [lanes]@Vector(8, bool) = @splat(@splat(false));
    var i: usize = 0;
    while (i + 8 * lanes <= count) : (i += 8 * lanes) {
        inline for (0..lanes) |j| {
            const v: F8 = x[i + 8 * j ..][0..8].*;
            lo[j] = @min(lo[j], v);
            hi[j] = @max(hi[j], v);
            nan[j] = nan[j] | (v != v);
        }
    }
    while (i + 8 <= count) : (i += 8) {
        const v: F8 = x[i..][0..8].*;
        lo[0] = @min(lo[0], v);
        hi[0] = @max(hi[0], v);
        nan[0] = nan[0] | (v != v);
    }
    inline for (1..lanes) |j| {
        lo[0] = @min(lo[0], lo[j]);
        hi[0] = @max(hi[0], hi[j]);
        nan[0] = nan[0] | nan[j];
    }
    var r = Range{ .min = @reduce(.Min, lo[0]), .max = @reduce(.Max, hi[0]), .nan = @reduce(.Or, nan[0]) };
    while (i < count) : (i += 1) {
        r.min = @min(r.min, x[i]);
        r.max = @max(r.max, x[i]);
        r.nan = r.nan or x[i] != x[i];
    }
    return r;
}

fn checked(r: Range, qmax: u32, mode: Mode) Error!Params {
    if (r.nan or !std.math.isFinite(r.min) or !std.math.isFinite(r.max)) return error.NonFinite;
    if (!std.math.isFinite(r.max - r.min)) return error.NonFinite;
    return if (mode == .ort_u8) Params.ort(r.min, r.max) else Params.of(r.min, r.max, qmax);
}

/// The scalar quantization of one value (tails and references).
fn quantizeOne(x: f32, p: Params, qmax: i32) u8 {
    const scaled = if (p.divide) x / p.scale else x * p.inv;
    return @intCast(std.math.clamp(rne(std.math.clamp(scaled, -1024.0, 1024.0)) + p.zero, 0, qmax));
}

const Ctx = struct {
    x: [*]const f32,
    m: usize,
    k: usize,
    mode: Mode,
    qmax: u32,
    tensor: Params,
    scale: [*]f32,
    zero: [*]i32,
    // Output: exactly one of these is used.
    rows: ?[*]u8 = null,
    ldq: usize = 0,
    packed_u8: ?[*]u8 = null,
    // Per-thread outputs of the range pass.
    ranges: *[pool.max_threads]Range,
    failed: *std.atomic.Value(bool),
};

fn rangeWork(ctx: *const Ctx, ith: u32, nth: u32) void {
    const part = pool.split(ctx.m, ith, nth);
    ctx.ranges[ith] = range(ctx.x + part.begin * ctx.k, (part.end - part.begin) * ctx.k);
}

/// Per-token parameters of token `t`, or the tensor's. Stores them in the outputs.
fn tokenParams(ctx: *const Ctx, t: usize) ?Params {
    const p = switch (ctx.mode) {
        .per_tensor, .ort_u8 => ctx.tensor,
        .per_token => checked(range(ctx.x + t * ctx.k, ctx.k), ctx.qmax, ctx.mode) catch {
            ctx.failed.store(true, .monotonic);
            return null;
        },
    };
    ctx.scale[t] = p.scale;
    ctx.zero[t] = p.zero;
    return p;
}

fn rowsWork(ctx: *const Ctx, ith: u32, nth: u32) void {
    const part = pool.split(ctx.m, ith, nth);
    const qmax: i32 = @intCast(ctx.qmax);
    const out = ctx.rows.?;
    for (part.begin..part.end) |t| {
        const p = tokenParams(ctx, t) orelse continue;
        const x = ctx.x + t * ctx.k;
        const q = out + t * ctx.ldq;
        var i: usize = 0;
        while (i + 8 <= ctx.k) : (i += 8) {
            const v: F8 = x[i..][0..8].*;
            const qv: @Vector(8, u8) = @intCast(quantizeVec(v, p, qmax));
            q[i..][0..8].* = qv;
        }
        while (i < ctx.k) : (i += 1) q[i] = quantizeOne(x[i], p, qmax);
        @memset(q[ctx.k..ctx.ldq], 0);
    }
}

/// Quantizes x [m, k] (fp32, row-major) into rows q [m][ldq]; writes each token's scale and
/// zero point (per-tensor mode repeats the tensor's).
pub fn quantizeRows(
    x: [*]const f32,
    m: usize,
    k: usize,
    mode: Mode,
    qmax: u32,
    q: [*]u8,
    ldq: usize,
    scale: [*]f32,
    zero: [*]i32,
) Error!void {
    assert(m >= 1 and k >= 1 and ldq >= k);
    assert(qmax == 127 or qmax == 255);
    assert(mode != .ort_u8 or qmax == 255);
    var ranges: [pool.max_threads]Range = undefined;
    var failed = std.atomic.Value(bool).init(false);
    var ctx = Ctx{
        .x = x,
        .m = m,
        .k = k,
        .mode = mode,
        .qmax = qmax,
        .tensor = undefined,
        .scale = scale,
        .zero = zero,
        .rows = q,
        .ldq = ldq,
        .ranges = &ranges,
        .failed = &failed,
    };
    if (mode != .per_token) ctx.tensor = try tensorParams(&ctx);
    pool.parallel(Ctx, &ctx, rowsWork);
    if (failed.load(.monotonic)) return error.NonFinite;
}

fn tensorParams(ctx: *Ctx) Error!Params {
    // The range pass splits by rows; slots no thread ran keep the neutral range.
    @memset(ctx.ranges, Range{ .min = 0, .max = 0, .nan = false });
    pool.parallel(Ctx, ctx, rangeWork);
    var total = Range{ .min = 0, .max = 0, .nan = false };
    for (ctx.ranges) |r| {
        total.min = @min(total.min, r.min);
        total.max = @max(total.max, r.max);
        total.nan = total.nan or r.nan;
    }
    return checked(total, ctx.qmax, ctx.mode);
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
inline fn packedRow(lo: I8v, hi: I8v) @Vector(chunk_tokens, u16) {
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

/// Quantizes x [m, k] (fp32, row-major) to u7 and writes the packed layout of `spmm_i8`
/// (`packedLen(m, k)` bytes); writes each token's scale and zero point.
pub fn quantizePacked(
    x: [*]const f32,
    m: usize,
    k: usize,
    mode: Mode,
    packed_x: [*]u8,
    scale: [*]f32,
    zero: [*]i32,
) Error!void {
    assert(m >= 1 and k >= 1);
    assert(mode != .ort_u8); // 8-bit codes: rows layout only
    var ranges: [pool.max_threads]Range = undefined;
    var failed = std.atomic.Value(bool).init(false);
    var ctx = Ctx{
        .x = x,
        .m = m,
        .k = k,
        .mode = mode,
        .qmax = 127,
        .tensor = undefined,
        .scale = scale,
        .zero = zero,
        .packed_u8 = packed_x,
        .ranges = &ranges,
        .failed = &failed,
    };
    if (mode == .per_tensor) ctx.tensor = try tensorParams(&ctx);
    pool.parallel(Ctx, &ctx, packedWork);
    if (failed.load(.monotonic)) return error.NonFinite;
}

/// Running per-token range of one 16-token chunk, lanes in natural token order, as a producing
/// kernel accumulates it over the values it writes (`spmm_i8.forwardQuantized`). `lo`/`hi` start
/// at 0 like `range`'s; `bad` accumulates v * 0, which turns NaN at a NaN or an infinity.
pub const ChunkRange = extern struct {
    lo: [chunk_tokens]f32,
    hi: [chunk_tokens]f32,
    bad: [chunk_tokens]f32,

    pub const empty = ChunkRange{ .lo = @splat(0), .hi = @splat(0), .bad = @splat(0) };

    /// Widens the range by 16 values, one per token.
    pub inline fn add(self: *ChunkRange, v: @Vector(chunk_tokens, f32)) void {
        const V = @Vector(chunk_tokens, f32);
        self.lo = @min(@as(V, self.lo), v);
        self.hi = @max(@as(V, self.hi), v);
        self.bad = @mulAdd(V, v, @splat(0), self.bad);
    }

    pub fn merge(self: *ChunkRange, other: *const ChunkRange) void {
        const V = @Vector(chunk_tokens, f32);
        self.lo = @min(@as(V, self.lo), @as(V, other.lo));
        self.hi = @max(@as(V, self.hi), @as(V, other.hi));
        self.bad = @as(V, self.bad) + @as(V, other.bad);
    }
};

const StagedCtx = struct {
    staged: [*]const f32,
    m: usize,
    k: usize,
    /// Per chunk: scale and zero point of each lane (0 past m).
    inv: [*]const @Vector(chunk_tokens, f32),
    zero: [*]const @Vector(chunk_tokens, i32),
    packed_x: [*]u8,
    split: []const usize,
};

/// Quantizes this thread's channels of every chunk of the staged rows into packed rows.
fn stagedWork(ctx: *const StagedCtx, ith: u32, nth: u32) void {
    // Each thread takes the channels it staged when the thread count is the producer's
    // (they are still in its own L2), else an even share.
    const own = ctx.split.len == nth + 1;
    const c0 = if (own) ctx.split[ith] else pool.split(ctx.k, ith, nth).begin;
    const c1 = if (own) ctx.split[ith + 1] else pool.split(ctx.k, ith, nth).end;
    const lane = std.simd.iota(usize, 8);
    for (0..chunksOf(ctx.m)) |chunk| {
        const inv: [chunk_tokens]f32 = ctx.inv[chunk];
        const zero: [chunk_tokens]i32 = ctx.zero[chunk];
        // Lanes past m hold whatever the producer computed for padding; they quantize to 0.
        var valid: [2]@Vector(8, bool) = undefined;
        inline for (0..2) |h| valid[h] = lane + @as(@Vector(8, usize), @splat(chunk * chunk_tokens + 8 * h)) < @as(@Vector(8, usize), @splat(ctx.m));
        for (c0..c1) |c| {
            const row = chunk * ctx.k + c;
            const staged = ctx.staged + row * chunk_tokens;
            var codes: [2]I8v = undefined;
            inline for (0..2) |h| {
                const v = @select(f32, valid[h], @as(F8, staged[8 * h ..][0..8].*), @as(F8, @splat(0)));
                codes[h] = laneCodes(v, inv[8 * h ..][0..8].*, zero[8 * h ..][0..8].*, 127);
            }
            const dst: *align(1) [chunk_tokens]u16 = @ptrCast(ctx.packed_x + row * packed_row_bytes);
            dst.* = packedRow(codes[0], codes[1]);
        }
    }
}

/// Quantizes per token to u7, into the packed layout, values staged in packed order
/// ([chunk][k][16] fp32, natural token order) whose per-token ranges the producer kept in
/// `ranges` ([chunks]). The same codes, scales and zero points as `quantizePacked` per token on
/// the token-major values. `split` gives thread i channels [split[i], split[i + 1]) when it has
/// one entry more than the pool has threads (else it is ignored). `inv`/`zero` are [chunks]
/// scratch.
pub fn quantizeStaged(
    staged: [*]const f32,
    m: usize,
    k: usize,
    ranges: [*]const ChunkRange,
    split: []const usize,
    inv: [*]@Vector(chunk_tokens, f32),
    zero_v: [*]@Vector(chunk_tokens, i32),
    packed_x: [*]u8,
    scale: [*]f32,
    zero: [*]i32,
) Error!void {
    assert(m >= 1 and k >= 1);
    for (0..chunksOf(m)) |chunk| {
        inv[chunk] = @splat(0);
        zero_v[chunk] = @splat(0);
        const r = &ranges[chunk];
        for (0..chunk_tokens) |j| {
            const t = chunk * chunk_tokens + j;
            if (t >= m) break;
            const bad = r.bad[j] != 0; // NaN compares unequal to 0 too
            const p = try checked(.{ .min = r.lo[j], .max = r.hi[j], .nan = bad }, 127, .per_token);
            scale[t] = p.scale;
            zero[t] = p.zero;
            inv[chunk][j] = p.inv;
            zero_v[chunk][j] = p.zero;
        }
    }
    if (split.len > 0) assert(split[0] == 0 and split[split.len - 1] == k);
    const ctx = StagedCtx{ .staged = staged, .m = m, .k = k, .inv = inv, .zero = zero_v, .packed_x = packed_x, .split = split };
    pool.parallel(StagedCtx, &ctx, stagedWork);
}

/// Packs already quantized rows q [m][ldq] (values <= 127) into the `spmm_i8` layout.
/// Returns false (and writes nothing useful) if a value exceeds 127.
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
    return worst <= 127;
}

/// Largest byte of data[0..len] (0 when empty): the 7-bit check of caller-provided activations.
pub fn maxByte(data: [*]const u8, len: usize) u8 {
    var acc: @Vector(32, u8) = @splat(0);
    var i: usize = 0;
    while (i + 32 <= len) : (i += 32) acc = @max(acc, @as(@Vector(32, u8), data[i..][0..32].*));
    var result = @reduce(.Max, acc);
    while (i < len) : (i += 1) result = @max(result, data[i]);
    return result;
}

/// Symmetric per-output-channel weight quantization: scale[c] = max|w[c, :]| / 127 (1 for an
/// all-zero channel), q = clamp(rne(w / scale), -127, 127), computed as w * (1 / scale) in f32.
pub fn quantizeWeights(w: [*]const f32, n: usize, k: usize, q: [*]i8, scale: [*]f32) Error!void {
    assert(n >= 1 and k >= 1);
    for (0..n) |c| {
        const row = w[c * k ..][0..k];
        var max_abs: f32 = 0;
        for (row) |v| {
            if (!std.math.isFinite(v)) return error.NonFinite;
            max_abs = @max(max_abs, @abs(v));
        }
        const s = max_abs / 127.0;
        const p: Params = if (s >= std.math.floatMin(f32)) .{ .scale = s, .inv = 1.0 / s, .zero = 0 } else .{ .scale = 1, .inv = 1, .zero = 0 };
        scale[c] = p.scale;
        for (row, 0..) |v, i| q[c * k + i] = @intCast(std.math.clamp(rne(v * p.inv), -127, 127));
    }
}

const F32Ctx = struct { x: [*]const f32, m: usize, k: usize, out: [*]f32 };

fn packF32Work(ctx: *const F32Ctx, ith: u32, nth: u32) void {
    const chunks = chunksOf(ctx.m);
    const part = pool.split(chunks, ith, nth);
    for (part.begin..part.end) |chunk| {
        const t0 = chunk * chunk_tokens;
        const dst = ctx.out + chunk * ctx.k * chunk_tokens;
        var k0: usize = 0;
        while (k0 < ctx.k) : (k0 += 8) {
            const width: usize = @min(8, ctx.k - k0);
            var rows: [16]F8 = undefined;
            for (0..chunk_tokens) |j| {
                rows[j] = @splat(0);
                if (t0 + j >= ctx.m) continue;
                const x = ctx.x + (t0 + j) * ctx.k + k0;
                if (width == 8) {
                    rows[j] = x[0..8].*;
                } else {
                    for (0..width) |c| rows[j][c] = x[c];
                }
            }
            const a = transpose.f32x8(rows[0..8].*);
            const b = transpose.f32x8(rows[8..16].*);
            for (0..width) |c| {
                const row: *align(4) [16]f32 = @ptrCast(dst + (k0 + c) * chunk_tokens);
                row[0..8].* = a[c];
                row[8..16].* = b[c];
            }
        }
    }
}

/// Transposes x [m, k] into the packed f32 layout of `spmm_f32` (`packedF32Len(m, k)` floats).
pub fn packF32(x: [*]const f32, m: usize, k: usize, out: [*]f32) void {
    assert(m >= 1 and k >= 1);
    const ctx = F32Ctx{ .x = x, .m = m, .k = k, .out = out };
    pool.parallel(F32Ctx, &ctx, packF32Work);
}

// ---- tests ----

fn refQuant(x: f32, p: Params, qmax: i32) u8 {
    return @intCast(std.math.clamp(rne(x * p.inv) + p.zero, 0, qmax));
}

test "maxByte finds the largest byte" {
    var data = [_]u8{0} ** 100;
    try std.testing.expectEqual(@as(u8, 0), maxByte(&data, 100));
    data[99] = 128;
    data[40] = 7;
    try std.testing.expectEqual(@as(u8, 128), maxByte(&data, 100));
    try std.testing.expectEqual(@as(u8, 7), maxByte(&data, 99));
}

test "rne rounds half to even" {
    try std.testing.expectEqual(@as(i32, 2), rne(2.5));
    try std.testing.expectEqual(@as(i32, 4), rne(3.5));
    try std.testing.expectEqual(@as(i32, -2), rne(-2.5));
    try std.testing.expectEqual(@as(i32, 1), rne(0.51));
    try std.testing.expectEqual(@as(i32, -127), rne(-127.2));
}

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
        try quantizeRows(&x, m, k, mode, 127, &q, 16, &scale, &zero);
        var packed_x: [packedLen(m, k)]u8 = undefined;
        var scale2: [m]f32 = undefined;
        var zero2: [m]i32 = undefined;
        try quantizePacked(&x, m, k, mode, &packed_x, &scale2, &zero2);
        for (0..m) |t| {
            const r = if (mode == .per_tensor) range(&x, m * k) else range(x[t * k ..].ptr, k);
            const p = Params.of(r.min, r.max, 127);
            try std.testing.expectEqual(p.scale, scale[t]);
            try std.testing.expectEqual(p.zero, zero[t]);
            try std.testing.expectEqual(p.scale, scale2[t]);
            try std.testing.expectEqual(p.zero, zero2[t]);
            for (0..k) |c| {
                const want = refQuant(x[t * k + c], p, 127);
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

test "non-finite input is refused" {
    var x = [_]f32{ 1, 2, std.math.nan(f32), 4 };
    var q: [4]u8 = undefined;
    var scale: [2]f32 = undefined;
    var zero: [2]i32 = undefined;
    try std.testing.expectError(error.NonFinite, quantizeRows(&x, 2, 2, .per_token, 127, &q, 2, &scale, &zero));
    try std.testing.expectError(error.NonFinite, quantizeRows(&x, 2, 2, .per_tensor, 127, &q, 2, &scale, &zero));
    x[2] = std.math.inf(f32);
    try std.testing.expectError(error.NonFinite, quantizeRows(&x, 2, 2, .per_tensor, 255, &q, 2, &scale, &zero));
}

test "quantizeWeights is symmetric per channel" {
    const w = [_]f32{ 0.5, -1.0, 0.25, 0, 0, 0, 3, 1.5, -3 };
    var q: [9]i8 = undefined;
    var scale: [3]f32 = undefined;
    try quantizeWeights(&w, 3, 3, &q, &scale);
    try std.testing.expectEqualSlices(i8, &.{ 64, -127, 32, 0, 0, 0, 127, 64, -127 }, &q);
    try std.testing.expectEqual(@as(f32, 1), scale[1]);
    try std.testing.expectApproxEqRel(@as(f32, 3.0 / 127.0), scale[2], 1e-7);
}

test "packF32 transposes into chunks" {
    const m = 19;
    const k = 11;
    var x: [m * k]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @floatFromInt(i);
    var out: [packedF32Len(m, k)]f32 = undefined;
    packF32(&x, m, k, &out);
    for (0..packedF32Len(m, k) / (k * chunk_tokens)) |chunk| for (0..k) |c| for (0..chunk_tokens) |j| {
        const t = chunk * chunk_tokens + j;
        const want: f32 = if (t < m) x[t * k + c] else 0;
        try std.testing.expectEqual(want, out[(chunk * k + c) * chunk_tokens + j]);
    };
}

test "quantizeStaged gives quantizePacked's bytes from staged values and kept ranges" {
    const m = 37;
    const k = 29;
    var x: [m * k]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt((i * 7919) % 1000)) / 100.0 - 3.0;
    x[k + 3] = -9.5;
    for (0..k) |c| x[2 * k + c] = 0.25; // a token with no negative value
    var want: [packedLen(m, k)]u8 = undefined;
    var want_scale: [m]f32 = undefined;
    var want_zero: [m]i32 = undefined;
    try quantizePacked(&x, m, k, .per_token, &want, &want_scale, &want_zero);

    const chunks = comptime chunksOf(m);
    var staged: [packedF32Len(m, k)]f32 = undefined;
    packF32(&x, m, k, &staged);
    var ranges: [chunks]ChunkRange = @splat(ChunkRange.empty);
    for (0..chunks) |chunk| for (0..k) |c| {
        ranges[chunk].add(staged[(chunk * k + c) * chunk_tokens ..][0..chunk_tokens].*);
    };
    // Padding lanes may hold anything the producer computed; they must still give 0.
    for (0..k) |c| staged[((chunks - 1) * k + c) * chunk_tokens + chunk_tokens - 1] = std.math.nan(f32);
    var got: [packedLen(m, k)]u8 = undefined;
    @memset(&got, 0xaa);
    var scale: [m]f32 = undefined;
    var zero: [m]i32 = undefined;
    var inv: [chunks]@Vector(chunk_tokens, f32) = undefined;
    var zero_v: [chunks]@Vector(chunk_tokens, i32) = undefined;
    try quantizeStaged(&staged, m, k, &ranges, &.{}, &inv, &zero_v, &got, &scale, &zero);
    try std.testing.expectEqualSlices(u8, &want, &got);
    try std.testing.expectEqualSlices(f32, &want_scale, &scale);
    try std.testing.expectEqualSlices(i32, &want_zero, &zero);

    // A non-finite value seen by the producer is refused, as quantizePacked refuses it.
    var bad = ranges;
    bad[1].add(@splat(std.math.inf(f32)));
    try std.testing.expectError(error.NonFinite, quantizeStaged(&staged, m, k, &bad, &.{}, &inv, &zero_v, &got, &scale, &zero));
    bad = ranges;
    var v: @Vector(chunk_tokens, f32) = @splat(1);
    v[3] = std.math.nan(f32);
    bad[0].add(v);
    try std.testing.expectError(error.NonFinite, quantizeStaged(&staged, m, k, &bad, &.{}, &inv, &zero_v, &got, &scale, &zero));
}

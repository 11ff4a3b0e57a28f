//! Dynamic activation quantization to unsigned 7/8-bit integers, and the rows layout of the
//! dense int8 GEMM; per-channel weight quantization.
//!
//! Quantization (asymmetric, range always includes 0 so that 0 is exact):
//!   scale = (max - min) / qmax     (1 when that is below the smallest normal f32)
//!   inv   = 1 / scale
//!   zero  = clamp(rne(-min * inv), 0, qmax)
//!   q     = clamp(rne(x * inv) + zero, 0, qmax)
//! with every operation in f32 and rne = round half to even. `min`/`max` are taken per tensor
//! or per token (row). The int8 kernels take qmax = 127 (see `int8.zig` for why).
//!
//! Layouts: rows u8 [m][ldq], token-major (ldq >= k, padding zeroed), here; the packed layouts
//! of the sparse kernels in `quantize_packed.zig` (u8, from fp32 or from rows),
//! `quantize_staged.zig` (u8, from a producing kernel's staged output) and `pack_f32.zig` (fp32).
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");

/// `ort_u8` is ONNX Runtime's DynamicQuantizeLinear: per tensor, qmax 255, zero point
/// rne(clamp(-min / scale, 0, 255)), q = clamp(rne(x / scale) + zero, 0, 255), divisions where
/// the other modes multiply by 1 / scale, so that an ORT `quantize_dynamic` model can be run
/// with ORT's exact activation codes (rows layout only).
pub const Mode = enum(u32) { per_tensor = 0, per_token = 1, ort_u8 = 2 };

pub const Error = error{NonFinite};

const F8 = @Vector(8, f32);
const I8v = @Vector(8, i32);

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

pub inline fn rneVec(v: F8) I8v {
    const magic: F8 = @splat(12582912.0);
    return @intFromFloat((v + magic) - magic);
}

/// Codes of 8 values with per-lane parameters: clamp(rne(v * inv) + zero, 0, qmax).
pub inline fn laneCodes(v: F8, inv: F8, zero: I8v, qmax: i32) I8v {
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

pub const Range = struct { min: f32, max: f32, nan: bool };

/// min (<= 0), max (>= 0) and whether a NaN was seen, over x[0..count].
pub fn range(x: [*]const f32, count: usize) Range {
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

pub fn checked(r: Range, qmax: u32, mode: Mode) Error!Params {
    if (r.nan or !std.math.isFinite(r.min) or !std.math.isFinite(r.max)) return error.NonFinite;
    if (!std.math.isFinite(r.max - r.min)) return error.NonFinite;
    return if (mode == .ort_u8) Params.ort(r.min, r.max) else Params.of(r.min, r.max, qmax);
}

/// The scalar quantization of one value (tails and references).
pub fn quantizeOne(x: f32, p: Params, qmax: i32) u8 {
    const scaled = if (p.divide) x / p.scale else x * p.inv;
    return @intCast(std.math.clamp(rne(std.math.clamp(scaled, -1024.0, 1024.0)) + p.zero, 0, qmax));
}

pub const Ctx = struct {
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
pub fn tokenParams(ctx: *const Ctx, t: usize) ?Params {
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

/// What a quantization call takes besides its output.
pub const Input = struct {
    x: [*]const f32,
    m: usize,
    k: usize,
    mode: Mode,
    qmax: u32,
    scale: [*]f32,
    zero: [*]i32,
};

/// Where a quantization call writes: rows `q` [m][ldq], or the packed layout of `spmm_i8`.
pub const Destination = union(enum) {
    rows: struct { q: [*]u8, ldq: usize },
    packed_u8: [*]u8,
};

/// Runs `work` on the pool over `input` (the tensor's range first when the mode has one),
/// writing `destination`; the quantizers of both layouts go through here.
pub fn run(input: Input, destination: Destination, comptime work: fn (*const Ctx, u32, u32) void) Error!void {
    var ranges: [pool.max_threads]Range = undefined;
    var failed = std.atomic.Value(bool).init(false);
    var ctx = Ctx{
        .x = input.x,
        .m = input.m,
        .k = input.k,
        .mode = input.mode,
        .qmax = input.qmax,
        .tensor = undefined,
        .scale = input.scale,
        .zero = input.zero,
        .ranges = &ranges,
        .failed = &failed,
    };
    switch (destination) {
        .rows => |r| {
            ctx.rows = r.q;
            ctx.ldq = r.ldq;
        },
        .packed_u8 => |p| ctx.packed_u8 = p,
    }
    if (input.mode != .per_token) ctx.tensor = try tensorParams(&ctx);
    pool.parallel(Ctx, &ctx, work);
    if (failed.load(.monotonic)) return error.NonFinite;
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
    try run(.{ .x = x, .m = m, .k = k, .mode = mode, .qmax = qmax, .scale = scale, .zero = zero }, .{ .rows = .{ .q = q, .ldq = ldq } }, rowsWork);
}

pub fn tensorParams(ctx: *Ctx) Error!Params {
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

/// Largest of `count` values of type T (0 when empty): the bound check of caller-provided
/// activations (u8 rows; u16 lanes of the packed layout, where a high byte must be 0).
pub fn maxValue(comptime T: type, data: [*]align(1) const T, count: usize) T {
    const lanes = 32 / @sizeOf(T);
    var acc: @Vector(lanes, T) = @splat(0);
    var i: usize = 0;
    while (i + lanes <= count) : (i += lanes) acc = @max(acc, @as(@Vector(lanes, T), data[i..][0..lanes].*));
    var result = @reduce(.Max, acc);
    while (i < count) : (i += 1) result = @max(result, data[i]);
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

// ---- tests ----

pub fn refQuant(x: f32, p: Params, qmax: i32) u8 {
    return @intCast(std.math.clamp(rne(x * p.inv) + p.zero, 0, qmax));
}

test "maxValue finds the largest byte or u16 lane" {
    var data = [_]u8{0} ** 100;
    try std.testing.expectEqual(@as(u8, 0), maxValue(u8, &data, 100));
    data[99] = 128;
    data[40] = 7;
    try std.testing.expectEqual(@as(u8, 128), maxValue(u8, &data, 100));
    try std.testing.expectEqual(@as(u8, 7), maxValue(u8, &data, 99));
    // u16 lanes, little endian: a high byte counts 256 times, from an odd address too.
    data[99] = 0;
    data[41] = 1;
    try std.testing.expectEqual(@as(u16, 256 + 7), maxValue(u16, @ptrCast(&data), 50));
    try std.testing.expectEqual(@as(u16, 7 << 8), maxValue(u16, @ptrCast(data[1..]), 49));
}

test "rne rounds half to even" {
    try std.testing.expectEqual(@as(i32, 2), rne(2.5));
    try std.testing.expectEqual(@as(i32, 4), rne(3.5));
    try std.testing.expectEqual(@as(i32, -2), rne(-2.5));
    try std.testing.expectEqual(@as(i32, 1), rne(0.51));
    try std.testing.expectEqual(@as(i32, -127), rne(-127.2));
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

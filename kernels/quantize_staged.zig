//! Per-token quantization of a producing kernel's fp32 output into the packed layout of
//! `quantize_packed.zig`, from values the kernel staged in packed order and the ranges it kept
//! while writing them (`spmm_i8.forwardQuantized`): no second pass over token-major rows.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const quantize = @import("quantize.zig");
const int8 = @import("int8.zig");
const layout = @import("quantize_packed.zig");

const Error = quantize.Error;
const checked = quantize.checked;
const laneCodes = quantize.laneCodes;
const chunk_tokens = layout.chunk_tokens;
const packed_row_bytes = layout.packed_row_bytes;
const chunksOf = layout.chunksOf;
const packedRow = layout.packedRow;

const F8 = @Vector(8, f32);
const I8v = @Vector(8, i32);

/// Running per-token range of one 16-token chunk, lanes in natural token order, as a producing
/// kernel accumulates it over the values it writes (`spmm_i8.forwardQuantized`). `lo`/`hi` start
/// at 0 like `quantize.range`'s; `bad` accumulates v * 0, which turns NaN at a NaN or an infinity.
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
                codes[h] = laneCodes(v, inv[8 * h ..][0..8].*, zero[8 * h ..][0..8].*, int8.act_max);
            }
            const dst: *align(1) [chunk_tokens]u16 = @ptrCast(ctx.packed_x + row * packed_row_bytes);
            dst.* = packedRow(codes[0], codes[1]);
        }
    }
}

/// Quantizes per token to codes in [0, `int8.act_max`], into the packed layout, values staged in packed order
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
            const p = try checked(.{ .min = r.lo[j], .max = r.hi[j], .nan = bad }, int8.act_max, .per_token);
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

// ---- tests ----

const pack_f32 = @import("pack_f32.zig");

test "quantizeStaged gives quantizePacked's bytes from staged values and kept ranges" {
    const m = 37;
    const k = 29;
    var x: [m * k]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt((i * 7919) % 1000)) / 100.0 - 3.0;
    x[k + 3] = -9.5;
    for (0..k) |c| x[2 * k + c] = 0.25; // a token with no negative value
    var want: [layout.packedLen(m, k)]u8 = undefined;
    var want_scale: [m]f32 = undefined;
    var want_zero: [m]i32 = undefined;
    try layout.quantizePacked(&x, m, k, .per_token, int8.act_max, &want, &want_scale, &want_zero);

    const chunks = comptime chunksOf(m);
    var staged: [pack_f32.packedF32Len(m, k)]f32 = undefined;
    pack_f32.packF32(&x, m, k, &staged);
    var ranges: [chunks]ChunkRange = @splat(ChunkRange.empty);
    for (0..chunks) |chunk| for (0..k) |c| {
        ranges[chunk].add(staged[(chunk * k + c) * chunk_tokens ..][0..chunk_tokens].*);
    };
    // Padding lanes may hold anything the producer computed; they must still give 0.
    for (0..k) |c| staged[((chunks - 1) * k + c) * chunk_tokens + chunk_tokens - 1] = std.math.nan(f32);
    var got: [layout.packedLen(m, k)]u8 = undefined;
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

//! The int8 kernels' shared epilogue, after each kernel has dequantized and activated a row of
//! 16 channels of one token: add the residual, then store fp32 or requantize to u8; or store
//! the exact s32 sums. `gemm_i8` and `spmm_i8` write their outputs through these functions
//! only, so the two produce the same bits from the same fp32 values.
const std = @import("std");
const assert = std.debug.assert;
const int8 = @import("int8.zig");

/// Channels per stored row (gemm_i8's panel width, spmm_i8's tile width).
pub const lanes: usize = 16;
pub const F16 = @Vector(lanes, f32);
const I16 = @Vector(lanes, i32);

/// Where an epilogue writes: the token-major [m, n] output, the residual, the requantization.
pub const Target = struct {
    y: *anyopaque,
    residual: ?[*]const f32,
    requant: int8.Requant,
};

/// `count` (at most `lanes`) fp32 values from `p`, zeros after them.
pub inline fn loadRow(p: [*]const f32, count: usize) F16 {
    assert(count <= lanes);
    if (count == lanes) return p[0..lanes].*;
    var v: F16 = @splat(0);
    for (0..count) |c| v[c] = p[c];
    return v;
}

/// The first `count` (at most `lanes`) lanes of `v` to `p`.
pub inline fn storeRow(comptime T: type, p: [*]T, v: @Vector(lanes, T), count: usize) void {
    assert(count <= lanes);
    if (count == lanes) {
        p[0..lanes].* = v;
    } else {
        for (0..count) |c| p[c] = v[c];
    }
}

/// clamp(rne(v / scale) + zero, 0, qmax) per lane.
pub fn requantize(v: F16, rq: int8.Requant) @Vector(lanes, u8) {
    const magic: F16 = @splat(12582912.0);
    const scaled = v * @as(F16, @splat(rq.inv_scale));
    // Clamp before rounding so that huge values stay within the magic-number range.
    const bounded = std.math.clamp(scaled, @as(F16, @splat(-1.0e6)), @as(F16, @splat(1.0e6)));
    const r: I16 = @intFromFloat((bounded + magic) - magic);
    const q = std.math.clamp(r + @as(I16, @splat(rq.zero)), @as(I16, @splat(0)), @as(I16, @splat(rq.qmax)));
    return @intCast(q);
}

/// Writes `count` channels at element `at` of an fp32 or u8 output: `activated` (the row
/// after bias and activation) plus the residual, requantized for a u8 output.
pub inline fn storeActivated(comptime out: int8.Output, target: Target, at: usize, activated: F16, count: usize) void {
    comptime assert(out != .s32);
    var v = activated;
    if (target.residual) |res| v += loadRow(res + at, count);
    if (out == .f32) {
        storeRow(f32, @as([*]f32, @ptrCast(@alignCast(target.y))) + at, v, count);
    } else {
        storeRow(u8, @as([*]u8, @ptrCast(target.y)) + at, requantize(v, target.requant), count);
    }
}

/// Writes `count` exact s32 sums at element `at` of an s32 output.
pub inline fn storeExact(target: Target, at: usize, exact: I16, count: usize) void {
    storeRow(i32, @as([*]i32, @ptrCast(@alignCast(target.y))) + at, exact, count);
}

test "requantize rounds half to even, clamps, and adds the zero point" {
    const rq = int8.Requant{ .inv_scale = 2, .zero = 10, .qmax = 127 };
    var v: F16 = @splat(0);
    v[0] = 0.25; // 0.5 -> 0 (even) + 10
    v[1] = 0.75; // 1.5 -> 2 + 10
    v[2] = 1.0e9; // clamped to qmax
    v[3] = -1.0e9; // clamped to 0
    const q = requantize(v, rq);
    try std.testing.expectEqual(@as(u8, 10), q[0]);
    try std.testing.expectEqual(@as(u8, 12), q[1]);
    try std.testing.expectEqual(@as(u8, 127), q[2]);
    try std.testing.expectEqual(@as(u8, 0), q[3]);
    try std.testing.expectEqual(@as(u8, 10), q[4]);
}

test "storeActivated adds the residual and writes only count lanes" {
    var y = [_]f32{-1} ** 20;
    var residual = [_]f32{0.5} ** 20;
    const target = Target{ .y = &y, .residual = &residual, .requant = .{} };
    storeActivated(.f32, target, 2, @splat(1), 3);
    try std.testing.expectEqualSlices(f32, &.{ -1, -1, 1.5, 1.5, 1.5, -1 }, y[0..6]);
}

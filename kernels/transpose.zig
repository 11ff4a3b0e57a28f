//! Register transposes shared by the kernels (sparse fp32 activations, attention's K^T, the
//! 16 x 16 output tiles of `spmm_i8` and `spmm_f32` on AVX-512).
const std = @import("std");

const F8 = @Vector(8, f32);

/// out[c][r] = rows[r][c] for an 8 x 8 f32 block, in 24 in-lane shuffles (no lane crossing
/// before the last stage, which AVX2 does as one 128-bit permute per output).
pub inline fn f32x8(rows: [8]F8) [8]F8 {
    const lo = @Vector(8, i32){ 0, -1, 1, -2, 4, -5, 5, -6 };
    const hi = @Vector(8, i32){ 2, -3, 3, -4, 6, -7, 7, -8 };
    const lo64 = @Vector(8, i32){ 0, 1, -1, -2, 4, 5, -5, -6 };
    const hi64 = @Vector(8, i32){ 2, 3, -3, -4, 6, 7, -7, -8 };
    const lo128 = @Vector(8, i32){ 0, 1, 2, 3, -1, -2, -3, -4 };
    const hi128 = @Vector(8, i32){ 4, 5, 6, 7, -5, -6, -7, -8 };
    var t: [8]F8 = undefined;
    inline for (0..4) |i| {
        t[2 * i] = @shuffle(f32, rows[2 * i], rows[2 * i + 1], lo);
        t[2 * i + 1] = @shuffle(f32, rows[2 * i], rows[2 * i + 1], hi);
    }
    // t[0]: r0/r1 columns 0,1 | 4,5; t[1]: columns 2,3 | 6,7; t[2], t[3]: r2/r3 likewise.
    var u: [8]F8 = undefined;
    inline for (0..2) |h| {
        const a = 4 * h;
        u[a + 0] = @shuffle(f32, t[a + 0], t[a + 2], lo64); // column 0 | 4 of rows a..a+3
        u[a + 1] = @shuffle(f32, t[a + 0], t[a + 2], hi64); // column 1 | 5
        u[a + 2] = @shuffle(f32, t[a + 1], t[a + 3], lo64); // column 2 | 6
        u[a + 3] = @shuffle(f32, t[a + 1], t[a + 3], hi64); // column 3 | 7
    }
    var out: [8]F8 = undefined;
    inline for (0..4) |c| {
        out[c] = @shuffle(f32, u[c], u[4 + c], lo128);
        out[c + 4] = @shuffle(f32, u[c], u[4 + c], hi128);
    }
    return out;
}

/// Shuffle masks of `lanes4` for vectors of `n` lanes (n a multiple of 4).
fn lane4Masks(comptime n: usize) [4]@Vector(n, i32) {
    var m: [4][n]i32 = undefined;
    for (0..n / 4) |g| for (0..2) |i| {
        const e: i32 = @intCast(4 * g + i); // element i of the group's low pair
        const at = 4 * g + 2 * i;
        m[0][at] = e; // lo: a[e], b[e], a[e + 1], b[e + 1]
        m[0][at + 1] = ~e;
        m[1][at] = e + 2; // hi: a[e + 2], b[e + 2], ...
        m[1][at + 1] = ~(e + 2);
        m[2][4 * g + i] = e; // lo64: a[e], a[e + 1], b[e], b[e + 1]
        m[2][4 * g + 2 + i] = ~e;
        m[3][4 * g + i] = e + 2; // hi64: a[e + 2], a[e + 3], b[e + 2], b[e + 3]
        m[3][4 * g + 2 + i] = ~(e + 2);
    };
    return .{ m[0], m[1], m[2], m[3] };
}

/// In-lane 4 x 4 transposes of four rows: result[j] holds, in each group of four lanes g, the
/// four rows' values at lane 4g + j.
pub inline fn lanes4(comptime T: type, comptime n: usize, v: [4]@Vector(n, T)) [4]@Vector(n, T) {
    const masks = comptime lane4Masks(n);
    const t01lo = @shuffle(T, v[0], v[1], masks[0]);
    const t01hi = @shuffle(T, v[0], v[1], masks[1]);
    const t23lo = @shuffle(T, v[2], v[3], masks[0]);
    const t23hi = @shuffle(T, v[2], v[3], masks[1]);
    return .{
        @shuffle(T, t01lo, t23lo, masks[2]),
        @shuffle(T, t01lo, t23lo, masks[3]),
        @shuffle(T, t01hi, t23hi, masks[2]),
        @shuffle(T, t01hi, t23hi, masks[3]),
    };
}

/// 16 x 16 transpose in registers: result[j][c] = v[c][j] (AVX-512's 32 zmm hold it; any 32-bit T).
pub inline fn square16(comptime T: type, v: [16]@Vector(16, T)) [16]@Vector(16, T) {
    var c: [4][4]@Vector(16, T) = undefined;
    inline for (0..4) |g| c[g] = lanes4(T, 16, v[4 * g ..][0..4].*);
    // Token 4L + j takes 128-bit lane L of c[0][j], c[1][j], c[2][j], c[3][j]: a 4 x 4
    // transpose of lanes.
    const lanes01 = @Vector(16, i32){ 0, 1, 2, 3, -1, -2, -3, -4, 4, 5, 6, 7, -5, -6, -7, -8 };
    const lanes23 = @Vector(16, i32){ 8, 9, 10, 11, -9, -10, -11, -12, 12, 13, 14, 15, -13, -14, -15, -16 };
    const low = @Vector(16, i32){ 0, 1, 2, 3, 4, 5, 6, 7, -1, -2, -3, -4, -5, -6, -7, -8 };
    const high = @Vector(16, i32){ 8, 9, 10, 11, 12, 13, 14, 15, -9, -10, -11, -12, -13, -14, -15, -16 };
    var result: [16]@Vector(16, T) = undefined;
    inline for (0..4) |j| {
        const x01lo = @shuffle(T, c[0][j], c[1][j], lanes01); // lanes: c0 L0, c1 L0, c0 L1, c1 L1
        const x01hi = @shuffle(T, c[0][j], c[1][j], lanes23); // c0 L2, c1 L2, c0 L3, c1 L3
        const x23lo = @shuffle(T, c[2][j], c[3][j], lanes01);
        const x23hi = @shuffle(T, c[2][j], c[3][j], lanes23);
        result[j] = @shuffle(T, x01lo, x23lo, low);
        result[4 + j] = @shuffle(T, x01lo, x23lo, high);
        result[8 + j] = @shuffle(T, x01hi, x23hi, low);
        result[12 + j] = @shuffle(T, x01hi, x23hi, high);
    }
    return result;
}

test "f32x8 transposes" {
    var rows: [8]F8 = undefined;
    for (0..8) |r| for (0..8) |c| {
        rows[r][c] = @floatFromInt(r * 8 + c);
    };
    const t = f32x8(rows);
    for (0..8) |r| for (0..8) |c| try std.testing.expectEqual(@as(f32, @floatFromInt(c * 8 + r)), t[r][c]);
}

test "square16 transposes 16 x 16 lanes" {
    var rows: [16]@Vector(16, i32) = undefined;
    for (0..16) |r| for (0..16) |c| {
        rows[r][c] = @intCast(r * 16 + c);
    };
    const t = square16(i32, rows);
    for (0..16) |r| for (0..16) |c| try std.testing.expectEqual(@as(i32, @intCast(c * 16 + r)), t[r][c]);
}

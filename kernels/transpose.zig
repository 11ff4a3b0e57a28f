//! Register transposes shared by the fp32 kernels (sparse fp32 activations, attention's K^T).
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

test "f32x8 transposes" {
    var rows: [8]F8 = undefined;
    for (0..8) |r| for (0..8) |c| {
        rows[r][c] = @floatFromInt(r * 8 + c);
    };
    const t = f32x8(rows);
    for (0..8) |r| for (0..8) |c| try std.testing.expectEqual(@as(f32, @floatFromInt(c * 8 + r)), t[r][c]);
}

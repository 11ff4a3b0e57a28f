//! The u8 x s8 dot-product step shared by the int8 kernels, chosen at compile time per ISA:
//!   avx512vnni  `vpdpbusd` (exact: four u8 x s8 products summed into each s32 lane)
//!   avx2        `vpmaddubsw` + `vpmaddwd` with ones + `vpaddd`
//!   baseline    widened i32 arithmetic (SSE2)
//!
//! Saturation rule. `vpmaddubsw` adds two u8 x s8 products in *saturating* int16. On AVX2 and the
//! scalar path activations are therefore quantized to 7 bits (u7, [0, 127]), so a pair is at
//! most 2 * 127 * 128 = 32512 in magnitude and never saturates, whatever the s8 weight (-128
//! included). `vpdpbusd` accumulates each u8 x s8 product straight into s32, so the VNNI path
//! takes full 8-bit activations ([0, 255]): `act_max` is the bound of the library built. Every
//! path returns the exact s32 sums of the codes it is given; VNNI is given finer codes (about
//! half the product error: docs/BENCHMARKS.md). Weights keep their full 8 bits everywhere.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;

const has = std.Target.x86.featureSetHas;
/// Code path compiled into this library.
pub const Path = enum { vnni, avx2, generic };
pub const path: Path = blk: {
    // The LLVM intrinsics below exist only with the LLVM backend (Debug builds may use Zig's own).
    if (builtin.cpu.arch != .x86_64 or builtin.zig_backend != .stage2_llvm) break :blk .generic;
    if (has(builtin.cpu.features, .avx512vnni) and has(builtin.cpu.features, .avx512vl)) break :blk .vnni;
    if (has(builtin.cpu.features, .avx2)) break :blk .avx2;
    break :blk .generic;
};

/// The largest activation code the kernels take: 255 with VNNI, else 127 (see the file comment).
pub const act_max: u8 = if (path == .vnni) 255 else 127;

/// 32 unsigned activation bytes: eight groups of four consecutive K values.
pub const U8x32 = @Vector(32, u8);
/// 32 signed weight bytes in the same grouping.
pub const I8x32 = @Vector(32, i8);
/// Eight s32 accumulators.
pub const I32x8 = @Vector(8, i32);

extern fn @"llvm.x86.avx2.pmadd.ub.sw"(a: U8x32, b: I8x32) @Vector(16, i16);
extern fn @"llvm.x86.avx2.pmadd.wd"(a: @Vector(16, i16), b: @Vector(16, i16)) I32x8;
extern fn @"llvm.x86.avx512.vpdpbusd.256"(acc: I32x8, a: I32x8, b: I32x8) I32x8;
extern fn @"llvm.x86.avx512.vpdpbusd.512"(acc: I32x16, a: I32x16, b: I32x16) I32x16;

/// Sixteen s32 accumulators (one zmm).
pub const I32x16 = @Vector(16, i32);

/// acc[i] + sum over j < 4 of a[4i + j] * w[4i + j], exact for a <= `act_max`.
pub inline fn dot4(acc: I32x8, a: U8x32, w: I8x32) I32x8 {
    switch (path) {
        .vnni => return @"llvm.x86.avx512.vpdpbusd.256"(acc, @bitCast(a), @bitCast(w)),
        .avx2 => {
            const pairs = @"llvm.x86.avx2.pmadd.ub.sw"(a, w);
            const ones: @Vector(16, i16) = @splat(1);
            return acc +% @"llvm.x86.avx2.pmadd.wd"(pairs, ones);
        },
        .generic => {
            const a32: @Vector(32, i32) = a;
            const w32: @Vector(32, i32) = w;
            const p = a32 * w32;
            const Mask = @Vector(8, i32);
            const m0: Mask = .{ 0, 4, 8, 12, 16, 20, 24, 28 };
            const s0 = @shuffle(i32, p, undefined, m0);
            const s1 = @shuffle(i32, p, undefined, m0 + @as(Mask, @splat(1)));
            const s2 = @shuffle(i32, p, undefined, m0 + @as(Mask, @splat(2)));
            const s3 = @shuffle(i32, p, undefined, m0 + @as(Mask, @splat(3)));
            return acc +% ((s0 + s1) + (s2 + s3));
        },
    }
}

/// `dot4` on 16 lanes: acc[i] + sum over j < 4 of the bytes 4i + j of `a` (u8) and `w` (s8).
/// One zmm `vpdpbusd` with VNNI, two `dot4` halves elsewhere.
pub inline fn dot4x16(acc: I32x16, a: I32x16, w: I32x16) I32x16 {
    if (path == .vnni) return @"llvm.x86.avx512.vpdpbusd.512"(acc, a, w);
    const acc2: [2]I32x8 = @bitCast(acc);
    const a2: [2]U8x32 = @bitCast(a);
    const w2: [2]I8x32 = @bitCast(w);
    return @bitCast([2]I32x8{ dot4(acc2[0], a2[0], w2[0]), dot4(acc2[1], a2[1], w2[1]) });
}

/// The same four bytes in every dword lane (`vpbroadcastd`).
pub inline fn broadcast4(comptime T: type, p: [*]const T) @Vector(32, T) {
    const word = std.mem.readInt(u32, @ptrCast(p), .little);
    const v: @Vector(8, u32) = @splat(word);
    return @bitCast(v);
}

/// What an int8 kernel writes.
pub const Output = enum(u32) {
    /// fp32 after the whole epilogue.
    f32 = 0,
    /// The fp32 result requantized: clamp(rne(y / out_scale) + out_zero, 0, out_qmax).
    u8 = 1,
    /// The exact s32 sums with the activation zero point removed: acc - zero[t] * wsum[c].
    s32 = 2,
};

/// Static quantization of a u8 output.
pub const Requant = struct {
    inv_scale: f32 = 1,
    zero: i32 = 0,
    qmax: i32 = 255,
};

test "dot4 is exact at the extreme values" {
    const cases = [_]struct { a: u8, w: i8 }{
        .{ .a = act_max, .w = 127 },
        .{ .a = act_max, .w = -128 },
        .{ .a = 127, .w = 127 },
        .{ .a = 127, .w = -128 },
        .{ .a = 127, .w = -127 },
        .{ .a = 0, .w = -128 },
        .{ .a = 1, .w = 127 },
    };
    for (cases) |c| {
        const a: U8x32 = @splat(c.a);
        const w: I8x32 = @splat(c.w);
        const got = dot4(@splat(5), a, w);
        const want: i32 = 5 + 4 * @as(i32, c.a) * @as(i32, c.w);
        for (0..8) |i| try std.testing.expectEqual(want, got[i]);
    }
}

test "dot4 sums each group of four" {
    var a: [32]u8 = undefined;
    var w: [32]i8 = undefined;
    for (0..32) |i| {
        a[i] = @intCast((i * 37) % (@as(usize, act_max) + 1));
        w[i] = @intCast(@as(i32, @intCast((i * 53) % 256)) - 128);
    }
    const got = dot4(@splat(0), a, w);
    for (0..8) |g| {
        var want: i32 = 0;
        for (0..4) |j| want += @as(i32, a[4 * g + j]) * @as(i32, w[4 * g + j]);
        try std.testing.expectEqual(want, got[g]);
    }
}

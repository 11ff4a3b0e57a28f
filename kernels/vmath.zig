//! Vectorised elementwise math shared by the kernels: exp, erf, tanh and the two GELUs.
//! `@exp` on vectors lowers to one libm call per lane, which costs more than the GEMM it
//! follows, so these are polynomial approximations with fp32-level error (checked in tests
//! against f64 `std.math`).
const std = @import("std");

/// exp(x) for every lane; relative error about 2 ulp on [-87, 88]; 0 below, about 3.3e38 above.
pub inline fn exp(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const I = @Vector(n, i32);
    const log2e: V = @splat(1.44269504088896341);
    const ln2_hi: V = @splat(0.693359375);
    const ln2_lo: V = @splat(-2.12194440e-4);
    const clamped = @min(@max(x, @as(V, @splat(-87.3))), @as(V, @splat(88.7)));
    // n = round(x / ln2); r = x - n ln2 in [-ln2/2, ln2/2].
    const k = @round(clamped * log2e);
    const r = (clamped - k * ln2_hi) - k * ln2_lo;
    // e^r by a degree-6 polynomial (Horner), coefficients ~1/i!.
    var p: V = @splat(1.9875691500e-4);
    p = @mulAdd(V, p, r, @splat(1.3981999507e-3));
    p = @mulAdd(V, p, r, @splat(8.3334519073e-3));
    p = @mulAdd(V, p, r, @splat(4.1665795894e-2));
    p = @mulAdd(V, p, r, @splat(1.6666665459e-1));
    p = @mulAdd(V, p, r, @splat(5.0000001201e-1));
    p = @mulAdd(V, p, r * r, r + @as(V, @splat(1.0)));
    // Scale by 2^k through the exponent bits; k is in [-126, 128] after the clamp.
    const ki: I = @intFromFloat(k);
    const k_lo = ki >> @splat(1);
    const k_hi = ki - k_lo;
    const s_lo: V = @bitCast((k_lo + @as(I, @splat(127))) << @splat(23));
    const s_hi: V = @bitCast((k_hi + @as(I, @splat(127))) << @splat(23));
    const result = p * s_lo * s_hi;
    const underflow = x < @as(V, @splat(-87.3));
    return @select(f32, underflow, @as(V, @splat(0.0)), result);
}

/// erf(x) for every lane, absolute error below 2e-7 (Abramowitz-Stegun 7.1.26 refined with a
/// small-argument Taylor branch where the relative error of 7.1.26 is worst).
pub inline fn erf(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const one: V = @splat(1.0);
    const ax = @abs(x);
    // Large branch: 1 - poly(t) exp(-x^2), t = 1 / (1 + p x).
    const t = one / @mulAdd(V, @as(V, @splat(0.3275911)), ax, one);
    var poly: V = @splat(1.061405429);
    poly = @mulAdd(V, poly, t, @splat(-1.453152027));
    poly = @mulAdd(V, poly, t, @splat(1.421413741));
    poly = @mulAdd(V, poly, t, @splat(-0.284496736));
    poly = @mulAdd(V, poly, t, @splat(0.254829592));
    const large = one - poly * t * exp(n, -ax * ax);
    // Small branch (|x| < 0.5): Maclaurin series 2/sqrt(pi) sum (-1)^i x^(2i+1) / (i! (2i+1)).
    const x2 = ax * ax;
    var s: V = @splat(1.0 / 9360.0);
    s = @mulAdd(V, s, x2, @splat(-1.0 / 1320.0));
    s = @mulAdd(V, s, x2, @splat(1.0 / 216.0));
    s = @mulAdd(V, s, x2, @splat(-1.0 / 42.0));
    s = @mulAdd(V, s, x2, @splat(1.0 / 10.0));
    s = @mulAdd(V, s, x2, @splat(-1.0 / 3.0));
    s = @mulAdd(V, s, x2, one);
    const small = s * ax * @as(V, @splat(1.1283791670955126));
    const magnitude = @select(f32, ax < @as(V, @splat(0.5)), small, large);
    return @select(f32, x < @as(V, @splat(0.0)), -magnitude, magnitude);
}

/// tanh(x) for every lane via exp: 1 - 2 / (exp(2x) + 1); odd symmetry keeps small x accurate.
pub inline fn tanh(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const one: V = @splat(1.0);
    const ax = @abs(x);
    const e = exp(n, ax * @as(V, @splat(2.0)));
    const large = one - @as(V, @splat(2.0)) / (e + one);
    // Below 0.02 use x - x^3/3 where the subtraction above loses digits.
    const small = ax - ax * ax * ax * @as(V, @splat(1.0 / 3.0));
    const magnitude = @select(f32, ax < @as(V, @splat(0.02)), small, large);
    return @select(f32, x < @as(V, @splat(0.0)), -magnitude, magnitude);
}

/// GELU with the exact erf form used by BERT: 0.5 x (1 + erf(x / sqrt(2))).
pub inline fn geluErf(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const e = erf(n, x * @as(V, @splat(0.70710678118654752)));
    return @as(V, @splat(0.5)) * x * (@as(V, @splat(1.0)) + e);
}

/// GELU with the tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
pub inline fn geluTanh(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const inner = @as(V, @splat(0.7978845608028654)) *
        @mulAdd(V, @as(V, @splat(0.044715)) * x * x, x, x);
    return @as(V, @splat(0.5)) * x * (@as(V, @splat(1.0)) + tanh(n, inner));
}

/// Activation applied in kernel epilogues; values match the `activation` codes of the C ABI.
pub const Activation = enum(u32) {
    none = 0,
    gelu_erf = 1,
    gelu_tanh = 2,

    pub fn apply(self: Activation, comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
        return switch (self) {
            .none => x,
            .gelu_erf => geluErf(n, x),
            .gelu_tanh => geluTanh(n, x),
        };
    }
};

fn erfReference(x: f64) f64 {
    // Maclaurin series below 3 (f64 cancellation stays under 1e-12 there); above, the
    // asymptotic expansion of erfc, whose truncation error at 3 is below 1e-9.
    const ax = @abs(x);
    if (ax >= 3.0) {
        const inv2 = 1.0 / (ax * ax);
        const series = 1.0 - 0.5 * inv2 + 0.75 * inv2 * inv2 - 1.875 * inv2 * inv2 * inv2;
        const erfc = std.math.exp(-ax * ax) / (ax * std.math.sqrt(std.math.pi)) * series;
        return std.math.sign(x) * (1.0 - erfc);
    }
    var term = x;
    var sum = x;
    var i: usize = 1;
    while (i < 200) : (i += 1) {
        const fi: f64 = @floatFromInt(i);
        term *= -x * x / fi;
        const add = term / (2.0 * fi + 1.0);
        sum += add;
        if (@abs(add) < 1e-17) break;
    }
    return sum * 2.0 / std.math.sqrt(std.math.pi);
}

test "exp, erf and tanh are within fp32 tolerance of f64" {
    var x: f32 = -10.0;
    while (x < 10.0) : (x += 0.0137) {
        const v: @Vector(8, f32) = @splat(x);
        const e = exp(8, v)[0];
        const e_ref = std.math.exp(@as(f64, x));
        try std.testing.expect(@abs(e - e_ref) <= 4e-7 * e_ref);
        const erf_error = @abs(erf(8, v)[0] - erfReference(x));
        if (erf_error > 3e-7) std.debug.print("erf({d}) error {e}\n", .{ x, erf_error });
        try std.testing.expect(erf_error <= 3e-7);
        try std.testing.expect(@abs(tanh(8, v)[0] - std.math.tanh(@as(f64, x))) <= 3e-7);
    }
    const big: @Vector(4, f32) = .{ -200.0, -88.0, 100.0, 0.0 };
    const e = exp(4, big);
    try std.testing.expectEqual(@as(f32, 0.0), e[0]);
    try std.testing.expect(e[2] > 1e38);
    try std.testing.expectEqual(@as(f32, 1.0), e[3]);
}

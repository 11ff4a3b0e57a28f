//! Vectorised elementwise math shared by the kernels: exp, erf, tanh and the two GELUs.
//! `@exp` on vectors lowers to one libm call per lane, which costs more than the GEMM it
//! follows, so these are polynomial approximations with fp32-level error (checked in tests
//! against f64 `std.math`).
const std = @import("std");

/// exp(x) for every lane; relative error about 2 ulp on [-87, 88]; 0 below -87.3, and
/// inputs above 88 saturate at exp(88) (about 1.65e38).
pub inline fn exp(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const I = @Vector(n, i32);
    const clamped = @min(@max(x, @as(V, @splat(-87.3))), @as(V, @splat(88.0)));
    // k = round(x / ln2) by the magic-number trick (1.5 * 2^23: the sum's low mantissa bits
    // hold k, rounded to nearest even); r = x - k ln2 in [-ln2/2, ln2/2].
    const magic: V = @splat(12582912.0);
    const shifted = @mulAdd(V, clamped, @splat(1.44269504088896341), magic);
    const k = shifted - magic;
    const r = @mulAdd(V, k, @splat(2.12194440e-4), @mulAdd(V, k, @splat(-0.693359375), clamped));
    // e^r by a degree-6 polynomial (Horner), coefficients ~1/i!.
    var p: V = @splat(1.9875691500e-4);
    p = @mulAdd(V, p, r, @splat(1.3981999507e-3));
    p = @mulAdd(V, p, r, @splat(8.3334519073e-3));
    p = @mulAdd(V, p, r, @splat(4.1665795894e-2));
    p = @mulAdd(V, p, r, @splat(1.6666665459e-1));
    p = @mulAdd(V, p, r, @splat(5.0000001201e-1));
    p = @mulAdd(V, p, r * r, r + @as(V, @splat(1.0)));
    // Scale by 2^k through the exponent bits; k is in [-126, 127] after the clamp.
    const ki = @as(I, @bitCast(shifted)) - @as(I, @bitCast(magic));
    const scale: V = @bitCast((ki + @as(I, @splat(127))) << @splat(23));
    const underflow = x < @as(V, @splat(-87.3));
    return @select(f32, underflow, @as(V, @splat(0.0)), p * scale);
}

/// erf(x) for every lane, absolute error below 2e-7: x P(x^2) / Q(x^2), a (5, 5) rational
/// fitted (minimax, our own fit) to erf on [0, 3.925]; beyond that erf is 1 in fp32. One
/// division and ten FMAs, no exp: it runs in every GELU epilogue.
pub inline fn erf(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const c = std.math.clamp(x, @as(V, @splat(-3.925)), @as(V, @splat(3.925)));
    const s = c * c;
    var p: V = @splat(2.0309950165831037e-06);
    p = @mulAdd(V, p, s, @splat(2.8749234894095976e-04));
    p = @mulAdd(V, p, s, @splat(3.876078803857523e-03));
    p = @mulAdd(V, p, s, @splat(5.3083602570736854e-02));
    p = @mulAdd(V, p, s, @splat(1.9296599313058457e-01));
    p = @mulAdd(V, p, s, @splat(1.1283790198885975));
    var q: V = @splat(3.803276022844998e-05);
    q = @mulAdd(V, q, s, @splat(1.1897006616351392e-03));
    q = @mulAdd(V, q, s, @splat(1.518785285516546e-02));
    q = @mulAdd(V, q, s, @splat(1.1516485477945759e-01));
    q = @mulAdd(V, q, s, @splat(5.043432972709475e-01));
    q = @mulAdd(V, q, s, @splat(1.0));
    return c * p / q;
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

/// GELU (erf form) with a cheaper erf: absolute error below 2e-5 in erf, so below 6e-5 in GELU
/// for every x (at most |x| / 2 times erf's inside the clamp at |x| = 5.55). For
/// the int8 kernels' epilogues, whose outputs carry the 7-bit activation quantization error of
/// the layer (about 1e-2 relative) anyway: a (3, 3) rational in x^2 (our own least-squares fit
/// of erf(x / sqrt(2)), with the 1 / sqrt(2) folded into the coefficients) is 7 multiply-adds
/// where `geluErf` takes 12, which is a third of the epilogue of the intermediate layer.
pub inline fn geluErfInt8(comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
    const V = @Vector(n, f32);
    const c = std.math.clamp(x, @as(V, @splat(-5.5507882)), @as(V, @splat(5.5507882)));
    const s = c * c;
    var p: V = @splat(5.4926662618955225e-05);
    p = @mulAdd(V, p, s, @splat(0.007316048936176841));
    p = @mulAdd(V, p, s, @splat(0.0606577420950675));
    p = @mulAdd(V, p, s, @splat(0.7978073664938048));
    var q: V = @splat(0.0010341702601300148);
    q = @mulAdd(V, q, s, @splat(0.024810595757171518));
    q = @mulAdd(V, q, s, @splat(0.2423966246551402));
    q = @mulAdd(V, q, s, @splat(1.0));
    const e = c * p / q; // erf(x / sqrt(2))
    // GELU of the clamped input, plus what the clamp cut off above (GELU(x) = x there; below,
    // GELU is within 1e-7 of 0), so the error stays bounded for any x instead of growing as
    // x times erf's error at the clamp.
    const half = c * @as(V, @splat(0.5));
    return @mulAdd(V, half, e, half) + @max(x - c, @as(V, @splat(0.0)));
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

    /// `apply` for the epilogues of the 7-bit int8 kernels: the erf GELU is `geluErfInt8`.
    pub fn applyInt8(self: Activation, comptime n: usize, x: @Vector(n, f32)) @Vector(n, f32) {
        return if (self == .gelu_erf) geluErfInt8(n, x) else self.apply(n, x);
    }
};

/// erf in f64 for tests (this file's and the int8 kernels').
pub fn erfReference(x: f64) f64 {
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
    // Near zero GELU's erf term is tiny; the rational keeps its relative error small there.
    var tiny: f32 = 1e-6;
    while (tiny < 0.5) : (tiny *= 1.37) {
        const erf_tiny = erf(8, @as(@Vector(8, f32), @splat(tiny)))[0];
        try std.testing.expect(@abs(erf_tiny - erfReference(tiny)) <= 1e-6 * erfReference(tiny));
    }
    // The int8 epilogues' GELU: within 6e-5 of the exact one everywhere.
    x = -12.0;
    while (x < 12.0) : (x += 0.0071) {
        const v: @Vector(8, f32) = @splat(x);
        const xd: f64 = x;
        const exact = 0.5 * xd * (1.0 + erfReference(xd / std.math.sqrt2));
        try std.testing.expect(@abs(geluErfInt8(8, v)[0] - exact) <= 6e-5);
    }
    // Far tails: 0 below, x above (within fp32 rounding of x).
    for ([_]f32{ -1e4, -300, -40, 40, 300, 1e4 }) |t| {
        const g = geluErfInt8(8, @as(@Vector(8, f32), @splat(t)))[0];
        try std.testing.expect(@abs(g - @max(t, 0)) <= 6e-5 + 1e-7 * @abs(t));
    }
    const big: @Vector(4, f32) = .{ -200.0, -88.0, 100.0, 0.0 };
    const e = exp(4, big);
    try std.testing.expectEqual(@as(f32, 0.0), e[0]);
    try std.testing.expect(e[2] > 1e38);
    try std.testing.expectEqual(@as(f32, 1.0), e[3]);
}

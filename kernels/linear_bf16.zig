//! Dense linear layer with bf16 weights: Y = act(X W^T + b) + R, products in bf16, sums in fp32.
//! X is [m, k] fp32 (converted to bf16 per call), W is [n, k] fp32 (converted to bf16 once, at
//! packing), Y and R are [m, n] fp32.
//!
//! Why: AVX512_BF16's `vdpbf16ps` does two multiply-adds per fp32 lane, twice the fp32 FMA rate,
//! and bf16 weights take half the memory. Layout: W is packed into panels of `panel_width`
//! output columns; each panel element is one dword holding the bf16 pair (k = 2p, 2p + 1) of one
//! column, so one 64-byte load feeds 16 columns' `vdpbf16ps` while one row's pair is broadcast.
//!
//! Numerics (the reference): for each pair p in ascending order, acc += x[2p+1] * w[2p+1], then
//! acc += x[2p] * w[2p], each rounded once to fp32 (a product of two bf16 values is exact in
//! fp32, so each step is a fused multiply-add). That is the order Intel's definition of
//! `vdpbf16ps` gives, so the hardware path (AVX-512 builds on a CPU with AVX512_BF16) and the
//! emulated path (every other build and CPU: the pair widened to two fp32 values and two FMAs)
//! give the same bits; the ISA variant test compares them. The conversion to bf16 rounds to
//! nearest even and flushes subnormals to zero, as `vdpbf16ps` treats subnormal inputs.
const std = @import("std");
const cpu = @import("cpu.zig");
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");
const linear_f32 = @import("linear_f32.zig");

pub const lanes = linear_f32.lanes;
const V = @Vector(lanes, f32);
const U = @Vector(lanes, u32);
/// Output columns per packed panel: two vectors of fp32 accumulators.
pub const panel_width: usize = 2 * lanes;
/// Rows of X per micro-tile. AVX-512: 24 accumulators, 4 widened weights and a broadcast fit
/// the 32 registers; 16-register builds keep 4 rows so the widened weights do not spill.
const tile_rows: usize = if (lanes == 16) 12 else 4;

/// Whether this build can hold the `vdpbf16ps` path (AVX-512 registers); the CPU is asked at
/// run time, since AVX-512 VNNI CPUs without AVX512_BF16 (Ice Lake, Cascade Lake) load it too.
const hardware_compiled = lanes == 16; // an x86-64-v4 build: the kernels are x86_64 only
/// 0: not asked yet, 1: emulate, 2: `vdpbf16ps`.
var hardware_state = std.atomic.Value(u8).init(0);

/// Whether `forward` runs `vdpbf16ps` (else the exact fp32 emulation of it).
pub fn usesHardware() bool {
    if (!hardware_compiled) return false;
    var state = hardware_state.load(.monotonic);
    if (state == 0) {
        state = if (cpu.features() & cpu.feature_avx512bf16 != 0) 2 else 1;
        hardware_state.store(state, .monotonic);
    }
    return state == 2;
}

/// bf16 bits of `x`: round to nearest even, subnormals flushed to a signed zero, NaN kept quiet.
pub fn toBf16(x: f32) u16 {
    const bits: u32 = @bitCast(x);
    const exponent = bits & 0x7f80_0000;
    if (exponent == 0x7f80_0000 and bits & 0x007f_ffff != 0) return @truncate((bits >> 16) | 0x40);
    if (exponent == 0) return @truncate((bits >> 16) & 0x8000);
    const rounded = bits + 0x7fff + ((bits >> 16) & 1);
    return @truncate(rounded >> 16);
}

/// The fp32 value of bf16 bits.
pub fn fromBf16(h: u16) f32 {
    return @bitCast(@as(u32, h) << 16);
}

/// Pairs along K (K rounded up to even).
pub fn pairs(k: usize) usize {
    return (k + 1) / 2;
}

/// u32 words of a packed [n, k] weight plus its fp32 bias.
pub fn packedLen(n: usize, k: usize) usize {
    const panels = std.math.divCeil(usize, n, panel_width) catch unreachable;
    return panels * panel_width * (pairs(k) + 1);
}

/// u32 words of the converted rows of X [m, k] (`forward`'s scratch).
pub fn scratchLen(m: usize, k: usize) usize {
    return m * pairs(k);
}

fn pairOf(row: [*]const f32, k: usize, p: usize) u32 {
    const even: u32 = toBf16(row[2 * p]);
    const odd: u32 = if (2 * p + 1 < k) toBf16(row[2 * p + 1]) else 0;
    return even | (odd << 16);
}

/// Packs W [n, k] (and bias [n], or zeros when null) into `packed_weights` [packedLen(n, k)].
pub fn pack(weight: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, packed_weights: [*]u32) void {
    std.debug.assert(n >= 1 and k >= 1);
    const panels = std.math.divCeil(usize, n, panel_width) catch unreachable;
    const kp = pairs(k);
    for (0..panels) |p| {
        const panel = packed_weights + p * kp * panel_width;
        for (0..kp) |pair| {
            for (0..panel_width) |j| {
                const col = p * panel_width + j;
                panel[pair * panel_width + j] = if (col < n) pairOf(weight + col * k, k, pair) else 0;
            }
        }
    }
    const packed_bias: [*]f32 = @ptrCast(packed_weights + panels * kp * panel_width);
    for (0..panels * panel_width) |col| {
        packed_bias[col] = if (bias != null and col < n) bias.?[col] else 0.0;
    }
}

/// Unpacks the bf16 weights (as fp32) and the bias of a packed [n, k] weight (the packing test).
pub fn unpack(packed_weights: [*]const u32, n: usize, k: usize, weight: [*]f32, bias: [*]f32) void {
    std.debug.assert(n >= 1 and k >= 1);
    const panels = std.math.divCeil(usize, n, panel_width) catch unreachable;
    const kp = pairs(k);
    for (0..n) |col| {
        const panel = packed_weights + (col / panel_width) * kp * panel_width;
        for (0..k) |kk| {
            const word = panel[(kk / 2) * panel_width + col % panel_width];
            weight[col * k + kk] = fromBf16(@truncate(if (kk % 2 == 0) word else word >> 16));
        }
    }
    const packed_bias: [*]const f32 = @ptrCast(packed_weights + panels * kp * panel_width);
    @memcpy(bias[0..n], packed_bias[0..n]);
}

const Bf16Tile = struct {
    pub const Word = u32;
    pub const rows = tile_rows;
    pub inline fn run(comptime r: usize, x: [*]const u32, kp: usize, panel: [*]const u32, hardware: bool) [r][2]V {
        if (hardware_compiled and hardware) return microKernel(true, r, x, kp, panel);
        return microKernel(false, r, x, kp, panel);
    }
};

const Conversion = struct { x: [*]const f32, m: usize, k: usize, x_pairs: [*]u32 };

/// Computes Y [m, n] on the worker pool; `scratch` holds scratchLen(m, k) words. `residual`
/// may be null; it must not alias `y`.
pub fn forward(
    x: [*]const f32,
    m: usize,
    k: usize,
    scratch: [*]u32,
    packed_weights: [*]const u32,
    n: usize,
    residual: ?[*]const f32,
    y: [*]f32,
    activation: vmath.Activation,
) void {
    std.debug.assert(m >= 1 and k >= 1 and n >= 1);
    const conversion = Conversion{ .x = x, .m = m, .k = k, .x_pairs = scratch };
    pool.parallel(Conversion, &conversion, convertRows);
    const Driver = linear_f32.PanelDriver(Bf16Tile);
    var next_chunk = std.atomic.Value(usize).init(0);
    const args = Driver.Args{
        .x = scratch,
        .m = m,
        .steps = pairs(k),
        .packed_weights = packed_weights,
        .n = n,
        .residual = residual,
        .y = y,
        .flag = usesHardware(),
        .next_chunk = &next_chunk,
    };
    Driver.run(&args, activation);
}

fn convertRows(c: *const Conversion, ith: u32, nth: u32) void {
    const kp = pairs(c.k);
    const range = pool.split(c.m, ith, nth);
    for (range.begin..range.end) |row| {
        const src = c.x + row * c.k;
        const dst = c.x_pairs + row * kp;
        for (0..kp) |p| dst[p] = pairOf(src, c.k, p);
    }
}

const high_half: U = @splat(0xffff_0000);

/// One `vdpbf16ps`: acc += the odd elements' products, then the even ones'.
inline fn dotPairs(acc: V, w: U, x: U) V {
    return asm ("vdpbf16ps %[x], %[w], %[acc]"
        : [acc] "=v" (-> V),
        : [_] "0" (acc),
          [w] "v" (w),
          [x] "v" (x),
    );
}

/// `dotPairs` without the instruction: each pair widened to two fp32 values, odd product first.
inline fn dotPairsEmulated(acc: V, w_odd: V, w_even: V, pair: u32) V {
    const x_odd: V = @splat(@bitCast(pair & 0xffff_0000));
    const x_even: V = @splat(@bitCast(pair << 16));
    return @mulAdd(V, x_even, w_even, @mulAdd(V, x_odd, w_odd, acc));
}

/// The hot loop: `rows` x `panel_width` accumulators over all `kp` pairs. The hardware path
/// (reached only after `usesHardware`) is one instruction per 16 columns and pair; the
/// emulated one widens the panel's pairs once per step for all rows.
inline fn microKernel(comptime hardware: bool, comptime rows: usize, x: [*]const u32, kp: usize, panel: [*]const u32) [rows][2]V {
    var acc: [rows][2]V = @splat(.{ @as(V, @splat(0.0)), @as(V, @splat(0.0)) });
    for (0..kp) |p| {
        const w = panel + p * panel_width;
        const w0: U = w[0..lanes].*;
        const w1: U = w[lanes..panel_width].*;
        const odd: [2]V = .{ @bitCast(w0 & high_half), @bitCast(w1 & high_half) };
        const even: [2]V = .{ @bitCast(w0 << @splat(16)), @bitCast(w1 << @splat(16)) };
        inline for (0..rows) |r| {
            const pair = x[r * kp + p];
            if (hardware) {
                acc[r][0] = dotPairs(acc[r][0], w0, @splat(pair));
                acc[r][1] = dotPairs(acc[r][1], w1, @splat(pair));
            } else {
                acc[r][0] = dotPairsEmulated(acc[r][0], odd[0], even[0], pair);
                acc[r][1] = dotPairsEmulated(acc[r][1], odd[1], even[1], pair);
            }
        }
    }
    return acc;
}

fn referenceRow(x: []const f32, w: []const f32) f32 {
    var acc: f32 = 0;
    var p: usize = 0;
    while (2 * p < x.len) : (p += 1) {
        if (2 * p + 1 < x.len) {
            acc = @mulAdd(f32, fromBf16(toBf16(x[2 * p + 1])), fromBf16(toBf16(w[2 * p + 1])), acc);
        }
        acc = @mulAdd(f32, fromBf16(toBf16(x[2 * p])), fromBf16(toBf16(w[2 * p])), acc);
    }
    return acc;
}

test "toBf16 rounds to nearest even, flushes subnormals and keeps NaN and infinity" {
    try std.testing.expectEqual(@as(u16, 0x3f80), toBf16(1.0));
    // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: even (1.0) wins; 1 + 3 * 2^-8 rounds up.
    try std.testing.expectEqual(@as(u16, 0x3f80), toBf16(1.00390625));
    try std.testing.expectEqual(@as(u16, 0x3f82), toBf16(1.01171875));
    try std.testing.expectEqual(@as(u16, 0x8000), toBf16(-1e-40));
    try std.testing.expectEqual(@as(u16, 0x7f80), toBf16(std.math.inf(f32)));
    try std.testing.expect(std.math.isNan(fromBf16(toBf16(std.math.nan(f32)))));
    try std.testing.expectEqual(@as(u16, 0x7f80), toBf16(std.math.floatMax(f32)));
}

test "forward equals the pairwise reference bit for bit on an odd shape" {
    const m = 13;
    const k = 37;
    const n = 2 * panel_width + 3;
    var x: [m * k]f32 = undefined;
    var w: [n * k]f32 = undefined;
    var b: [n]f32 = undefined;
    var prng = std.Random.DefaultPrng.init(5);
    const random = prng.random();
    for (&x) |*v| v.* = random.float(f32) * 2 - 1;
    for (&w) |*v| v.* = random.float(f32) * 2 - 1;
    for (&b) |*v| v.* = random.float(f32) - 0.5;
    var packed_weights: [packedLen(n, k)]u32 = undefined;
    pack(&w, &b, n, k, &packed_weights);
    var scratch: [scratchLen(m, k)]u32 = undefined;
    var y: [m * n]f32 = undefined;
    forward(&x, m, k, &scratch, &packed_weights, n, null, &y, .none);
    for (0..m) |i| for (0..n) |j| {
        const expected = referenceRow(x[i * k ..][0..k], w[j * k ..][0..k]) + b[j];
        try std.testing.expectEqual(expected, y[i * n + j]);
    };
    var w_back: [n * k]f32 = undefined;
    var b_back: [n]f32 = undefined;
    unpack(&packed_weights, n, k, &w_back, &b_back);
    for (w, w_back) |a, c| try std.testing.expectEqual(fromBf16(toBf16(a)), c);
    try std.testing.expectEqualSlices(f32, &b, &b_back);
}

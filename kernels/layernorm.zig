//! LayerNorm over the last axis: y = (x - mean) / sqrt(var + eps) * gamma + beta.
//! X and Y are [rows, cols] row-major; Y may be X (in place). BERT calls it twice per layer
//! right after a linear op whose epilogue already added the residual.
//!
//! Envelope: one row of 768 floats is three passes over 3 KiB in L1 (sum, squared deviations,
//! scale): about 0.3 us per row, 40 us for 128 tokens on one core, under 1% of a BERT-Base
//! layer, so rows are split over the pool only when the tensor is large enough to pay for it.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const lanes = @import("linear_f32.zig").lanes;

const V = @Vector(lanes, f32);
/// Below this many elements one thread is faster than a pool call. BERT-Base at batch 1, seq 128
/// (98K elements, about 40 us on one core) is above it: right after a linear op the workers are
/// still spinning, and splitting the rows took the norms and embeddings of a sparse int8
/// forward pass from about 0.98 to 0.8 ms (profiled, 24 norms).
pub const parallel_threshold: usize = 1 << 14;

/// Normalises one row of `cols` values from `x` into `y` (which may equal `x`).
pub fn normalizeRow(
    x: [*]const f32,
    cols: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    y: [*]f32,
) void {
    assert(cols >= 1);
    assert(eps >= 0.0);
    // Statistics accumulate in f64: a residual stream with a large mean or an outlier feature
    // loses digits in f32 sums; the cost is a few converts per row.
    const cols_f: f64 = @floatFromInt(cols);
    const mean64 = sum(x, cols) / cols_f;
    const variance = squaredDeviations(x, cols, mean64) / cols_f;
    const mean: f32 = @floatCast(mean64);
    const rstd: f32 = @floatCast(1.0 / @sqrt(variance + @as(f64, eps)));
    const mean_v: V = @splat(mean);
    const rstd_v: V = @splat(rstd);
    var j: usize = 0;
    while (j + lanes <= cols) : (j += lanes) {
        const xv: V = x[j..][0..lanes].*;
        const g: V = gamma[j..][0..lanes].*;
        const b: V = beta[j..][0..lanes].*;
        y[j..][0..lanes].* = @mulAdd(V, (xv - mean_v) * rstd_v, g, b);
    }
    while (j < cols) : (j += 1) {
        y[j] = (x[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

const D = @Vector(lanes, f64);

fn sum(x: [*]const f32, cols: usize) f64 {
    // Two accumulators: independent add chains.
    var acc: [2]D = @splat(@as(D, @splat(0.0)));
    var j: usize = 0;
    while (j + 2 * lanes <= cols) : (j += 2 * lanes) {
        inline for (0..2) |u| acc[u] += @as(D, @floatCast(@as(V, x[j + u * lanes ..][0..lanes].*)));
    }
    while (j + lanes <= cols) : (j += lanes) acc[0] += @as(D, @floatCast(@as(V, x[j..][0..lanes].*)));
    var total = @reduce(.Add, acc[0] + acc[1]);
    while (j < cols) : (j += 1) total += @as(f64, x[j]);
    return total;
}

fn squaredDeviations(x: [*]const f32, cols: usize, mean: f64) f64 {
    const mean_v: D = @splat(mean);
    var acc: [2]D = @splat(@as(D, @splat(0.0)));
    var j: usize = 0;
    while (j + 2 * lanes <= cols) : (j += 2 * lanes) {
        inline for (0..2) |u| {
            const d = @as(D, @floatCast(@as(V, x[j + u * lanes ..][0..lanes].*))) - mean_v;
            acc[u] = @mulAdd(D, d, d, acc[u]);
        }
    }
    while (j + lanes <= cols) : (j += lanes) {
        const d = @as(D, @floatCast(@as(V, x[j..][0..lanes].*))) - mean_v;
        acc[0] = @mulAdd(D, d, d, acc[0]);
    }
    var total = @reduce(.Add, acc[0] + acc[1]);
    while (j < cols) : (j += 1) {
        const d = @as(f64, x[j]) - mean;
        total += d * d;
    }
    return total;
}

const Args = struct {
    x: [*]const f32,
    rows: usize,
    cols: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    y: [*]f32,
};

/// Normalises every row of X [rows, cols] into Y (Y may be X).
pub fn forward(
    x: [*]const f32,
    rows: usize,
    cols: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    y: [*]f32,
) void {
    assert(rows >= 1 and cols >= 1);
    assert(eps >= 0.0);
    const args = Args{
        .x = x,
        .rows = rows,
        .cols = cols,
        .gamma = gamma,
        .beta = beta,
        .eps = eps,
        .y = y,
    };
    if (rows * cols < parallel_threshold) {
        run(&args, 0, 1);
    } else {
        pool.parallel(Args, &args, run);
    }
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    const range = pool.split(args.rows, ith, nth);
    for (range.begin..range.end) |r| {
        const offset = r * args.cols;
        normalizeRow(args.x + offset, args.cols, args.gamma, args.beta, args.eps, args.y + offset);
    }
}

test "layernorm matches an f64 computation, in place and out of place" {
    const rows = 5;
    const cols = 37;
    var x: [rows * cols]f32 = undefined;
    var gamma: [cols]f32 = undefined;
    var beta: [cols]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt((i * 7) % 23)) * 0.3 - 2.0;
    for (&gamma, &beta, 0..) |*g, *b, i| {
        g.* = 1.0 + @as(f32, @floatFromInt(i % 5)) * 0.1;
        b.* = @as(f32, @floatFromInt(i % 3)) * 0.2 - 0.2;
    }
    var y: [rows * cols]f32 = undefined;
    forward(&x, rows, cols, &gamma, &beta, 1e-12, &y);
    for (0..rows) |r| {
        var mean: f64 = 0;
        for (0..cols) |j| mean += x[r * cols + j];
        mean /= cols;
        var variance: f64 = 0;
        for (0..cols) |j| variance += (x[r * cols + j] - mean) * (x[r * cols + j] - mean);
        variance /= cols;
        for (0..cols) |j| {
            const expected = (x[r * cols + j] - mean) / @sqrt(variance + 1e-12) * gamma[j] + beta[j];
            try std.testing.expectApproxEqAbs(@as(f32, @floatCast(expected)), y[r * cols + j], 2e-5);
        }
    }
    forward(&x, rows, cols, &gamma, &beta, 1e-12, &x);
    try std.testing.expectEqualSlices(f32, &y, &x);
}

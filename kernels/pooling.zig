//! Sentence pooling of token states X [batch * seq, hidden] into [batch, hidden], with the
//! modes of sentence-transformers' `Pooling` over the tokens whose mask byte is non-zero:
//! `cls` the first token; `mean` sum / max(count, 1e-9); `max` the largest value per feature
//! (-1e9 where no token counts); `mean_sqrt_len` sum / sqrt(max(count, 1e-9)); `weightedmean`
//! positions weighted 1, 2, ... (sum(w x) / max(sum w, 1e-9)); `lasttoken` the last token that
//! counts (the first when none does). Optionally each pooled vector is divided by
//! max(L2 norm, 1e-12) (torch `F.normalize`). Also an in-place row L2 normaliser for
//! token-level outputs.
//!
//! Envelope: one read of X (384 KiB at batch 1, seq 128, H 768): tens of microseconds on one
//! core, so no pool.
const std = @import("std");
const assert = std.debug.assert;
const lanes = @import("linear_f32.zig").lanes;

const V = @Vector(lanes, f32);

/// Pooling modes of the C ABI.
pub const Mode = enum(u32) {
    cls = 0,
    mean = 1,
    max = 2,
    mean_sqrt_len = 3,
    weightedmean = 4,
    lasttoken = 5,
};

/// Pools X [batch * seq, hidden] into `out` [batch, hidden]; `mask` is [batch * seq] bytes.
pub fn forward(
    x: [*]const f32,
    batch: usize,
    seq: usize,
    hidden: usize,
    mask: [*]const u8,
    mode: Mode,
    normalize: bool,
    out: [*]f32,
) void {
    assert(batch >= 1 and seq >= 1 and hidden >= 1);
    for (0..batch) |b| {
        const y = out + b * hidden;
        const first = x + b * seq * hidden;
        const m = mask + b * seq;
        switch (mode) {
            .cls => @memcpy(y[0..hidden], first[0..hidden]),
            .mean => scale(y, hidden, 1.0 / @max(sumRows(first, seq, hidden, m, false, y), 1e-9)),
            .mean_sqrt_len => {
                const count = sumRows(first, seq, hidden, m, false, y);
                scale(y, hidden, 1.0 / @sqrt(@max(count, 1e-9)));
            },
            .weightedmean => scale(y, hidden, 1.0 / @max(sumRows(first, seq, hidden, m, true, y), 1e-9)),
            .max => maxRows(first, seq, hidden, m, y),
            .lasttoken => {
                var last: usize = 0;
                for (0..seq) |i| {
                    if (m[i] != 0) last = i;
                }
                @memcpy(y[0..hidden], (first + last * hidden)[0..hidden]);
            },
        }
        if (normalize) normalizeRow(y, hidden);
    }
}

/// y = sum over counted tokens of w_s * x_s, with w_s = 1 or (weighted) its position s + 1;
/// returns the sum of the weights.
fn sumRows(x: [*]const f32, seq: usize, hidden: usize, mask: [*]const u8, weighted: bool, y: [*]f32) f32 {
    @memset(y[0..hidden], 0.0);
    var total: f32 = 0;
    for (0..seq) |s| {
        if (mask[s] == 0) continue;
        const w: f32 = if (weighted) @floatFromInt(s + 1) else 1.0;
        total += w;
        const row = x + s * hidden;
        var j: usize = 0;
        if (weighted) {
            const wv: V = @splat(w);
            while (j + lanes <= hidden) : (j += lanes) {
                y[j..][0..lanes].* = @mulAdd(V, wv, row[j..][0..lanes].*, y[j..][0..lanes].*);
            }
            while (j < hidden) : (j += 1) y[j] += w * row[j];
        } else {
            while (j + lanes <= hidden) : (j += lanes) {
                y[j..][0..lanes].* = @as(V, y[j..][0..lanes].*) + @as(V, row[j..][0..lanes].*);
            }
            while (j < hidden) : (j += 1) y[j] += row[j];
        }
    }
    return total;
}

/// y = the largest value per feature over counted tokens; -1e9 where none counts (as
/// sentence-transformers fills masked tokens before its max).
fn maxRows(x: [*]const f32, seq: usize, hidden: usize, mask: [*]const u8, y: [*]f32) void {
    @memset(y[0..hidden], -1e9);
    for (0..seq) |s| {
        if (mask[s] == 0) continue;
        const row = x + s * hidden;
        var j: usize = 0;
        while (j + lanes <= hidden) : (j += lanes) {
            y[j..][0..lanes].* = @max(@as(V, y[j..][0..lanes].*), @as(V, row[j..][0..lanes].*));
        }
        while (j < hidden) : (j += 1) y[j] = @max(y[j], row[j]);
    }
}

/// Divides a row by max(||row||, 1e-12) in place.
pub fn normalizeRow(y: [*]f32, n: usize) void {
    var acc: V = @splat(0.0);
    var j: usize = 0;
    while (j + lanes <= n) : (j += lanes) {
        const v: V = y[j..][0..lanes].*;
        acc = @mulAdd(V, v, v, acc);
    }
    var sum_sq = @reduce(.Add, acc);
    while (j < n) : (j += 1) sum_sq += y[j] * y[j];
    scale(y, n, 1.0 / @max(@sqrt(sum_sq), 1e-12));
}

fn scale(y: [*]f32, n: usize, factor: f32) void {
    const f: V = @splat(factor);
    var j: usize = 0;
    while (j + lanes <= n) : (j += lanes) y[j..][0..lanes].* = @as(V, y[j..][0..lanes].*) * f;
    while (j < n) : (j += 1) y[j] *= factor;
}

/// L2-normalises every row of X [rows, cols] in place.
pub fn normalizeRows(x: [*]f32, rows: usize, cols: usize) void {
    assert(rows >= 1 and cols >= 1);
    for (0..rows) |r| normalizeRow(x + r * cols, cols);
}

test "mean pooling skips masked tokens and normalises" {
    const seq = 3;
    const hidden = 10;
    var x: [2 * seq * hidden]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i % 17)) - 8.0;
    const mask = [_]u8{ 1, 1, 0, 1, 0, 0 };
    var out: [2 * hidden]f32 = undefined;
    forward(&x, 2, seq, hidden, &mask, .mean, false, &out);
    for (0..hidden) |j| {
        try std.testing.expectApproxEqAbs((x[j] + x[hidden + j]) / 2.0, out[j], 1e-6);
        try std.testing.expectApproxEqAbs(x[seq * hidden + j], out[hidden + j], 1e-6);
    }
    forward(&x, 2, seq, hidden, &mask, .cls, true, &out);
    var norm: f32 = 0;
    for (0..hidden) |j| norm += out[j] * out[j];
    try std.testing.expectApproxEqAbs(@as(f32, 1.0), norm, 1e-5);
}

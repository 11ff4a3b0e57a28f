//! Sentence pooling of token states X [batch * seq, hidden] into [batch, hidden]:
//! `cls` takes each sequence's first token, `mean` averages the tokens whose mask byte is
//! non-zero (sentence-transformers: sum / max(count, 1e-9)); optionally each pooled vector is
//! divided by max(L2 norm, 1e-12) (torch `F.normalize`). Also an in-place row L2 normaliser
//! for token-level outputs.
//!
//! Envelope: one read of X (384 KiB at batch 1, seq 128, H 768): tens of microseconds on one
//! core, so no pool.
const std = @import("std");
const assert = std.debug.assert;
const lanes = @import("linear_f32.zig").lanes;

const V = @Vector(lanes, f32);

/// Pooling modes of the C ABI.
pub const Mode = enum(u32) { cls = 0, mean = 1 };

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
        switch (mode) {
            .cls => @memcpy(y[0..hidden], first[0..hidden]),
            .mean => meanRows(first, seq, hidden, mask + b * seq, y),
        }
        if (normalize) normalizeRow(y, hidden);
    }
}

fn meanRows(x: [*]const f32, seq: usize, hidden: usize, mask: [*]const u8, y: [*]f32) void {
    @memset(y[0..hidden], 0.0);
    var count: usize = 0;
    for (0..seq) |s| {
        if (mask[s] == 0) continue;
        count += 1;
        const row = x + s * hidden;
        var j: usize = 0;
        while (j + lanes <= hidden) : (j += lanes) {
            y[j..][0..lanes].* = @as(V, y[j..][0..lanes].*) + @as(V, row[j..][0..lanes].*);
        }
        while (j < hidden) : (j += 1) y[j] += row[j];
    }
    const inv = 1.0 / @max(@as(f32, @floatFromInt(count)), 1e-9);
    scale(y, hidden, inv);
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

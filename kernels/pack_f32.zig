//! The packed fp32 activation layout of `spmm_f32`: chunks of 16 tokens; per chunk and input
//! channel k, 16 f32 (natural token order), zero past the last token.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const transpose = @import("transpose.zig");
const layout = @import("quantize_packed.zig");

const chunk_tokens = layout.chunk_tokens;
const chunksOf = layout.chunksOf;
const F8 = @Vector(8, f32);

/// Floats of the packed f32 layout for m tokens and k channels.
pub fn packedF32Len(m: usize, k: usize) usize {
    return chunksOf(m) * k * chunk_tokens;
}

const F32Ctx = struct { x: [*]const f32, m: usize, k: usize, out: [*]f32 };

fn packF32Work(ctx: *const F32Ctx, ith: u32, nth: u32) void {
    const chunks = chunksOf(ctx.m);
    const part = pool.split(chunks, ith, nth);
    for (part.begin..part.end) |chunk| {
        const t0 = chunk * chunk_tokens;
        const dst = ctx.out + chunk * ctx.k * chunk_tokens;
        var k0: usize = 0;
        while (k0 < ctx.k) : (k0 += 8) {
            const width: usize = @min(8, ctx.k - k0);
            var rows: [16]F8 = undefined;
            for (0..chunk_tokens) |j| {
                rows[j] = @splat(0);
                if (t0 + j >= ctx.m) continue;
                const x = ctx.x + (t0 + j) * ctx.k + k0;
                if (width == 8) {
                    rows[j] = x[0..8].*;
                } else {
                    for (0..width) |c| rows[j][c] = x[c];
                }
            }
            const a = transpose.f32x8(rows[0..8].*);
            const b = transpose.f32x8(rows[8..16].*);
            for (0..width) |c| {
                const row: *align(4) [16]f32 = @ptrCast(dst + (k0 + c) * chunk_tokens);
                row[0..8].* = a[c];
                row[8..16].* = b[c];
            }
        }
    }
}

/// Transposes x [m, k] into the packed f32 layout of `spmm_f32` (`packedF32Len(m, k)` floats).
pub fn packF32(x: [*]const f32, m: usize, k: usize, out: [*]f32) void {
    assert(m >= 1 and k >= 1);
    const ctx = F32Ctx{ .x = x, .m = m, .k = k, .out = out };
    pool.parallel(F32Ctx, &ctx, packF32Work);
}

// ---- tests ----

test "packF32 transposes into chunks" {
    const m = 19;
    const k = 11;
    var x: [m * k]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @floatFromInt(i);
    var out: [packedF32Len(m, k)]f32 = undefined;
    packF32(&x, m, k, &out);
    for (0..packedF32Len(m, k) / (k * chunk_tokens)) |chunk| for (0..k) |c| for (0..chunk_tokens) |j| {
        const t = chunk * chunk_tokens + j;
        const want: f32 = if (t < m) x[t * k + c] else 0;
        try std.testing.expectEqual(want, out[(chunk * k + c) * chunk_tokens + j]);
    };
}

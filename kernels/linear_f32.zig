//! Dense fp32 linear layer: Y = act(X W^T + b) + R.
//! X is [m, k] row-major (tokens x features), W is [n, k] (torch Linear layout), Y and R are
//! [m, n]. W is packed once into panels of `panel_width` output columns with k-major order, so
//! the micro-kernel reads one contiguous stream of weights while `tile_rows` rows of X are
//! broadcast; the tile's accumulators stay in registers for the whole K loop.
//!
//! Envelope (AVX2, Zen 3): a 6x16 tile does 12 FMAs per k step against 2 weight loads and
//! 6 broadcasts, enough to keep both FMA pipes busy; a weight panel of 16 x K floats (48 KiB at
//! K = 768, 192 KiB at K = 3072) stays in L2 while every row tile of X streams past it.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");

/// f32 lanes per vector register in this build (4 SSE2, 8 AVX2, 16 AVX-512).
pub const lanes: usize = blk: {
    const has = std.Target.x86.featureSetHas;
    if (builtin.cpu.arch == .x86_64 and has(builtin.cpu.features, .avx512f)) break :blk 16;
    if (builtin.cpu.arch == .x86_64 and has(builtin.cpu.features, .avx)) break :blk 8;
    break :blk 4;
};
const V = @Vector(lanes, f32);
/// Output columns per packed panel: two vectors.
pub const panel_width: usize = 2 * lanes;
/// Rows of X per micro-tile: 2 * tile_rows accumulators plus 3 scratch registers fit the file.
pub const tile_rows: usize = if (lanes == 16) 12 else 6;
/// Rows of X per outer block, so an X block stays in L2 while the weight panels stream past.
pub const row_block: usize = 192;

/// Floats needed to pack an [n, k] weight plus its bias.
pub fn packedLen(n: usize, k: usize) usize {
    const panels = std.math.divCeil(usize, n, panel_width) catch unreachable;
    return panels * panel_width * (k + 1);
}

/// Packs W [n, k] (and bias [n], or zeros when null) into `packed_weights` [packedLen(n, k)].
pub fn pack(weight: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, packed_weights: [*]f32) void {
    assert(n >= 1 and k >= 1);
    const panels = std.math.divCeil(usize, n, panel_width) catch unreachable;
    for (0..panels) |p| {
        const panel = packed_weights + p * k * panel_width;
        for (0..k) |kk| {
            for (0..panel_width) |j| {
                const col = p * panel_width + j;
                panel[kk * panel_width + j] = if (col < n) weight[col * k + kk] else 0.0;
            }
        }
    }
    const packed_bias = packed_weights + panels * k * panel_width;
    for (0..panels * panel_width) |col| {
        packed_bias[col] = if (bias != null and col < n) bias.?[col] else 0.0;
    }
}

/// The panel loop both dense float kernels (this one and `linear_bf16.zig`) share. `Tile`
/// names the packed element (`Word`, 4 bytes: an fp32 or a bf16 pair), the rows per micro-tile
/// (`rows`) and the micro-kernel: `Tile.run(rows, x, steps, panel, flag)` returns the tile's
/// `rows` x `panel_width` fp32 accumulators over `steps` packed K steps. A panel is `steps` x
/// `panel_width` words, and the panels' fp32 bias follows the last one.
pub fn PanelDriver(comptime Tile: type) type {
    return struct {
        pub const Args = struct {
            x: [*]const Tile.Word,
            m: usize,
            /// Packed K steps per row of X and per panel (K for fp32, K / 2 rounded up for bf16).
            steps: usize,
            packed_weights: [*]const Tile.Word,
            n: usize,
            residual: ?[*]const f32,
            y: [*]f32,
            /// Passed to `Tile.run` (the bf16 tile: whether to run `vdpbf16ps`).
            flag: bool,
            /// Next chunk of panels to take: threads take chunks dynamically, so a thread that
            /// loses its core to another process does not hold the others at the barrier.
            next_chunk: *std.atomic.Value(usize),
        };

        /// Computes Y [m, n] on the worker pool.
        pub fn run(args: *const Args, activation: vmath.Activation) void {
            assert(args.m >= 1 and args.steps >= 1 and args.n >= 1);
            if (args.residual) |r| assert(@intFromPtr(r) != @intFromPtr(args.y));
            switch (activation) {
                inline else => |act| pool.parallel(Args, args, Worker(act).run),
            }
        }

        fn Worker(comptime act: vmath.Activation) type {
            return struct {
                fn run(args: *const Args, ith: u32, nth: u32) void {
                    const panels = std.math.divCeil(usize, args.n, panel_width) catch unreachable;
                    // Split output panels when there are enough for every thread (weights are
                    // read once); otherwise split rows (small heads such as a 2-label classifier).
                    if (panels >= nth) {
                        // About 8 chunks per thread: enough to rebalance, few enough to keep
                        // each chunk's weights streaming.
                        const chunk = @max(1, panels / (8 * @as(usize, nth)));
                        while (true) {
                            const begin = args.next_chunk.fetchAdd(chunk, .monotonic);
                            if (begin >= panels) break;
                            computeBlock(act, args, 0, args.m, begin, @min(begin + chunk, panels));
                        }
                    } else {
                        const range = pool.split(args.m, ith, nth);
                        if (range.begin < range.end) computeBlock(act, args, range.begin, range.end, 0, panels);
                    }
                }
            };
        }

        fn computeBlock(
            comptime act: vmath.Activation,
            args: *const Args,
            row_begin: usize,
            row_end: usize,
            panel_begin: usize,
            panel_end: usize,
        ) void {
            const panels = std.math.divCeil(usize, args.n, panel_width) catch unreachable;
            const packed_bias: [*]const f32 = @ptrCast(args.packed_weights + panels * args.steps * panel_width);
            var block_begin = row_begin;
            while (block_begin < row_end) : (block_begin += row_block) {
                const block_end = @min(block_begin + row_block, row_end);
                for (panel_begin..panel_end) |p| {
                    const panel = args.packed_weights + p * args.steps * panel_width;
                    var row = block_begin;
                    while (row < block_end) : (row += Tile.rows) {
                        const rows = @min(Tile.rows, block_end - row);
                        switch (rows) {
                            inline 1...Tile.rows => |r| {
                                const acc = Tile.run(r, args.x + row * args.steps, args.steps, panel, args.flag);
                                store(act, r, args, acc, row, p, packed_bias + p * panel_width);
                            },
                            else => unreachable,
                        }
                    }
                }
            }
        }

        fn store(
            comptime act: vmath.Activation,
            comptime rows: usize,
            args: *const Args,
            acc: [rows][2]V,
            row: usize,
            p: usize,
            bias: [*]const f32,
        ) void {
            const col = p * panel_width;
            const cols = @min(panel_width, args.n - col);
            const b0: V = bias[0..lanes].*;
            const b1: V = bias[lanes..panel_width].*;
            inline for (0..rows) |r| {
                var out: [panel_width]f32 = undefined;
                out[0..lanes].* = act.apply(lanes, acc[r][0] + b0);
                out[lanes..panel_width].* = act.apply(lanes, acc[r][1] + b1);
                const y_row = args.y + (row + r) * args.n + col;
                if (args.residual) |residual| {
                    const r_row = residual + (row + r) * args.n + col;
                    for (0..cols) |j| y_row[j] = out[j] + r_row[j];
                } else {
                    @memcpy(y_row[0..cols], out[0..cols]);
                }
            }
        }
    };
}

const F32Tile = struct {
    pub const Word = f32;
    pub const rows = tile_rows;
    pub inline fn run(comptime r: usize, x: [*]const f32, k: usize, panel: [*]const f32, _: bool) [r][2]V {
        return microKernel(r, x, k, panel);
    }
};

/// Computes Y [m, n] on the worker pool. `residual` may be null; it must not alias `y`.
pub fn forward(
    x: [*]const f32,
    m: usize,
    k: usize,
    packed_weights: [*]const f32,
    n: usize,
    residual: ?[*]const f32,
    y: [*]f32,
    activation: vmath.Activation,
) void {
    const Driver = PanelDriver(F32Tile);
    var next_chunk = std.atomic.Value(usize).init(0);
    const args = Driver.Args{
        .x = x,
        .m = m,
        .steps = k,
        .packed_weights = packed_weights,
        .n = n,
        .residual = residual,
        .y = y,
        .flag = false,
        .next_chunk = &next_chunk,
    };
    Driver.run(&args, activation);
}

/// The hot loop: `rows` x `panel_width` accumulators over the whole K range.
inline fn microKernel(comptime rows: usize, x: [*]const f32, k: usize, panel: [*]const f32) [rows][2]V {
    var acc: [rows][2]V = @splat(.{ @as(V, @splat(0.0)), @as(V, @splat(0.0)) });
    for (0..k) |kk| {
        const w = panel + kk * panel_width;
        const w0: V = w[0..lanes].*;
        const w1: V = w[lanes..panel_width].*;
        inline for (0..rows) |r| {
            const xv: V = @splat(x[r * k + kk]);
            acc[r][0] = @mulAdd(V, xv, w0, acc[r][0]);
            acc[r][1] = @mulAdd(V, xv, w1, acc[r][1]);
        }
    }
    return acc;
}

test "forward matches a naive loop on an odd shape" {
    const m = 7;
    const k = 5;
    const n = 19;
    var x: [m * k]f32 = undefined;
    var w: [n * k]f32 = undefined;
    var b: [n]f32 = undefined;
    for (&x, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i % 11)) * 0.25 - 1.0;
    for (&w, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i % 7)) * 0.5 - 1.5;
    for (&b, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i)) * 0.1;
    var packed_weights: [packedLen(n, k)]f32 = undefined;
    pack(&w, &b, n, k, &packed_weights);
    var y: [m * n]f32 = undefined;
    forward(&x, m, k, &packed_weights, n, null, &y, .none);
    for (0..m) |i| for (0..n) |j| {
        var s: f32 = b[j];
        for (0..k) |kk| s += x[i * k + kk] * w[j * k + kk];
        try std.testing.expectApproxEqAbs(s, y[i * n + j], 1e-5);
    };
}

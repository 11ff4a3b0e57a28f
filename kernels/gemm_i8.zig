//! Dense int8 linear layer: Y = act(dequant(X_q W_q^T) + b) + R, the fallback of `spmm_i8`
//! below its sparsity threshold, with the same epilogue and the same saturation rule (u7
//! activations, see `int8.zig`).
//!
//! W_q s8 [n, k] is packed once into panels of 16 output channels: for every 4 input channels
//! (k4 step) a panel holds 16 dwords, one per channel, so two 32-byte loads feed the two
//! accumulator columns of the micro-kernel. X_q is u8 rows [m][ldx] (`quantize.quantizeRows`,
//! ldx a multiple of 4 with zero padding); a row's 4 bytes are broadcast.
//!
//! Envelope (AVX2, Zen 3): a 6 x 16 tile does 12 dot-product steps (384 MACs, 24 multiplies on
//! the two multiply pipes: 12 cycles) per k4 step against 2 weight loads and 6 broadcasts. A
//! weight panel (16 x k bytes: 12 KiB at k = 768, 48 KiB at k = 3072) stays in L1/L2 while
//! the row tiles of X stream past it.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");
const int8 = @import("int8.zig");
const epilogue = @import("int8_epilogue.zig");

const I32x8 = int8.I32x8;
const F8 = @Vector(8, f32);
/// Output channels per panel: one row of the shared epilogue.
pub const panel_width: usize = epilogue.lanes;
const V16 = epilogue.F16;
/// Rows of X per micro-tile.
pub const tile_rows: usize = 6;
/// Rows of X per outer block, so an X block stays in L2 while the panels stream past.
const row_block: usize = 96;

const magic: u32 = 0x38474253; // "SBG8"
const format_version: u32 = 1;

pub const Error = error{ BadBlob, TooLarge, BufferTooSmall };

pub const Header = extern struct {
    magic: u32,
    version: u32,
    n: u32,
    k: u32,
    k4: u32,
    panels: u32,
    weights: u64,
    scale: u64,
    wsum: u64,
    bias: u64,
    total: u64,
};

fn alignUp(x: u64) u64 {
    return std.mem.alignForward(u64, x, 64);
}

fn layout(n: usize, k: usize) Error!Header {
    if (n > std.math.maxInt(u32) - panel_width or k > std.math.maxInt(u32) - 4) return error.TooLarge;
    const k4 = (k + 3) / 4;
    const panels = (n + panel_width - 1) / panel_width;
    const cols: u64 = panels * panel_width;
    var h: Header = .{
        .magic = magic,
        .version = format_version,
        .n = @intCast(n),
        .k = @intCast(k),
        .k4 = @intCast(k4),
        .panels = @intCast(panels),
        .weights = alignUp(@sizeOf(Header)),
        .scale = 0,
        .wsum = 0,
        .bias = 0,
        .total = 0,
    };
    h.scale = alignUp(h.weights + cols * 4 * k4);
    h.wsum = alignUp(h.scale + 4 * cols);
    h.bias = alignUp(h.wsum + 4 * cols);
    h.total = alignUp(h.bias + 4 * cols);
    return h;
}

/// Bytes of the packed blob for an [n, k] weight.
pub fn packedLen(n: usize, k: usize) Error!usize {
    assert(n >= 1 and k >= 1);
    return (try layout(n, k)).total;
}

/// Row stride (bytes) of the u8 activations this kernel reads for input width k.
pub fn activationStride(k: usize) usize {
    return (k + 3) / 4 * 4;
}

/// Typed views of a blob.
pub const View = struct {
    header: *const Header,
    weights: [*]const i8,
    scale: [*]const f32,
    wsum: [*]const i32,
    bias: [*]const f32,
};

/// Validates a blob and returns views of its sections.
pub fn view(blob: [*]align(64) const u8, blob_len: usize) Error!View {
    if (blob_len < @sizeOf(Header)) return error.BadBlob;
    const h: *const Header = @ptrCast(blob);
    if (h.magic != magic or h.version != format_version) return error.BadBlob;
    const expect = layout(h.n, h.k) catch return error.BadBlob;
    if (!std.meta.eql(expect, h.*) or h.total > blob_len or h.n == 0 or h.k == 0) return error.BadBlob;
    return .{
        .header = h,
        .weights = @ptrCast(blob + h.weights),
        .scale = @ptrCast(@alignCast(blob + h.scale)),
        .wsum = @ptrCast(@alignCast(blob + h.wsum)),
        .bias = @ptrCast(@alignCast(blob + h.bias)),
    };
}

/// Packs q s8 [n, k], per-channel `scale` [n] and optional `bias` [n] into `blob`.
pub fn pack(
    q: [*]const i8,
    scale: [*]const f32,
    bias: ?[*]const f32,
    n: usize,
    k: usize,
    blob: [*]align(64) u8,
    blob_len: usize,
) Error!void {
    assert(n >= 1 and k >= 1);
    const h = try layout(n, k);
    if (blob_len < h.total) return error.BufferTooSmall;
    @memset(blob[0..h.total], 0);
    @as(*Header, @ptrCast(blob)).* = h;
    const weights: [*]i8 = @ptrCast(blob + h.weights);
    const out_scale: [*]f32 = @ptrCast(@alignCast(blob + h.scale));
    const out_wsum: [*]i32 = @ptrCast(@alignCast(blob + h.wsum));
    const out_bias: [*]f32 = @ptrCast(@alignCast(blob + h.bias));
    for (0..n) |c| {
        const panel = c / panel_width;
        const lane = c % panel_width;
        var sum: i32 = 0;
        for (0..k) |kk| {
            const w = q[c * k + kk];
            sum += w;
            const at = ((panel * h.k4 + kk / 4) * panel_width + lane) * 4 + kk % 4;
            weights[at] = w;
        }
        out_scale[c] = scale[c];
        out_wsum[c] = sum;
        out_bias[c] = if (bias) |b| b[c] else 0;
    }
}

pub const Args = struct {
    w: View,
    /// u8 activations [m][ldx], values <= `int8.act_max` (255 with `ort_numerics`),
    /// ldx >= activationStride(k) with zero padding.
    x: [*]const u8,
    ldx: usize,
    m: usize,
    x_scale: [*]const f32,
    x_zero: [*]const i32,
    /// Token-major [m, n] fp32 added after the activation, or null.
    residual: ?[*]const f32,
    /// Token-major [m, n] output of the element type `output` names.
    y: *anyopaque,
    output: int8.Output,
    requant: int8.Requant,
    activation: vmath.Activation,
    /// ONNX Runtime's u8 activations (codes up to 255 on every path) and its exact GELU: the
    /// AVX2 path's `vpmaddubsw` pair sums then saturate in int16 exactly as ORT's own AVX2 U8S8
    /// kernel does (the same pairs of consecutive k), and the VNNI and baseline paths stay exact,
    /// as ORT's do. Otherwise codes up to `int8.act_max` (exact everywhere) and the int8 GELU.
    ort_numerics: bool = false,

    /// The largest activation code `forward` takes with these arguments.
    pub fn actMax(self: *const Args) u8 {
        return if (self.ort_numerics) 255 else int8.act_max;
    }
};

/// Runs the layer on the worker pool.
pub fn forward(args: *const Args) void {
    const h = args.w.header;
    assert(args.m >= 1 and h.n >= 1 and h.k >= 1);
    assert(args.ldx >= 4 * @as(usize, h.k4));
    if (std.debug.runtime_safety) {
        for (0..args.m) |t| for (args.x[t * args.ldx ..][0 .. 4 * @as(usize, h.k4)]) |v| assert(v <= args.actMax());
    }
    switch (args.output) {
        inline else => |out| switch (args.activation) {
            inline else => |act| pool.parallel(Args, args, Worker(out, act).run),
        },
    }
}

fn Worker(comptime out: int8.Output, comptime act: vmath.Activation) type {
    return struct {
        fn run(args: *const Args, ith: u32, nth: u32) void {
            const panels: usize = args.w.header.panels;
            // Split panels when every thread gets some (weights read once); else split rows.
            if (panels >= nth) {
                const range = pool.split(panels, ith, nth);
                computeBlock(out, act, args, 0, args.m, range.begin, range.end);
            } else {
                const range = pool.split(args.m, ith, nth);
                if (range.begin < range.end) computeBlock(out, act, args, range.begin, range.end, 0, panels);
            }
        }
    };
}

fn computeBlock(
    comptime out: int8.Output,
    comptime act: vmath.Activation,
    args: *const Args,
    row_begin: usize,
    row_end: usize,
    panel_begin: usize,
    panel_end: usize,
) void {
    const panel_bytes: usize = @as(usize, args.w.header.k4) * 4 * panel_width;
    var block_begin = row_begin;
    while (block_begin < row_end) : (block_begin += row_block) {
        const block_end = @min(block_begin + row_block, row_end);
        for (panel_begin..panel_end) |p| {
            // The panel this thread reads next: the following one, or the first again for the
            // next row block.
            const next: ?usize = if (p + 1 < panel_end) p + 1 else if (block_end < row_end) panel_begin else null;
            const next_panel: ?[*]const i8 = if (next) |q| args.w.weights + q * panel_bytes else null;
            var row = block_begin;
            while (row < block_end) : (row += tile_rows) {
                const rows: usize = @min(tile_rows, block_end - row);
                // Only the first row tile fetches: the later ones find this panel in cache.
                const fetch = if (row == block_begin) next_panel else null;
                switch (rows) {
                    inline 1...tile_rows => |r| tile(out, act, r, args, row, p, fetch),
                    else => unreachable,
                }
            }
        }
    }
}

/// The hot loop: `rows` x 16 accumulators over the whole K range. With `fetch`, each step also
/// prefetches into L2 the line of the panel this thread reads next at the same offset, so the
/// next panel streams in while the first row tile of this one runs. (In a model the weights are
/// not in cache between calls, and each panel's first tile waited on memory. Zig harness, Zen 4,
/// 2 threads, M = 128, 24 distinct weight matrices cycled: 0.86-0.98x the time on all five BERT
/// shapes; 0.97-1.03x with one matrix, which stays in cache.)
inline fn microKernel(comptime rows: usize, x: [*]const u8, ldx: usize, k4: usize, panel: [*]const i8, fetch: ?[*]const i8) [rows][2]I32x8 {
    var acc: [rows][2]I32x8 = @splat(.{ @as(I32x8, @splat(0)), @as(I32x8, @splat(0)) });
    for (0..k4) |s| {
        const w = panel + s * 4 * panel_width;
        if (fetch) |f| @prefetch(f + s * 4 * panel_width, .{ .locality = 2 });
        const w0: int8.I8x32 = w[0..32].*;
        const w1: int8.I8x32 = w[32..64].*;
        inline for (0..rows) |r| {
            const a = int8.broadcast4(u8, x + r * ldx + 4 * s);
            acc[r][0] = int8.dot4(acc[r][0], a, w0);
            acc[r][1] = int8.dot4(acc[r][1], a, w1);
        }
    }
    return acc;
}

fn tile(
    comptime out: int8.Output,
    comptime act: vmath.Activation,
    comptime rows: usize,
    args: *const Args,
    row: usize,
    p: usize,
    fetch: ?[*]const i8,
) void {
    const w = args.w;
    const k4: usize = w.header.k4;
    const n: usize = w.header.n;
    const panel = w.weights + p * k4 * 4 * panel_width;
    const acc = microKernel(rows, args.x + row * args.ldx, args.ldx, k4, panel, fetch);
    const c0 = p * panel_width;
    const cols: usize = @min(panel_width, n - c0);
    const wsum: [2]I32x8 = .{ w.wsum[c0..][0..8].*, w.wsum[c0 + 8 ..][0..8].* };
    const sw: [2]F8 = .{ w.scale[c0..][0..8].*, w.scale[c0 + 8 ..][0..8].* };
    const bias: [2]F8 = .{ w.bias[c0..][0..8].*, w.bias[c0 + 8 ..][0..8].* };
    inline for (0..rows) |r| {
        const t = row + r;
        const zero: I32x8 = @splat(args.x_zero[t]);
        var exact: [2]I32x8 = undefined;
        inline for (0..2) |h| exact[h] = acc[r][h] -% zero *% wsum[h];
        const at = t * n + c0;
        const target = epilogue.Target{ .y = args.y, .residual = args.residual, .requant = args.requant };
        if (out == .s32) {
            epilogue.storeExact(target, at, std.simd.join(exact[0], exact[1]), cols);
        } else {
            const sx: F8 = @splat(args.x_scale[t]);
            var f: [2]F8 = undefined;
            inline for (0..2) |h| {
                const e: F8 = @floatFromInt(exact[h]);
                const pre = e * (sx * sw[h]) + bias[h];
                // The kernels' own codes: the cheaper GELU, as in spmm_i8 (the two kernels agree
                // bit for bit); ORT's numerics keep the exact one.
                f[h] = if (args.ort_numerics) act.apply(8, pre) else act.applyInt8(8, pre);
            }
            epilogue.storeActivated(out, target, at, std.simd.join(f[0], f[1]), cols);
        }
    }
}

// ---- tests ----

const testing = std.testing;

fn checkShape(m: usize, n: usize, k: usize, seed: u64) !void {
    const gpa = testing.allocator;
    var prng = std.Random.DefaultPrng.init(seed);
    const rnd = prng.random();
    const q = try gpa.alloc(i8, n * k);
    defer gpa.free(q);
    for (q) |*v| v.* = rnd.int(i8);
    q[0] = -128;
    q[n * k - 1] = 127;
    const scale = try gpa.alloc(f32, n);
    defer gpa.free(scale);
    const bias = try gpa.alloc(f32, n);
    defer gpa.free(bias);
    for (scale, bias, 0..) |*s, *b, i| {
        s.* = 0.001 * @as(f32, @floatFromInt(i % 7 + 1));
        b.* = @as(f32, @floatFromInt(i % 5)) - 2;
    }
    const len = try packedLen(n, k);
    const blob = try gpa.alignedAlloc(u8, .@"64", len);
    defer gpa.free(blob);
    try pack(q.ptr, scale.ptr, bias.ptr, n, k, blob.ptr, len);
    const ldx = activationStride(k);
    const xq = try gpa.alloc(u8, m * ldx);
    defer gpa.free(xq);
    @memset(xq, 0);
    for (0..m) |t| for (0..k) |kk| {
        xq[t * ldx + kk] = rnd.uintAtMost(u8, int8.act_max);
    };
    xq[0] = int8.act_max;
    const x_scale = try gpa.alloc(f32, m);
    defer gpa.free(x_scale);
    const x_zero = try gpa.alloc(i32, m);
    defer gpa.free(x_zero);
    for (x_scale, x_zero, 0..) |*s, *z, t| {
        s.* = 0.02 + 0.001 * @as(f32, @floatFromInt(t % 3));
        z.* = @intCast(t % 128);
    }
    const y32 = try gpa.alloc(i32, m * n);
    defer gpa.free(y32);
    var args = Args{
        .w = try view(blob.ptr, len),
        .x = xq.ptr,
        .ldx = ldx,
        .m = m,
        .x_scale = x_scale.ptr,
        .x_zero = x_zero.ptr,
        .residual = null,
        .y = y32.ptr,
        .output = .s32,
        .requant = .{},
        .activation = .none,
    };
    forward(&args);
    const yf = try gpa.alloc(f32, m * n);
    defer gpa.free(yf);
    args.output = .f32;
    args.y = yf.ptr;
    forward(&args);
    for (0..m) |t| for (0..n) |c| {
        var want: i32 = 0;
        for (0..k) |kk| want += (@as(i32, xq[t * ldx + kk]) - x_zero[t]) * q[c * k + kk];
        try testing.expectEqual(want, y32[t * n + c]);
        const expect = @as(f64, @floatFromInt(want)) * x_scale[t] * scale[c] + bias[c];
        try testing.expectApproxEqAbs(expect, @as(f64, yf[t * n + c]), 1e-5 * (1 + @abs(expect)));
    };
}

test "gemm_i8 matches the naive sum on odd shapes" {
    try checkShape(1, 1, 1, 1);
    try checkShape(7, 17, 5, 2);
    try checkShape(13, 33, 64, 3);
    try checkShape(6, 16, 3, 4);
}

test "gemm_i8 on two threads, by panels and by rows" {
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkShape(20, 64, 50, 5);
    try checkShape(20, 9, 50, 6);
}

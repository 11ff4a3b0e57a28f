//! fp32 4x1-block sparse format (the block kernel of `spmm_f32`). Output channels are cut into
//! block rows of 4, as in the int8 format; a 4x1 block (4 channels x 1 input channel) is kept
//! when any of its 4 weights is non-zero and stores its input channel and its 4 weights, zeros
//! included, so the kernel does one activation load per 4 channels instead of CSR's one per
//! non-zero. `sparse_format.f32Pack` picks this layout when the kept blocks are at least
//! `min_fill` full (a weight pruned in 4x1 blocks is 100% full; unstructured 90% about 29%).
//!
//!   Header | block_ptr u32[block_rows + 1] | block_k u32[blocks] | weights f32[blocks][4]
//!   | bias f32[4 * block_rows]
const std = @import("std");
const assert = std.debug.assert;
const sparse_format = @import("sparse_format.zig");

pub const block_height = sparse_format.block_height;
/// Least fraction of non-zero weights in the kept blocks for this layout to be chosen: below
/// it the padding zeros cost more multiply-adds than CSR's extra activation loads save.
pub const min_fill: f64 = 0.75;

const magic: u32 = 0x34424253; // "SBB4"
const format_version: u32 = 1;

pub const Error = sparse_format.Error;
const alignUp = sparse_format.alignUp;
const blockRows = sparse_format.blockRows;

pub const Header = extern struct {
    magic: u32,
    version: u32,
    n: u32,
    k: u32,
    block_rows: u32,
    reserved: u32,
    blocks: u64,
    block_ptr: u64,
    block_k: u64,
    weights: u64,
    bias: u64,
    total: u64,
};

fn layout(n: usize, k: usize, blocks: u64) Error!Header {
    if (n > std.math.maxInt(u32) - block_height or k > std.math.maxInt(u32)) return error.TooLarge;
    if (blocks > std.math.maxInt(u32)) return error.TooLarge;
    const rows: u64 = blockRows(n);
    var h: Header = .{
        .magic = magic,
        .version = format_version,
        .n = @intCast(n),
        .k = @intCast(k),
        .block_rows = @intCast(rows),
        .reserved = 0,
        .blocks = blocks,
        .block_ptr = alignUp(@sizeOf(Header)),
        .block_k = 0,
        .weights = 0,
        .bias = 0,
        .total = 0,
    };
    h.block_k = alignUp(h.block_ptr + 4 * (rows + 1));
    h.weights = alignUp(h.block_k + 4 * blocks);
    h.bias = alignUp(h.weights + 16 * blocks);
    h.total = alignUp(h.bias + 16 * rows);
    return h;
}

/// Bytes of the block blob for w f32 [n, k] with `blocks` kept blocks.
pub fn packedLen(n: usize, k: usize, blocks: u64) Error!usize {
    assert(n >= 1 and k >= 1);
    return (try layout(n, k, blocks)).total;
}

/// Typed views of a block blob.
pub const View = struct {
    header: *const Header,
    block_ptr: [*]const u32,
    block_k: [*]const u32,
    /// Block b's weights for channels 4 * br + 0..3.
    weights: [*]const [4]f32,
    /// Padded to 4 * block_rows (zeros past n).
    bias: [*]const f32,
};

/// Whether `blob` starts with this layout's magic (then `view` decides whether it is valid).
pub fn isBlocks(blob: [*]align(64) const u8, blob_len: usize) bool {
    if (blob_len < @sizeOf(Header)) return false;
    return @as(*const Header, @ptrCast(blob)).magic == magic;
}

/// Validates a block blob's header (every offset as its counts call for, within `blob_len`)
/// and returns views of its sections. O(1), for every kernel call: `check` checks the tables
/// once, before a blob first reaches a kernel.
pub fn view(blob: [*]align(64) const u8, blob_len: usize) Error!View {
    if (blob_len < @sizeOf(Header)) return error.BadBlob;
    const h: *const Header = @ptrCast(blob);
    if (h.magic != magic or h.version != format_version) return error.BadBlob;
    const expect = layout(h.n, h.k, h.blocks) catch return error.BadBlob;
    if (!std.meta.eql(expect, h.*) or h.total > blob_len or h.n == 0 or h.k == 0) return error.BadBlob;
    return .{
        .header = h,
        .block_ptr = @ptrCast(@alignCast(blob + h.block_ptr)),
        .block_k = @ptrCast(@alignCast(blob + h.block_k)),
        .weights = @ptrCast(@alignCast(blob + h.weights)),
        .bias = @ptrCast(@alignCast(blob + h.bias)),
    };
}

/// `view`, and the tables the kernel trusts: block pointers from 0 to the block count that
/// never decrease, input channels below k.
pub fn check(blob: [*]align(64) const u8, blob_len: usize) Error!View {
    const v = try view(blob, blob_len);
    const h = v.header;
    if (!sparse_format.validOffsets(v.block_ptr[0 .. @as(usize, h.block_rows) + 1], h.blocks)) return error.BadBlob;
    if (!sparse_format.validIndices(u32, v.block_k[0..h.blocks], h.k, 1)) return error.BadBlob;
    return v;
}

/// Packs the `blocks` kept 4x1 blocks of w f32 [n, k] (as `sparse_format.stats` counts them)
/// and the optional bias [n] into `blob`.
pub fn pack(w: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, blocks: u64, blob: [*]align(64) u8, blob_len: usize) Error!void {
    const h = try layout(n, k, blocks);
    if (blob_len < h.total) return error.BufferTooSmall;
    @memset(blob[0..h.total], 0);
    @as(*Header, @ptrCast(blob)).* = h;
    const block_ptr: [*]u32 = @ptrCast(@alignCast(blob + h.block_ptr));
    const block_k: [*]u32 = @ptrCast(@alignCast(blob + h.block_k));
    const weights: [*][4]f32 = @ptrCast(@alignCast(blob + h.weights));
    const out_bias: [*]f32 = @ptrCast(@alignCast(blob + h.bias));
    var b: u32 = 0;
    for (0..h.block_rows) |br| {
        block_ptr[br] = b;
        for (0..k) |kk| {
            if (sparse_format.blockIsZero(f32, w, n, k, br, kk)) continue;
            block_k[b] = @intCast(kk);
            for (0..block_height) |r| {
                const row = br * block_height + r;
                weights[b][r] = if (row < n) w[row * k + kk] else 0;
            }
            b += 1;
        }
    }
    block_ptr[h.block_rows] = b;
    assert(b == blocks);
    if (bias) |src| @memcpy(out_bias[0..n], src[0..n]);
}

/// Expands a block blob back to w [n, k] and bias [n].
pub fn unpack(blob: [*]align(64) const u8, blob_len: usize, w: [*]f32, bias: [*]f32) Error!void {
    const v = try check(blob, blob_len);
    const n: usize = v.header.n;
    const k: usize = v.header.k;
    @memset(w[0 .. n * k], 0);
    for (0..v.header.block_rows) |br| {
        for (v.block_ptr[br]..v.block_ptr[br + 1]) |b| {
            for (0..block_height) |r| {
                const row = br * block_height + r;
                if (row < n) w[row * k + v.block_k[b]] = v.weights[b][r];
            }
        }
    }
    @memcpy(bias[0..n], v.bias[0..n]);
}

// ---- tests ----

const testing = std.testing;

test "block blob round-trips, with a short last block row" {
    const n = 10;
    const k = 7;
    var w: [n * k]f32 = @splat(0);
    // Blocks (br, kk) kept: (0, 1), (0, 5), (1, 0), (2, 6); (2, *) covers rows 8 and 9 only.
    w[2 * k + 1] = 1.5;
    w[0 * k + 5] = -2;
    w[3 * k + 5] = 3;
    w[5 * k + 0] = 4;
    w[9 * k + 6] = -5;
    const s = sparse_format.stats(f32, &w, n, k);
    try testing.expectEqual(@as(u64, 4), s.blocks - s.zero_blocks);
    var blob: [2048]u8 align(64) = undefined;
    const len = try packedLen(n, k, 4);
    var bias: [n]f32 = undefined;
    for (&bias, 0..) |*b, i| b.* = @floatFromInt(i);
    try pack(&w, &bias, n, k, 4, &blob, len);
    try testing.expect(isBlocks(&blob, len));
    const v = try view(&blob, len);
    try testing.expectEqualSlices(u32, &.{ 0, 2, 3, 4 }, v.block_ptr[0..4]);
    try testing.expectEqualSlices(u32, &.{ 1, 5, 0, 6 }, v.block_k[0..4]);
    var back: [n * k]f32 = undefined;
    var bias_back: [n]f32 = undefined;
    try unpack(&blob, len, &back, &bias_back);
    try testing.expectEqualSlices(f32, &w, &back);
    try testing.expectEqualSlices(f32, &bias, &bias_back);
}

test "a corrupt block blob is refused: its header per call, its tables by check" {
    const n = 4;
    const k = 3;
    const w: [n * k]f32 = @splat(1);
    var blob: [1024]u8 align(64) = undefined;
    const len = try packedLen(n, k, 3);
    try pack(&w, null, n, k, 3, &blob, len);
    _ = try view(&blob, len);
    try testing.expectError(error.BadBlob, view(&blob, len - 64));
    const h: *Header = @ptrCast(&blob);
    const block_k: [*]u32 = @ptrCast(@alignCast(&blob[@intCast(h.block_k)]));
    block_k[1] = k; // an index past the input width: the header alone still passes
    _ = try view(&blob, len);
    try testing.expectError(error.BadBlob, check(&blob, len));
    block_k[1] = 0;
    _ = try check(&blob, len);
    h.bias += 64; // a section moved: the header no longer matches its layout
    try testing.expectError(error.BadBlob, view(&blob, len));
}

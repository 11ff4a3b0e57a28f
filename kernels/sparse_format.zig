//! Packed sparse weight formats and the sparsity pattern checker.
//!
//! int8 4x1 blocks (`spmm_i8`): W is s8 [n, k] (torch Linear layout) with a per-output-channel
//! scale. Output channels are cut into block rows of 4; a 4x1 block (4 channels x 1 input
//! channel) is kept when any of its 4 weights is non-zero. The kept blocks of a block row are
//! taken 4 at a time along k into *groups*: a group holds 4 input-channel indices and 16 weight
//! bytes, laid out so that each output channel's 4 weights form one dword (one dot-product step
//! of the kernel). A short last group is padded with zero weights that repeat a real index.
//!
//! One 64-byte aligned blob holds everything a layer needs:
//!   I8Header | group_ptr u32[block_rows + 1] | group_k u16[groups][4] | weights i8[groups][4][4]
//!   | scale f32[rows] | wsum i32[rows] | bias f32[rows]      (rows = 4 * block_rows)
//! `wsum[c]` is the sum of channel c's weights, used to fold the activation zero point in.
//! `group_k` stores k * `k_unit` (8): the kernel's byte offset into a packed activation chunk
//! (32 bytes per k) is then one scaled-index address, with no shift in the hot loop. Hence
//! k <= 8191.
//!
//! fp32 unstructured (`spmm_f32`): CSR, one output channel per row, entries in k order.
//!   F32Header | row_ptr u32[n + 1] | col u32[nnz] | value f32[nnz] | bias f32[n]
//! fp32 weights pruned in 4x1 blocks get the block layout of `sparse_f32_blocks.zig` instead
//! (`f32Pack` picks it by how full the kept blocks are); the blob's magic tells them apart.
const std = @import("std");
const assert = std.debug.assert;
const f32_blocks = @import("sparse_f32_blocks.zig");

pub const block_height: usize = 4;
pub const group_blocks: usize = 4;
/// `group_k` holds k times this.
pub const k_unit: usize = 8;
/// Largest k of the int8 format (indices are u16 multiples of `k_unit`).
pub const max_k_i8: usize = 65535 / k_unit;

const magic_i8: u32 = 0x38494253; // "SBI8"
const magic_f32: u32 = 0x33464253; // "SBF3"
const format_version: u32 = 1;

pub const Error = error{ BadBlob, TooLarge, BufferTooSmall };

pub const I8Header = extern struct {
    magic: u32,
    version: u32,
    n: u32,
    k: u32,
    block_rows: u32,
    groups: u32,
    blocks: u32,
    reserved: u32,
    group_ptr: u64,
    group_k: u64,
    weights: u64,
    scale: u64,
    wsum: u64,
    bias: u64,
    total: u64,
};

pub const F32Header = extern struct {
    magic: u32,
    version: u32,
    n: u32,
    k: u32,
    nnz: u64,
    row_ptr: u64,
    col: u64,
    value: u64,
    bias: u64,
    total: u64,
};

pub fn alignUp(x: u64) u64 {
    return std.mem.alignForward(u64, x, 64);
}

pub fn blockRows(n: usize) usize {
    return (n + block_height - 1) / block_height;
}

/// Whether the 4x1 block at block row `br`, input channel `kk` of w [n, k] is all zeros.
pub fn blockIsZero(comptime T: type, w: [*]const T, n: usize, k: usize, br: usize, kk: usize) bool {
    const r0 = br * block_height;
    for (r0..@min(r0 + block_height, n)) |r| {
        if (w[r * k + kk] != 0) return false;
    }
    return true;
}

/// Non-zero 4x1 blocks of block row `br`.
fn blockRowBlocks(q: [*]const i8, n: usize, k: usize, br: usize) usize {
    var count: usize = 0;
    for (0..k) |kk| count += @intFromBool(!blockIsZero(i8, q, n, k, br, kk));
    return count;
}

fn i8Layout(n: usize, k: usize, groups: u64, blocks: u64) Error!I8Header {
    if (k > max_k_i8 or n > std.math.maxInt(u32) - 4 or groups > std.math.maxInt(u32)) return error.TooLarge;
    const block_rows = blockRows(n);
    const rows: u64 = block_rows * block_height;
    var h: I8Header = .{
        .magic = magic_i8,
        .version = format_version,
        .n = @intCast(n),
        .k = @intCast(k),
        .block_rows = @intCast(block_rows),
        .groups = @intCast(groups),
        .blocks = @intCast(blocks),
        .reserved = 0,
        .group_ptr = alignUp(@sizeOf(I8Header)),
        .group_k = 0,
        .weights = 0,
        .scale = 0,
        .wsum = 0,
        .bias = 0,
        .total = 0,
    };
    h.group_k = alignUp(h.group_ptr + 4 * (block_rows + 1));
    h.weights = alignUp(h.group_k + 2 * group_blocks * groups);
    h.scale = alignUp(h.weights + block_height * group_blocks * groups);
    h.wsum = alignUp(h.scale + 4 * rows);
    h.bias = alignUp(h.wsum + 4 * rows);
    h.total = alignUp(h.bias + 4 * rows);
    return h;
}

/// Bytes of the int8 blob for q s8 [n, k]; scans q for its non-zero blocks.
pub fn i8PackedLen(q: [*]const i8, n: usize, k: usize) Error!usize {
    assert(n >= 1 and k >= 1);
    var groups: u64 = 0;
    var blocks: u64 = 0;
    for (0..blockRows(n)) |br| {
        const b = blockRowBlocks(q, n, k, br);
        blocks += b;
        groups += (b + group_blocks - 1) / group_blocks;
    }
    return (try i8Layout(n, k, groups, blocks)).total;
}

/// Packs q s8 [n, k] with per-channel `scale` [n] and optional `bias` [n] into `blob`
/// (`i8PackedLen` bytes, 64-byte aligned).
pub fn i8Pack(
    q: [*]const i8,
    scale: [*]const f32,
    bias: ?[*]const f32,
    n: usize,
    k: usize,
    blob: [*]align(64) u8,
    blob_len: usize,
) Error!void {
    assert(n >= 1 and k >= 1);
    const total = try i8PackedLen(q, n, k);
    if (blob_len < total) return error.BufferTooSmall;
    var groups: u64 = 0;
    var blocks: u64 = 0;
    for (0..blockRows(n)) |br| {
        const b = blockRowBlocks(q, n, k, br);
        blocks += b;
        groups += (b + group_blocks - 1) / group_blocks;
    }
    const h = try i8Layout(n, k, groups, blocks);
    @memset(blob[0..total], 0);
    @as(*I8Header, @ptrCast(blob)).* = h;
    const v = view(blob, blob_len) catch unreachable;

    var g: u32 = 0;
    for (0..h.block_rows) |br| {
        v.group_ptr[br] = g;
        var slot: usize = 0; // position within the current group
        var last_k: u16 = 0;
        for (0..k) |kk| {
            if (blockIsZero(i8, q, n, k, br, kk)) continue;
            last_k = @intCast(kk * k_unit);
            v.group_k[g * group_blocks + slot] = last_k;
            for (0..block_height) |r| {
                const row = br * block_height + r;
                const w: i8 = if (row < n) q[row * k + kk] else 0;
                v.weights[(g * block_height + r) * group_blocks + slot] = w;
            }
            slot += 1;
            if (slot == group_blocks) {
                slot = 0;
                g += 1;
            }
        }
        if (slot != 0) {
            // Pad with zero weights at a real index: the products vanish, reads stay in range.
            while (slot < group_blocks) : (slot += 1) v.group_k[g * group_blocks + slot] = last_k;
            g += 1;
        }
    }
    v.group_ptr[h.block_rows] = g;
    assert(g == h.groups);
    for (0..h.block_rows * block_height) |row| {
        if (row >= n) continue;
        v.scale[row] = scale[row];
        v.bias[row] = if (bias) |b| b[row] else 0;
        var sum: i32 = 0;
        for (0..k) |kk| sum += q[row * k + kk];
        v.wsum[row] = sum;
    }
}

/// Typed views of an int8 blob.
pub const I8View = struct {
    header: *const I8Header,
    group_ptr: [*]u32,
    group_k: [*]u16,
    weights: [*]i8,
    scale: [*]f32,
    wsum: [*]i32,
    bias: [*]f32,
};

/// Validates an int8 blob's header (every offset is the one its counts call for, within
/// `blob_len`) and returns views of its sections. O(1), for every kernel call: the tables the
/// offsets lead to are checked once, by `checkI8`, before a blob first reaches a kernel.
pub fn view(blob: [*]align(64) u8, blob_len: usize) Error!I8View {
    if (blob_len < @sizeOf(I8Header)) return error.BadBlob;
    const h: *const I8Header = @ptrCast(blob);
    if (h.magic != magic_i8 or h.version != format_version) return error.BadBlob;
    const expect = i8Layout(h.n, h.k, h.groups, h.blocks) catch return error.BadBlob;
    if (!std.meta.eql(expect, h.*) or h.total > blob_len or h.n == 0 or h.k == 0) return error.BadBlob;
    return .{
        .header = h,
        .group_ptr = @ptrCast(@alignCast(blob + h.group_ptr)),
        .group_k = @ptrCast(@alignCast(blob + h.group_k)),
        .weights = @ptrCast(blob + h.weights),
        .scale = @ptrCast(@alignCast(blob + h.scale)),
        .wsum = @ptrCast(@alignCast(blob + h.wsum)),
        .bias = @ptrCast(@alignCast(blob + h.bias)),
    };
}

/// `view`, and the tables the kernel indexes with: group pointers that start at 0, never
/// decrease and end at the group count, and input-channel indices below k (whole multiples of
/// `k_unit`). A blob that passes cannot make `spmm_i8` read outside its blob or activations.
pub fn checkI8(blob: [*]align(64) u8, blob_len: usize) Error!I8View {
    const v = try view(blob, blob_len);
    const h = v.header;
    if (h.blocks > group_blocks * @as(u64, h.groups)) return error.BadBlob;
    if (!validOffsets(v.group_ptr[0 .. h.block_rows + 1], h.groups)) return error.BadBlob;
    const indices = v.group_k[0 .. group_blocks * @as(usize, h.groups)];
    if (!validIndices(u16, indices, @as(usize, h.k) * k_unit, k_unit)) return error.BadBlob;
    return v;
}

/// Whether a pointer table starts at 0, never decreases, and ends at `count`. No early exit,
/// so it vectorizes.
pub fn validOffsets(offsets: []const u32, count: u64) bool {
    assert(offsets.len >= 1);
    if (offsets[0] != 0 or offsets[offsets.len - 1] != count) return false;
    var descents: u32 = 0;
    for (offsets[0 .. offsets.len - 1], offsets[1..]) |a, b| descents |= @intFromBool(a > b);
    return descents == 0;
}

/// Whether every index is below `limit` and a multiple of `unit` (a power of two). No early
/// exit, so it vectorizes.
pub fn validIndices(comptime T: type, indices: []const T, limit: usize, unit: T) bool {
    assert(unit >= 1 and unit & (unit - 1) == 0);
    var largest: T = 0;
    var misaligned: T = 0;
    for (indices) |i| {
        largest = @max(largest, i);
        misaligned |= i & (unit - 1);
    }
    return indices.len == 0 or (largest < limit and misaligned == 0);
}

/// Expands an int8 blob back to q s8 [n, k], scale [n] and bias [n].
pub fn i8Unpack(blob: [*]align(64) u8, blob_len: usize, q: [*]i8, scale: [*]f32, bias: [*]f32) Error!void {
    const v = try checkI8(blob, blob_len);
    const n: usize = v.header.n;
    const k: usize = v.header.k;
    @memset(q[0 .. n * k], 0);
    for (0..v.header.block_rows) |br| {
        for (v.group_ptr[br]..v.group_ptr[br + 1]) |g| {
            for (0..group_blocks) |slot| {
                const kk: usize = v.group_k[g * group_blocks + slot] / k_unit;
                for (0..block_height) |r| {
                    const row = br * block_height + r;
                    const w = v.weights[(g * block_height + r) * group_blocks + slot];
                    if (row < n and w != 0) q[row * k + kk] = w;
                }
            }
        }
    }
    for (0..n) |row| {
        scale[row] = v.scale[row];
        bias[row] = v.bias[row];
    }
}

// ---- fp32 CSR ----

fn f32Layout(n: usize, k: usize, nnz: u64) Error!F32Header {
    if (n > std.math.maxInt(u32) - 1 or k > std.math.maxInt(u32) or nnz > std.math.maxInt(u32)) return error.TooLarge;
    var h: F32Header = .{
        .magic = magic_f32,
        .version = format_version,
        .n = @intCast(n),
        .k = @intCast(k),
        .nnz = nnz,
        .row_ptr = alignUp(@sizeOf(F32Header)),
        .col = 0,
        .value = 0,
        .bias = 0,
        .total = 0,
    };
    h.col = alignUp(h.row_ptr + 4 * (n + 1));
    h.value = alignUp(h.col + 4 * nnz);
    h.bias = alignUp(h.value + 4 * nnz);
    h.total = alignUp(h.bias + 4 * n);
    return h;
}

/// Non-zeros and kept 4x1 blocks of w f32 [n, k], and the layout they call for.
const F32Counts = struct {
    nnz: u64,
    blocks: u64,

    fn of(w: [*]const f32, n: usize, k: usize) F32Counts {
        const s = stats(f32, w, n, k);
        return .{ .nnz = s.elements - s.zero_elements, .blocks = s.blocks - s.zero_blocks };
    }

    /// The block layout when its kept blocks are at least `min_fill` full.
    fn useBlocks(self: F32Counts) bool {
        const slots: f64 = @floatFromInt(4 * self.blocks);
        return self.blocks > 0 and @as(f64, @floatFromInt(self.nnz)) >= f32_blocks.min_fill * slots;
    }
};

/// Bytes of the fp32 blob for w f32 [n, k]: 4x1 blocks or CSR, as `f32Pack` writes it.
pub fn f32PackedLen(w: [*]const f32, n: usize, k: usize) Error!usize {
    assert(n >= 1 and k >= 1);
    const counts = F32Counts.of(w, n, k);
    if (counts.useBlocks()) return f32_blocks.packedLen(n, k, counts.blocks);
    return (try f32Layout(n, k, counts.nnz)).total;
}

/// An fp32 blob's weights in either layout.
pub const F32Weights = union(enum) {
    csr: F32View,
    blocks: f32_blocks.View,
};

/// Validates the header of an fp32 blob of either layout (told apart by its magic); O(1), for
/// every kernel call (`checkF32Weights` checks the tables once).
pub fn viewF32Weights(blob: [*]align(64) u8, blob_len: usize) Error!F32Weights {
    if (f32_blocks.isBlocks(blob, blob_len)) return .{ .blocks = try f32_blocks.view(blob, blob_len) };
    return .{ .csr = try viewF32(blob, blob_len) };
}

/// `viewF32Weights`, and the tables the kernel indexes with (`f32_blocks.check`, `checkF32`).
pub fn checkF32Weights(blob: [*]align(64) u8, blob_len: usize) Error!F32Weights {
    if (f32_blocks.isBlocks(blob, blob_len)) return .{ .blocks = try f32_blocks.check(blob, blob_len) };
    return .{ .csr = try checkF32(blob, blob_len) };
}

/// Typed views of an fp32 blob.
pub const F32View = struct {
    header: *const F32Header,
    row_ptr: [*]u32,
    col: [*]u32,
    value: [*]f32,
    bias: [*]f32,
};

/// Validates an fp32 CSR blob's header (every offset as its counts call for, within
/// `blob_len`) and returns views of its sections; O(1).
pub fn viewF32(blob: [*]align(64) u8, blob_len: usize) Error!F32View {
    if (blob_len < @sizeOf(F32Header)) return error.BadBlob;
    const h: *const F32Header = @ptrCast(blob);
    if (h.magic != magic_f32 or h.version != format_version) return error.BadBlob;
    const expect = f32Layout(h.n, h.k, h.nnz) catch return error.BadBlob;
    if (!std.meta.eql(expect, h.*) or h.total > blob_len or h.n == 0 or h.k == 0) return error.BadBlob;
    return .{
        .header = h,
        .row_ptr = @ptrCast(@alignCast(blob + h.row_ptr)),
        .col = @ptrCast(@alignCast(blob + h.col)),
        .value = @ptrCast(@alignCast(blob + h.value)),
        .bias = @ptrCast(@alignCast(blob + h.bias)),
    };
}

/// `viewF32`, and its tables: row pointers from 0 to nnz that never decrease, columns below k.
pub fn checkF32(blob: [*]align(64) u8, blob_len: usize) Error!F32View {
    const v = try viewF32(blob, blob_len);
    const h = v.header;
    if (!validOffsets(v.row_ptr[0 .. @as(usize, h.n) + 1], h.nnz)) return error.BadBlob;
    if (!validIndices(u32, v.col[0..h.nnz], h.k, 1)) return error.BadBlob;
    return v;
}

/// Packs w f32 [n, k] (and optional bias [n]) into an fp32 blob: its kept 4x1 blocks when they
/// are full enough (`F32Counts.useBlocks`), else its non-zeros in CSR.
pub fn f32Pack(w: [*]const f32, bias: ?[*]const f32, n: usize, k: usize, blob: [*]align(64) u8, blob_len: usize) Error!void {
    const counts = F32Counts.of(w, n, k);
    if (counts.useBlocks()) return f32_blocks.pack(w, bias, n, k, counts.blocks, blob, blob_len);
    const nnz = counts.nnz;
    const total = (try f32Layout(n, k, nnz)).total;
    if (blob_len < total) return error.BufferTooSmall;
    @memset(blob[0..total], 0);
    @as(*F32Header, @ptrCast(blob)).* = try f32Layout(n, k, nnz);
    const v = viewF32(blob, blob_len) catch unreachable;
    var e: u32 = 0;
    for (0..n) |row| {
        v.row_ptr[row] = e;
        for (0..k) |kk| {
            const x = w[row * k + kk];
            if (x == 0) continue;
            v.col[e] = @intCast(kk);
            v.value[e] = x;
            e += 1;
        }
        v.bias[row] = if (bias) |b| b[row] else 0;
    }
    v.row_ptr[n] = e;
}

/// Expands an fp32 blob back to w [n, k] and bias [n].
pub fn f32Unpack(blob: [*]align(64) u8, blob_len: usize, w: [*]f32, bias: [*]f32) Error!void {
    if (f32_blocks.isBlocks(blob, blob_len)) return f32_blocks.unpack(blob, blob_len, w, bias);
    const v = try checkF32(blob, blob_len);
    const n: usize = v.header.n;
    const k: usize = v.header.k;
    @memset(w[0 .. n * k], 0);
    for (0..n) |row| {
        for (v.row_ptr[row]..v.row_ptr[row + 1]) |e| w[row * k + v.col[e]] = v.value[e];
        bias[row] = v.bias[row];
    }
}

// ---- pattern checker ----

/// Counts of a weight matrix's sparsity pattern.
pub const Stats = extern struct {
    elements: u64,
    zero_elements: u64,
    /// 4x1 blocks: 4 consecutive output channels (rows) x 1 input channel.
    blocks: u64,
    zero_blocks: u64,
};

/// Element and 4x1-block sparsity of w [n, k] (f32 or i8); a short last block row counts its
/// blocks like full ones.
pub fn stats(comptime T: type, w: [*]const T, n: usize, k: usize) Stats {
    assert(n >= 1 and k >= 1);
    var s = Stats{ .elements = n * k, .zero_elements = 0, .blocks = blockRows(n) * k, .zero_blocks = 0 };
    for (w[0 .. n * k]) |x| s.zero_elements += @intFromBool(x == 0);
    for (0..blockRows(n)) |br| {
        for (0..k) |kk| s.zero_blocks += @intFromBool(blockIsZero(T, w, n, k, br, kk));
    }
    return s;
}

// ---- tests ----

const testing = std.testing;

fn randomPattern(q: []i8, n: usize, k: usize, keep_percent: u32, seed: u64) void {
    var prng = std.Random.DefaultPrng.init(seed);
    const rnd = prng.random();
    for (0..blockRows(n)) |br| for (0..k) |kk| {
        const keep = rnd.uintLessThan(u32, 100) < keep_percent;
        for (0..block_height) |r| {
            const row = br * block_height + r;
            if (row >= n) continue;
            q[row * k + kk] = if (keep) rnd.int(i8) else 0;
        }
    };
}

test "int8 blob round-trips and groups blocks by four" {
    const n = 11;
    const k = 37;
    var q: [n * k]i8 = undefined;
    randomPattern(&q, n, k, 30, 7);
    q[0] = -128;
    q[1] = 127;
    var scale: [n]f32 = undefined;
    var bias: [n]f32 = undefined;
    for (0..n) |i| {
        scale[i] = 0.01 * @as(f32, @floatFromInt(i + 1));
        bias[i] = @floatFromInt(i);
    }
    const len = try i8PackedLen(&q, n, k);
    var blob: [8192]u8 align(64) = undefined;
    try i8Pack(&q, &scale, &bias, n, k, &blob, blob.len);
    const v = try view(&blob, len);
    try testing.expectEqual(@as(u32, 3), v.header.block_rows);
    const s = stats(i8, &q, n, k);
    try testing.expectEqual(s.blocks - s.zero_blocks, v.header.blocks);
    for (0..3) |br| {
        const groups = v.group_ptr[br + 1] - v.group_ptr[br];
        try testing.expectEqual((blockRowBlocks(&q, n, k, br) + 3) / 4, groups);
    }
    var back: [n * k]i8 = undefined;
    var scale2: [n]f32 = undefined;
    var bias2: [n]f32 = undefined;
    try i8Unpack(&blob, len, &back, &scale2, &bias2);
    try testing.expectEqualSlices(i8, &q, &back);
    try testing.expectEqualSlices(f32, &scale, &scale2);
    try testing.expectEqualSlices(f32, &bias, &bias2);
    for (0..n) |row| {
        var sum: i32 = 0;
        for (0..k) |kk| sum += q[row * k + kk];
        try testing.expectEqual(sum, v.wsum[row]);
    }
    try testing.expectError(error.BufferTooSmall, i8Pack(&q, &scale, &bias, n, k, &blob, len - 1));
    blob[0] ^= 1;
    try testing.expectError(error.BadBlob, view(&blob, len));
}

test "fp32 blob round-trips" {
    const n = 9;
    const k = 23;
    var w: [n * k]f32 = undefined;
    for (&w, 0..) |*x, i| x.* = if (i % 3 == 0) @as(f32, @floatFromInt(i)) - 50 else 0;
    var blob: [4096]u8 align(64) = undefined;
    const len = try f32PackedLen(&w, n, k);
    try f32Pack(&w, null, n, k, &blob, blob.len);
    var back: [n * k]f32 = undefined;
    var bias: [n]f32 = undefined;
    try f32Unpack(&blob, len, &back, &bias);
    try testing.expectEqualSlices(f32, &w, &back);
    for (bias) |b| try testing.expectEqual(@as(f32, 0), b);
}

test "fp32 packing picks 4x1 blocks for a block-pruned weight and CSR for a scattered one" {
    const n = 8;
    const k = 16;
    var w: [n * k]f32 = @splat(0);
    // Block-pruned: input channels 3 and 9 kept in both block rows, every weight non-zero.
    for (0..n) |row| for ([_]usize{ 3, 9 }) |kk| {
        w[row * k + kk] = @as(f32, @floatFromInt(row + kk)) - 4.5;
    };
    var blob: [4096]u8 align(64) = undefined;
    var len = try f32PackedLen(&w, n, k);
    try f32Pack(&w, null, n, k, &blob, len);
    try testing.expect(try viewF32Weights(&blob, len) == .blocks);
    var back: [n * k]f32 = undefined;
    var bias: [n]f32 = undefined;
    try f32Unpack(&blob, len, &back, &bias);
    try testing.expectEqualSlices(f32, &w, &back);
    // Scattered: one non-zero per block, 25% full.
    @memset(&w, 0);
    for (0..n / 4) |br| w[(br * 4) * k + br] = 1;
    len = try f32PackedLen(&w, n, k);
    try f32Pack(&w, null, n, k, &blob, len);
    try testing.expect(try viewF32Weights(&blob, len) == .csr);
    try f32Unpack(&blob, len, &back, &bias);
    try testing.expectEqualSlices(f32, &w, &back);
}

test "stats counts elements and 4x1 blocks" {
    // 5 x 2: block rows {0..3}, {4}.
    const w = [_]f32{ 0, 1, 0, 0, 0, 0, 2, 0, 0, 0 };
    const s = stats(f32, &w, 5, 2);
    try testing.expectEqual(@as(u64, 10), s.elements);
    try testing.expectEqual(@as(u64, 8), s.zero_elements);
    try testing.expectEqual(@as(u64, 4), s.blocks);
    try testing.expectEqual(@as(u64, 2), s.zero_blocks);
}

test "table checks refuse every index or pointer a kernel could read out of range with" {
    try testing.expect(validOffsets(&[_]u32{ 0, 2, 2, 5 }, 5));
    try testing.expect(!validOffsets(&[_]u32{ 1, 2, 2, 5 }, 5)); // not from 0
    try testing.expect(!validOffsets(&[_]u32{ 0, 3, 2, 5 }, 5)); // decreasing
    try testing.expect(!validOffsets(&[_]u32{ 0, 2, 2, 6 }, 5)); // past the count
    try testing.expect(validIndices(u16, &[_]u16{ 0, 8, 16, 24 }, 32, 8));
    try testing.expect(!validIndices(u16, &[_]u16{ 0, 8, 32, 24 }, 32, 8)); // not below the limit
    try testing.expect(!validIndices(u16, &[_]u16{ 0, 9, 16, 24 }, 32, 8)); // off the grid
    try testing.expect(validIndices(u32, &[_]u32{}, 0, 1));
    // A packed int8 blob passes; one bad index or pointer in it does not.
    const n = 8;
    const k = 12;
    var q: [n * k]i8 = @splat(0);
    for (0..n) |row| q[row * k + (row * 5) % k] = @intCast(row + 1);
    const scale: [n]f32 = @splat(0.5);
    var blob: [4096]u8 align(64) = undefined;
    const len = try i8PackedLen(&q, n, k);
    try i8Pack(&q, &scale, null, n, k, &blob, len);
    const v = try checkI8(&blob, len);
    v.group_k[1] = k * k_unit;
    try testing.expectError(error.BadBlob, checkI8(&blob, len));
    v.group_k[1] = 0;
    _ = try checkI8(&blob, len);
    v.group_ptr[1] = v.header.groups + 1;
    try testing.expectError(error.BadBlob, checkI8(&blob, len));
}

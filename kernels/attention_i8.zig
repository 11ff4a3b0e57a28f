//! Multi-head self-attention with int8 products: the same operation as `attention.zig`
//!   O_h = softmax(Q_h K_h^T * scale + mask) V_h
//! with both products on the int8 dot-product step (`int8.dot4x16`: one zmm `vpdpbusd` per 64
//! MACs with VNNI, four times the fp32 FMA rate; `vpmaddubsw` pairs on AVX2). The softmax stays
//! fp32 (`attention.softmaxRows`). Per (batch, head):
//!   K_h  u8 per key, asymmetric (the kernels' activation codes, 0..int8.act_max), laid out as
//!        dwords of 4 consecutive features of one key: [head_pad / 4][seq_pad] x 4 bytes.
//!   Q    s8 per query row, symmetric (scale max|q| / 127), a tile of rows at a time, each
//!        dword broadcast from memory into the `vpdpbusd` (its signed operand);
//!        S = (acc - zero_k * qsum_q) * scale_q * scale_k * scale + mask.
//!   V_h  s8, symmetric per feature column, dwords of 4 consecutive keys of one feature:
//!        [seq_pad / 4][head_pad] x 4 bytes.
//!   P    exp(s - max) in (0, 1] to u8 codes rne(p * act_max), zero point 0; O = acc * scale_v
//!        / (act_max * row sum).
//! Error: each product carries the 8-bit (VNNI) or 7-bit rounding of its two operands, the
//! order of the int8 linears' own error; tests bound it against fp32 and the docs give the
//! embeddings' cosine (docs/BENCHMARKS.md).
//!
//! Envelope (BERT-Base, seq 128, head 64): 2 x 1 M MAC per head = 32 K zmm `vpdpbusd`, about
//! 9 us at one per cycle, against 36 us of fp32 FMA; quantizing K, V, Q and P is O(seq x head
//! + seq^2) element work, a few us.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const int8 = @import("int8.zig");
const attention = @import("attention.zig");
const epilogue = @import("int8_epilogue.zig");

const I32x16 = int8.I32x16;
const F16 = @Vector(16, f32);
const U8x16 = @Vector(16, u8);
/// Keys or features per register tile (one zmm of s32 sums).
const cols_tile: usize = 16;
/// Query rows per register tile.
const tile_rows = attention.tile_rows;
/// Query rows per score block.
const q_block = attention.q_block;
const act_max: f32 = @floatFromInt(int8.act_max);

fn roundUp(value: usize, multiple: usize) usize {
    return (value + multiple - 1) / multiple * multiple;
}

/// Byte offsets of one thread's scratch slot (64-byte aligned regions).
const Layout = struct {
    seq_pad: usize,
    head_pad: usize,
    kt: usize,
    kq: usize,
    k_scale: usize,
    k_zero: usize,
    vq: usize,
    v_scale: usize,
    qq: usize,
    scores: usize,
    mask_add: usize,
    inv_sum: usize,
    pq: usize,
    slot_bytes: usize,

    fn init(seq: usize, head_size: usize) Layout {
        const seq_pad = roundUp(seq, cols_tile);
        const head_pad = roundUp(head_size, cols_tile);
        var at: usize = 0;
        const Next = struct {
            fn take(offset: *usize, bytes: usize) usize {
                const begin = offset.*;
                offset.* = roundUp(begin + bytes, 64);
                return begin;
            }
        };
        return .{
            .seq_pad = seq_pad,
            .head_pad = head_pad,
            .kt = Next.take(&at, 4 * head_pad * seq_pad),
            .kq = Next.take(&at, head_pad * seq_pad),
            .k_scale = Next.take(&at, 4 * seq_pad),
            .k_zero = Next.take(&at, 4 * seq_pad),
            .vq = Next.take(&at, seq_pad * head_pad),
            .v_scale = Next.take(&at, 4 * head_pad),
            .qq = Next.take(&at, tile_rows * head_pad),
            .scores = Next.take(&at, 4 * q_block * seq_pad),
            .mask_add = Next.take(&at, 4 * seq_pad),
            .inv_sum = Next.take(&at, 4 * roundUp(q_block, cols_tile)),
            .pq = Next.take(&at, q_block * seq_pad),
            .slot_bytes = at,
        };
    }
};

/// Floats of scratch (64-byte aligned) for `threads` threads over sequences of `seq` tokens.
pub fn scratchLen(seq: usize, head_size: usize, threads: usize) usize {
    assert(seq >= 1 and seq <= attention.max_seq);
    assert(head_size >= 1 and head_size <= attention.max_head_size);
    assert(threads >= 1);
    return Layout.init(seq, head_size).slot_bytes / 4 * threads;
}

const Args = struct {
    problem: *const attention.Problem,
    scratch: [*]align(64) u8,
    slots: usize,
    layout: Layout,
    next_job: *std.atomic.Value(usize),
};

/// Computes the attention context of every (batch, head) into `problem.out`; `scratch`
/// (`scratchLen` floats for its threads) 64-byte aligned.
pub fn forward(problem: *const attention.Problem, scratch: [*]align(64) f32, scratch_len: usize) void {
    problem.check();
    const layout = Layout.init(problem.seq, problem.head_size);
    const slots = scratch_len * 4 / layout.slot_bytes;
    assert(slots >= 1);
    var next_job = std.atomic.Value(usize).init(0);
    const args = Args{ .problem = problem, .scratch = @ptrCast(scratch), .slots = slots, .layout = layout, .next_job = &next_job };
    pool.parallel(Args, &args, run);
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    if (ith >= args.slots) return;
    const thread = Thread{ .args = args, .slot = @alignCast(args.scratch + ith * args.layout.slot_bytes) };
    attention.claimHeads(Thread, &thread, args.problem, args.next_job, nth, head);
}

/// What one pool thread's head jobs use.
const Thread = struct {
    args: *const Args,
    slot: [*]align(64) u8,
};

/// A typed view of a scratch region.
fn region(comptime T: type, slot: [*]align(64) u8, offset: usize) [*]T {
    return @ptrCast(@alignCast(slot + offset));
}

/// One (batch, head) job; `next`, the job this thread runs after it, has its rows prefetched
/// while this one computes its scores.
fn head(thread: *const Thread, b: usize, h: usize, next: ?attention.HeadRows) void {
    const args = thread.args;
    const slot = thread.slot;
    const seq = args.problem.seq;
    const layout = args.layout;
    const row0 = b * seq;
    const column = h * args.problem.head_size;

    const mask_add = region(f32, slot, layout.mask_add);
    for (0..layout.seq_pad) |j| {
        mask_add[j] = if (j >= seq)
            -std.math.inf(f32)
        else if (args.problem.mask[row0 + j] != 0) 0.0 else args.problem.mask_value;
    }
    quantizeKeys(args, slot, row0, column);
    quantizeValues(args, slot, row0, column);

    const scores = region(f32, slot, layout.scores);
    const inv_sum = region(f32, slot, layout.inv_sum);
    var block_begin: usize = 0;
    while (block_begin < seq) : (block_begin += q_block) {
        const rows_in_block = @min(q_block, seq - block_begin);
        var i: usize = 0;
        while (i < rows_in_block) : (i += tile_rows) {
            const rows_in_tile = @min(tile_rows, rows_in_block - i);
            if (next) |n| n.prefetch(args.problem, block_begin + i, block_begin + i + rows_in_tile);
            switch (rows_in_tile) {
                inline 1...tile_rows => |rows| scoreTiles(rows, args, slot, row0 + block_begin + i, column, i),
                else => unreachable,
            }
        }
        var r: usize = 0;
        while (r + attention.softmax_rows <= rows_in_block) : (r += attention.softmax_rows) {
            attention.softmaxRows(attention.softmax_rows, scores + r * layout.seq_pad, layout.seq_pad, inv_sum + r);
        }
        while (r < rows_in_block) : (r += 1) attention.softmaxRows(1, scores + r * layout.seq_pad, layout.seq_pad, inv_sum + r);
        quantizeProbabilities(slot, layout, rows_in_block);
        i = 0;
        while (i < rows_in_block) : (i += tile_rows) {
            switch (@min(tile_rows, rows_in_block - i)) {
                inline 1...tile_rows => |rows| contextTiles(rows, args, slot, row0 + block_begin + i, column, i),
                else => unreachable,
            }
        }
    }
}

/// Round half to even per lane (|v| < 2^22).
inline fn rne(v: F16) I32x16 {
    const magic: F16 = @splat(12582912.0);
    return @intFromFloat((v + magic) - magic);
}

/// s8 codes clamp(rne(v * inv), -127, 127) per lane.
inline fn symmetricCodes(v: F16, inv: F16) I32x16 {
    return std.math.clamp(rne(v * inv), @as(I32x16, @splat(-127)), @as(I32x16, @splat(127)));
}

/// 127 / max per lane, 0 where max is 0 (an all-zero key or feature codes to 0).
inline fn symmetricInverse(max_abs: F16) F16 {
    return @select(f32, max_abs > @as(F16, @splat(0)), @as(F16, @splat(127)) / max_abs, @as(F16, @splat(0)));
}

/// Lane i of the result holds the low bytes of c[0][i], c[1][i], c[2][i], c[3][i], in order:
/// four codes per lane as `int8.dot4x16` reads them.
inline fn packQuads(c: [4]I32x16) I32x16 {
    const low: I32x16 = @splat(0xff);
    return (c[0] & low) | ((c[1] & low) << @splat(8)) | ((c[2] & low) << @splat(16)) | (c[3] << @splat(24));
}

/// K_h to u8 dwords [head_pad / 4][seq_pad] (4 features of one key each) with per-key scales
/// and zero points. K_h^T in fp32 first (`attention.transposeKeys`), so that keys are lanes:
/// the per-key parameters are per-lane ones and 4 feature rows pack into dwords without
/// shuffles. Padding keys code to 0 with scale 0; padding features to the key's zero point.
fn quantizeKeys(args: *const Args, slot: [*]align(64) u8, row0: usize, column: usize) void {
    const layout = args.layout;
    const seq_pad = layout.seq_pad;
    const kt = region(f32, slot, layout.kt);
    @memset(kt[0 .. layout.head_pad * seq_pad], 0);
    attention.transposeKeys(args.problem.k + row0 * args.problem.ld + column, args.problem.ld, args.problem.seq, args.problem.head_size, kt, seq_pad);
    const kq = region(I32x16, slot, layout.kq);
    const k_scale = region(F16, slot, layout.k_scale);
    const k_zero = region(I32x16, slot, layout.k_zero);
    const zeros: F16 = @splat(0);
    var block: usize = 0;
    while (block * cols_tile < seq_pad) : (block += 1) {
        const keys = kt + block * cols_tile;
        var lo = zeros;
        var hi = zeros;
        for (0..args.problem.head_size) |d| {
            const v: F16 = keys[d * seq_pad ..][0..cols_tile].*;
            lo = @min(lo, v);
            hi = @max(hi, v);
        }
        const scale = (hi - lo) / @as(F16, @splat(act_max));
        const ok = scale >= @as(F16, @splat(std.math.floatMin(f32)));
        const inv = @select(f32, ok, @as(F16, @splat(1)) / scale, zeros);
        const zero = std.math.clamp(rne(-lo * inv), @as(I32x16, @splat(0)), @as(I32x16, @splat(int8.act_max)));
        for (0..layout.head_pad / 4) |d4| {
            var c: [4]I32x16 = undefined;
            inline for (0..4) |i| {
                const v: F16 = keys[(4 * d4 + i) * seq_pad ..][0..cols_tile].*;
                c[i] = std.math.clamp(rne(v * inv) + zero, @as(I32x16, @splat(0)), @as(I32x16, @splat(int8.act_max)));
            }
            kq[d4 * seq_pad / cols_tile + block] = packQuads(c);
        }
        k_scale[block] = @select(f32, ok, scale, zeros);
        k_zero[block] = zero;
    }
}

/// V_h to s8 dwords [seq_pad / 4][head_pad] (4 keys of one feature each) with per-feature
/// scales, 16 features a time (features are lanes). The scales come from the unmasked keys only
/// (masked keys get probability 0 and code 0), so a text's result does not depend on the
/// padding it is batched with; a sequence with every key masked uses all (its probabilities are
/// uniform, as Hugging Face's are). Padding keys and features are 0.
fn quantizeValues(args: *const Args, slot: [*]align(64) u8, row0: usize, column: usize) void {
    const layout = args.layout;
    const vq = region(I32x16, slot, layout.vq);
    const v_scale = region(F16, slot, layout.v_scale);
    const values = args.problem.v + row0 * args.problem.ld + column;
    const mask = args.problem.mask + row0;
    var any_kept = false;
    for (mask[0..args.problem.seq]) |m| any_kept = any_kept or m != 0;
    var block: usize = 0;
    while (block * cols_tile < layout.head_pad) : (block += 1) {
        const c0 = block * cols_tile;
        const width = @min(cols_tile, args.problem.head_size - c0);
        var max_abs: F16 = @splat(0);
        for (0..args.problem.seq) |j| {
            if (any_kept and mask[j] == 0) continue;
            max_abs = @max(max_abs, @abs(epilogue.loadRow(values + j * args.problem.ld + c0, width)));
        }
        const inv = symmetricInverse(max_abs);
        for (0..layout.seq_pad / 4) |j4| {
            var c: [4]I32x16 = undefined;
            inline for (0..4) |i| {
                const j = 4 * j4 + i;
                const kept = j < args.problem.seq and (!any_kept or mask[j] != 0);
                c[i] = if (kept) symmetricCodes(epilogue.loadRow(values + j * args.problem.ld + c0, width), inv) else @splat(0);
            }
            vq[j4 * layout.head_pad / cols_tile + block] = packQuads(c);
        }
        v_scale[block] = max_abs / @as(F16, @splat(127));
    }
}

/// Quantizes `rows` query rows from `q_row` to s8 codes [rows][head_pad], symmetric per row
/// (padding features 0), with each row's scale and code sum.
fn quantizeQueries(comptime rows: usize, args: *const Args, qq: [*]i8, q_row: usize, column: usize, scale: *[rows]f32, sum: *[rows]i32) void {
    const head_pad = args.layout.head_pad;
    const chunks = head_pad / cols_tile;
    inline for (0..rows) |r| {
        const x = args.problem.q + (q_row + r) * args.problem.ld + column;
        var max_abs: F16 = @splat(0);
        for (0..chunks) |c| {
            const v = epilogue.loadRow(x + c * cols_tile, @min(cols_tile, args.problem.head_size - c * cols_tile));
            max_abs = @max(max_abs, @abs(v));
        }
        const top = @reduce(.Max, max_abs);
        const inv: F16 = @splat(if (top > 0) 127.0 / top else 0);
        var total: I32x16 = @splat(0);
        for (0..chunks) |c| {
            const v = epilogue.loadRow(x + c * cols_tile, @min(cols_tile, args.problem.head_size - c * cols_tile));
            const codes = symmetricCodes(v, inv);
            total += codes;
            const bytes: @Vector(cols_tile, i8) = @intCast(codes);
            qq[r * head_pad + c * cols_tile ..][0..cols_tile].* = bytes;
        }
        scale[r] = top / 127.0;
        sum[r] = @reduce(.Add, total);
    }
}

/// Scores of `rows` query rows against every key into the block's score rows from `block_row`.
fn scoreTiles(comptime rows: usize, args: *const Args, slot: [*]align(64) u8, q_row: usize, column: usize, block_row: usize) void {
    const layout = args.layout;
    const qq = region(i8, slot, layout.qq);
    var q_scale: [rows]f32 = undefined;
    var q_sum: [rows]i32 = undefined;
    quantizeQueries(rows, args, qq, q_row, column, &q_scale, &q_sum);
    const kq = region(u8, slot, layout.kq);
    const k_scale = region(f32, slot, layout.k_scale);
    const k_zero = region(i32, slot, layout.k_zero);
    const mask_add = region(f32, slot, layout.mask_add);
    const scores = region(f32, slot, layout.scores) + block_row * layout.seq_pad;
    var j0: usize = 0;
    while (j0 < layout.seq_pad) : (j0 += cols_tile) {
        const acc = dotTile(rows, .signed, @ptrCast(qq), layout.head_pad, kq + 4 * j0, 4 * layout.seq_pad, layout.head_pad / 4);
        const ks: F16 = k_scale[j0..][0..cols_tile].*;
        const kz: I32x16 = k_zero[j0..][0..cols_tile].*;
        const m: F16 = mask_add[j0..][0..cols_tile].*;
        inline for (0..rows) |r| {
            const exact: F16 = @floatFromInt(acc[r] -% kz *% @as(I32x16, @splat(q_sum[r])));
            const s = ks * @as(F16, @splat(q_scale[r] * args.problem.scale));
            scores[r * layout.seq_pad + j0 ..][0..cols_tile].* = @mulAdd(F16, exact, s, m);
        }
    }
}

/// The block's probabilities exp(s - max) in (0, 1] to u8 codes rne(p * act_max).
fn quantizeProbabilities(slot: [*]align(64) u8, layout: Layout, rows: usize) void {
    const scores = region(f32, slot, layout.scores);
    const pq = region(u8, slot, layout.pq);
    const top: F16 = @splat(act_max);
    const magic: F16 = @splat(12582912.0);
    for (0..rows) |r| {
        var j: usize = 0;
        while (j < layout.seq_pad) : (j += cols_tile) {
            const p: F16 = scores[r * layout.seq_pad + j ..][0..cols_tile].*;
            const codes: @Vector(cols_tile, i32) = @intFromFloat((p * top + magic) - magic);
            const bytes: @Vector(cols_tile, u8) = @intCast(codes);
            pq[r * layout.seq_pad + j ..][0..cols_tile].* = bytes;
        }
    }
}

/// Context rows: O = P V / row sum, written to the output at the head's columns.
fn contextTiles(comptime rows: usize, args: *const Args, slot: [*]align(64) u8, q_row: usize, column: usize, block_row: usize) void {
    const layout = args.layout;
    const pq = region(u8, slot, layout.pq) + block_row * layout.seq_pad;
    const vq = region(u8, slot, layout.vq);
    const v_scale = region(f32, slot, layout.v_scale);
    const inv_sum = region(f32, slot, layout.inv_sum) + block_row;
    var c0: usize = 0;
    while (c0 < args.problem.head_size) : (c0 += cols_tile) {
        const acc = dotTile(rows, .unsigned, pq, layout.seq_pad, vq + 4 * c0, 4 * layout.head_pad, layout.seq_pad / 4);
        const vs = @as(F16, v_scale[c0..][0..cols_tile].*) / @as(F16, @splat(act_max));
        const cols = @min(cols_tile, args.problem.head_size - c0);
        inline for (0..rows) |r| {
            const o: [cols_tile]f32 = @as(F16, @floatFromInt(acc[r])) * vs * @as(F16, @splat(inv_sum[r]));
            const dst = args.problem.out + (q_row + r) * args.problem.ld_out + column + c0;
            if (cols == cols_tile) {
                dst[0..cols_tile].* = o;
            } else {
                @memcpy(dst[0..cols], o[0..cols]);
            }
        }
    }
}

/// Which operand of `dotTile` is broadcast: the signed one (s8 rows of `a`, u8 blocks of `b`:
/// VNNI folds the broadcast into the `vpdpbusd`) or the unsigned one (u8 rows, s8 blocks).
const Broadcast = enum { signed, unsigned };

/// `rows` x 16 s32 tile: acc[r][c] = sum over `quads` of the dot of a's dword
/// a[r * lda + 4 q ..] with b's dword b[q * ldb + 4 c ..] (b rows of 16 dwords).
inline fn dotTile(comptime rows: usize, comptime broadcast: Broadcast, a: [*]const u8, lda: usize, b: [*]const u8, ldb: usize, quads: usize) [rows]I32x16 {
    var acc: [rows]I32x16 = @splat(@as(I32x16, @splat(0)));
    for (0..quads) |qd| {
        const bv: I32x16 = @bitCast(b[qd * ldb ..][0..64].*);
        inline for (0..rows) |r| {
            const word: I32x16 = @splat(std.mem.readInt(i32, a[r * lda + 4 * qd ..][0..4], .little));
            acc[r] = switch (broadcast) {
                .signed => int8.dot4x16(acc[r], bv, word),
                .unsigned => int8.dot4x16(acc[r], word, bv),
            };
        }
    }
    return acc;
}

// ---- tests ----

test "int8 attention stays within the int8 error of fp32 attention, padding and odd sizes" {
    const batch = 2;
    const seq = 37;
    const heads = 3;
    const hs = 24;
    const hidden = heads * hs;
    const ld = 3 * hidden;
    const gpa = std.testing.allocator;
    const qkv = try gpa.alloc(f32, batch * seq * ld);
    defer gpa.free(qkv);
    var prng = std.Random.DefaultPrng.init(5);
    for (qkv) |*x| x.* = prng.random().floatNorm(f32);
    var mask: [batch * seq]u8 = undefined;
    for (0..batch) |b| for (0..seq) |j| {
        mask[b * seq + j] = @intFromBool(j < seq - 11 * b);
    };
    const want = try gpa.alloc(f32, batch * seq * hidden);
    defer gpa.free(want);
    const got = try gpa.alloc(f32, batch * seq * hidden);
    defer gpa.free(got);
    const base: [*]const f32 = qkv.ptr;
    const scale = 1.0 / @sqrt(@as(f32, hs));
    const need32 = attention.scratchLen(seq, hs, 2);
    const scratch32 = try gpa.alloc(f32, need32);
    defer gpa.free(scratch32);
    var problem = attention.Problem{ .q = base, .k = base + hidden, .v = base + 2 * hidden, .ld = ld, .mask = &mask, .mask_value = -1e4, .batch = batch, .seq = seq, .heads = heads, .head_size = hs, .scale = scale, .out = want.ptr, .ld_out = hidden };
    attention.forward(&problem, scratch32.ptr, need32);
    const need = scratchLen(seq, hs, 2);
    const scratch = try gpa.alignedAlloc(f32, .@"64", need);
    defer gpa.free(scratch);
    @memset(scratch, std.math.nan(f32)); // nothing may be read before it is written
    problem.out = got.ptr;
    forward(&problem, scratch.ptr, need);
    var err: f64 = 0;
    var norm: f64 = 0;
    for (want, got) |w, g| {
        err += (w - g) * (w - g);
        norm += w * w;
    }
    // Relative RMS error: 8-bit (VNNI) or 7-bit codes on both products.
    const bound: f64 = if (int8.act_max == 255) 0.02 else 0.04;
    try std.testing.expect(@sqrt(err / norm) < bound);
}

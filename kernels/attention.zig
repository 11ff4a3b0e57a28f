//! Fused multi-head self-attention with an additive padding mask, one (batch, head) at a time:
//!   O_h = softmax(Q_h K_h^T * scale + mask) V_h
//! Q, K and V are [batch * seq, *] row-major with row stride `ld` (the fused QKV projection
//! gives ld = 3H with K and V at column offsets H and 2H; separate projections give ld = H);
//! head h owns columns [h * head_size, (h + 1) * head_size). O is [batch * seq, *] with row
//! stride `ld_out`, head h written at the same columns.
//!
//! The mask is one byte per (batch, key): non-zero keeps the key, zero adds `mask_value`
//! (Hugging Face adds `(1 - mask) * min` or -10000 to the scaled scores).
//!
//! Per (batch, head) job: K_h is transposed into scratch ([head_size, seq_pad]), then query
//! rows go in blocks of `q_block`: a score block [q_block, seq_pad] = Q K^T by register tiles of
//! `tile_rows` x 16, scale + mask, an exp pass (max-subtracted, row sums kept), and the
//! unnormalised probabilities times V by the same tiles, scaled by 1 / row sum on the store.
//!
//! Envelope (BERT-Base, seq 128, 12 heads): 2 x 128 x 128 x 64 MAC = 2.1 MFLOP x 2 per head,
//! 50 MFLOP per layer, about 0.3 ms per layer at 80 GFLOP/s on one core: 3-4% of the layer's
//! linear work. Scratch for one job at seq 128: K^T 32 KiB + scores 24 KiB, all in L2.
//! Jobs are taken dynamically by the pool threads; the caller plans one scratch slot per
//! thread (`scratchLen`), and a thread without a slot sits the call out.
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const vmath = @import("vmath.zig");
const lanes = @import("linear_f32.zig").lanes;
const transpose = @import("transpose.zig");

/// Columns per register tile: 2 AVX2 vectors, 1 AVX-512 vector, 4 SSE vectors.
const cols_tile: usize = 16;
const W = @Vector(cols_tile, f32);
/// Rows per register tile: rows x 16 accumulators must leave room for the B row and a broadcast.
pub const tile_rows: usize = switch (lanes) {
    4 => 3,
    8 => 6,
    else => 12,
};
/// Score rows the softmax works on at once.
pub const softmax_rows: usize = 4;
/// Query rows per score block.
pub const q_block: usize = 8 * tile_rows;
/// Longest sequence accepted (a score row of this many floats stays in L1).
pub const max_seq: usize = 8192;
/// Largest head size accepted.
pub const max_head_size: usize = 512;

fn roundUp(value: usize, multiple: usize) usize {
    return (value + multiple - 1) / multiple * multiple;
}

const Layout = struct {
    seq_pad: usize,
    head_pad: usize,
    kt: usize,
    scores: usize,
    mask_add: usize,
    inv_sum: usize,
    v_packed: usize,
    slot_len: usize,

    fn init(seq: usize, head_size: usize) Layout {
        const seq_pad = roundUp(seq, cols_tile);
        const head_pad = roundUp(head_size, cols_tile);
        var offset: usize = 0;
        const kt = offset;
        offset += roundUp(head_size * seq_pad, cols_tile);
        const scores = offset;
        offset += q_block * seq_pad;
        const mask_add = offset;
        offset += seq_pad;
        const inv_sum = offset;
        offset += roundUp(q_block, cols_tile);
        // V is copied into a zero-padded [seq, head_pad] block only when the head size is not
        // a multiple of the tile width (the tile would read the next head's columns).
        const v_packed = offset;
        if (head_size % cols_tile != 0) offset += seq * head_pad;
        return .{
            .seq_pad = seq_pad,
            .head_pad = head_pad,
            .kt = kt,
            .scores = scores,
            .mask_add = mask_add,
            .inv_sum = inv_sum,
            .v_packed = v_packed,
            .slot_len = roundUp(offset, cols_tile),
        };
    }
};

/// Floats of scratch for `threads` threads running attention over sequences of `seq` tokens.
pub fn scratchLen(seq: usize, head_size: usize, threads: usize) usize {
    assert(seq >= 1 and seq <= max_seq);
    assert(head_size >= 1 and head_size <= max_head_size);
    assert(threads >= 1);
    return Layout.init(seq, head_size).slot_len * threads;
}

/// One attention call's inputs and output (shared with `attention_i8.zig`): Q, K, V rows of
/// stride `ld`, the mask, the shape, and the output rows of stride `ld_out`. An `extern struct`:
/// the C ABI passes it by pointer (`ffi/structs.ts` writes it).
pub const Problem = extern struct {
    q: [*]const f32,
    k: [*]const f32,
    v: [*]const f32,
    ld: usize,
    mask: [*]const u8,
    mask_value: f32,
    batch: usize,
    seq: usize,
    heads: usize,
    head_size: usize,
    scale: f32,
    out: [*]f32,
    ld_out: usize,

    /// Asserts the shape invariants both kernels rely on (the C ABI checks them first).
    pub fn check(self: *const Problem) void {
        assert(self.batch >= 1 and self.seq >= 1 and self.seq <= max_seq);
        assert(self.heads >= 1 and self.head_size >= 1 and self.head_size <= max_head_size);
        assert(self.ld >= self.heads * self.head_size and self.ld_out >= self.heads * self.head_size);
        assert(std.math.isFinite(self.mask_value) and std.math.isFinite(self.scale));
    }
};

const Args = struct {
    problem: *const Problem,
    scratch: [*]f32,
    slots: usize,
    layout: Layout,
    next_job: *std.atomic.Value(usize),
};

/// Computes the attention context of every (batch, head) into `problem.out`.
pub fn forward(problem: *const Problem, scratch: [*]f32, scratch_len: usize) void {
    problem.check();
    const layout = Layout.init(problem.seq, problem.head_size);
    const slots = scratch_len / layout.slot_len;
    assert(slots >= 1);
    var next_job = std.atomic.Value(usize).init(0);
    const args = Args{ .problem = problem, .scratch = scratch, .slots = slots, .layout = layout, .next_job = &next_job };
    pool.parallel(Args, &args, run);
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    if (ith >= args.slots) return;
    const thread = Thread{ .args = args, .slot = args.scratch + ith * args.layout.slot_len };
    claimHeads(Thread, &thread, args.problem, args.next_job, nth, head);
}

/// What one pool thread's head jobs use.
const Thread = struct {
    args: *const Args,
    slot: [*]f32,
};

/// Runs `work(ctx, b, h, next)` for the (batch, head) jobs claimed from `next_job` until none is
/// left; `next` is the job this thread runs after (b, h), claimed ahead so that `work` can
/// prefetch its rows. Near the end a thread claims after its job instead, so that no thread
/// holds a job another could be running.
pub fn claimHeads(
    comptime Ctx: type,
    ctx: *const Ctx,
    problem: *const Problem,
    next_job: *std.atomic.Value(usize),
    nth: u32,
    comptime work: fn (ctx: *const Ctx, b: usize, h: usize, next: ?HeadRows) void,
) void {
    const jobs = problem.batch * problem.heads;
    var job = next_job.fetchAdd(1, .monotonic);
    // Bounded: every pass takes at least one job from the shared counter.
    while (job < jobs) {
        const ahead = next_job.load(.monotonic) + nth < jobs;
        const following = if (ahead) next_job.fetchAdd(1, .monotonic) else jobs;
        const next = if (following < jobs) HeadRows.of(problem, following) else null;
        work(ctx, job / problem.heads, job % problem.heads, next);
        job = if (ahead) following else next_job.fetchAdd(1, .monotonic);
    }
}

/// Where one (batch, head) job reads its Q, K and V rows.
pub const HeadRows = struct {
    row0: usize,
    column: usize,

    fn of(problem: *const Problem, job: usize) HeadRows {
        return .{ .row0 = job / problem.heads * problem.seq, .column = job % problem.heads * problem.head_size };
    }

    /// Prefetches rows `begin..end` of the job's Q, K and V into L2. A head's rows are `ld`
    /// floats apart, a page or more when ld * 4 >= 4 KiB, which the hardware prefetchers do not
    /// cross: without this, once Q/K/V outgrow L2 (a batch of several texts), every row was a
    /// demand miss (all-MiniLM-L6-v2 batch 8, int8: the Q loads took 36% of the attention's
    /// samples in the model, 17% in a loop over one input).
    pub fn prefetch(self: HeadRows, problem: *const Problem, begin: usize, end: usize) void {
        assert(begin <= end and end <= problem.seq);
        const bytes = problem.head_size * @sizeOf(f32);
        for (begin..end) |j| {
            const at = (self.row0 + j) * problem.ld + self.column;
            inline for (.{ problem.q, problem.k, problem.v }) |base| {
                const row = @intFromPtr(base + at);
                var line = row & ~@as(usize, 63);
                while (line < row + bytes) : (line += 64) {
                    @prefetch(@as([*]const u8, @ptrFromInt(line)), .{ .locality = 2 });
                }
            }
        }
    }
};

/// One (batch, head) job; `next`, the job this thread runs after it, has its rows prefetched
/// while this one computes its scores.
fn head(thread: *const Thread, b: usize, h: usize, next: ?HeadRows) void {
    const args = thread.args;
    const slot = thread.slot;
    const seq = args.problem.seq;
    const hs = args.problem.head_size;
    const layout = args.layout;
    const row0 = b * seq;
    const column = h * hs;

    // Additive mask of this sequence; padding columns past `seq` get -inf so exp gives 0.
    const mask_add = slot + layout.mask_add;
    for (0..layout.seq_pad) |j| {
        mask_add[j] = if (j >= seq)
            -std.math.inf(f32)
        else if (args.problem.mask[row0 + j] != 0) 0.0 else args.problem.mask_value;
    }

    // K_h^T [hs, seq_pad], zero in the padding columns.
    const kt = slot + layout.kt;
    for (0..hs) |d| @memset(kt[d * layout.seq_pad + seq .. (d + 1) * layout.seq_pad], 0.0);
    transposeKeys(args.problem.k + row0 * args.problem.ld + column, args.problem.ld, seq, hs, kt, layout.seq_pad);

    // V_h, copied only when the head size needs padding to whole tiles.
    var v_base = args.problem.v + row0 * args.problem.ld + column;
    var ld_v = args.problem.ld;
    if (hs % cols_tile != 0) {
        const v_packed = slot + layout.v_packed;
        for (0..seq) |j| {
            const dst = v_packed + j * layout.head_pad;
            @memcpy(dst[0..hs], (args.problem.v + (row0 + j) * args.problem.ld + column)[0..hs]);
            @memset(dst[hs..layout.head_pad], 0.0);
        }
        v_base = v_packed;
        ld_v = layout.head_pad;
    }

    var block_begin: usize = 0;
    while (block_begin < seq) : (block_begin += q_block) {
        const block_end = @min(block_begin + q_block, seq);
        var i = block_begin;
        while (i < block_end) : (i += tile_rows) {
            const rows_in_tile = @min(tile_rows, block_end - i);
            if (next) |n| n.prefetch(args.problem, i, i + rows_in_tile);
            switch (rows_in_tile) {
                inline 1...tile_rows => |rows| scoreTiles(rows, args, slot, row0 + i, column, i - block_begin),
                else => unreachable,
            }
        }
        const scores = slot + layout.scores;
        const inv_sum = slot + layout.inv_sum;
        var r: usize = 0;
        while (r + softmax_rows <= block_end - block_begin) : (r += softmax_rows) {
            softmaxRows(softmax_rows, scores + r * layout.seq_pad, layout.seq_pad, inv_sum + r);
        }
        while (r < block_end - block_begin) : (r += 1) softmaxRows(1, scores + r * layout.seq_pad, layout.seq_pad, inv_sum + r);
        i = block_begin;
        while (i < block_end) : (i += tile_rows) {
            switch (@min(tile_rows, block_end - i)) {
                inline 1...tile_rows => |rows| contextTiles(rows, args, slot, v_base, ld_v, row0 + i, column, i - block_begin),
                else => unreachable,
            }
        }
    }
}

/// Scores of `rows` query rows against every key: S = Q K^T * scale + mask.
fn scoreTiles(
    comptime rows: usize,
    args: *const Args,
    slot: [*]f32,
    q_row: usize,
    column: usize,
    block_row: usize,
) void {
    const layout = args.layout;
    const q = args.problem.q + q_row * args.problem.ld + column;
    const kt = slot + layout.kt;
    const mask_add = slot + layout.mask_add;
    const scores = slot + layout.scores + block_row * layout.seq_pad;
    const scale: W = @splat(args.problem.scale);
    var j0: usize = 0;
    while (j0 < layout.seq_pad) : (j0 += cols_tile) {
        const acc = dotTile(rows, q, args.problem.ld, kt + j0, layout.seq_pad, args.problem.head_size);
        const m: W = mask_add[j0..][0..cols_tile].*;
        inline for (0..rows) |r| {
            scores[r * layout.seq_pad + j0 ..][0..cols_tile].* = @mulAdd(W, acc[r], scale, m);
        }
    }
}

/// K_h [seq, hs] (row stride ld) into K_h^T [hs, seq_pad] (row stride ld_kt), 8 x 8 blocks at
/// a time (a scalar loop here cost 7% of the attention of BERT-Base).
pub fn transposeKeys(k: [*]const f32, ld: usize, seq: usize, hs: usize, kt: [*]f32, ld_kt: usize) void {
    const F = @Vector(8, f32);
    var j: usize = 0;
    while (j + 8 <= seq) : (j += 8) {
        var d: usize = 0;
        while (d + 8 <= hs) : (d += 8) {
            var block: [8]F = undefined;
            inline for (0..8) |r| block[r] = (k + (j + r) * ld + d)[0..8].*;
            const t = transpose.f32x8(block);
            inline for (0..8) |c| (kt + (d + c) * ld_kt + j)[0..8].* = t[c];
        }
        while (d < hs) : (d += 1) {
            for (j..j + 8) |jj| kt[d * ld_kt + jj] = k[jj * ld + d];
        }
    }
    while (j < seq) : (j += 1) {
        for (0..hs) |d| kt[d * ld_kt + j] = k[j * ld + d];
    }
}

/// exp(s - max) in place over `rows` score rows of `seq_pad` floats (a multiple of 16) from
/// `s`; writes 1 / sum of each row to `inv_sum`. Several rows at once give the max, exp and sum
/// chains work to overlap (one row at a time waited on their latencies). Shared with
/// `attention_i8.zig`.
pub fn softmaxRows(comptime rows: usize, s: [*]f32, seq_pad: usize, inv_sum: [*]f32) void {
    assert(seq_pad % cols_tile == 0);
    var max_v: [rows]W = @splat(@splat(-std.math.inf(f32)));
    // NaN scores counted (`@max` skips NaN, and exp would turn one into a finite weight: a
    // corrupt model's garbage must not come out looking valid). -inf is the padding's score.
    var nan_v: [rows]W = @splat(@splat(0.0));
    var j: usize = 0;
    while (j < seq_pad) : (j += cols_tile) {
        inline for (0..rows) |r| {
            const v: W = s[r * seq_pad + j ..][0..cols_tile].*;
            max_v[r] = @max(max_v[r], v);
            nan_v[r] += @select(f32, v != v, @as(W, @splat(1.0)), @as(W, @splat(0.0)));
        }
    }
    var max: [rows]W = undefined;
    inline for (0..rows) |r| max[r] = @splat(@reduce(.Max, max_v[r]));
    var sum_v: [rows]W = @splat(@splat(0.0));
    j = 0;
    while (j < seq_pad) : (j += cols_tile) {
        inline for (0..rows) |r| {
            const p = s + r * seq_pad + j;
            const e = vmath.exp(cols_tile, @as(W, p[0..cols_tile].*) - max[r]);
            p[0..cols_tile].* = e;
            sum_v[r] += e;
        }
    }
    inline for (0..rows) |r| {
        // A row of -inf scores (all overflowed; the mask value is finite) is as bad as +inf.
        if (@reduce(.Add, nan_v[r]) != 0 or !std.math.isFinite(max[r][0])) {
            inv_sum[r] = std.math.nan(f32); // the row's output is NaN: the encoder reports it
        } else {
            // The row maximum contributes exp(0) = 1, so the sum is at least 1.
            const total = @reduce(.Add, sum_v[r]);
            assert(total >= 1.0);
            inv_sum[r] = 1.0 / total;
        }
    }
}

/// Context rows: O = P V / row sum, written to the output at the head's columns.
fn contextTiles(
    comptime rows: usize,
    args: *const Args,
    slot: [*]f32,
    v_base: [*]const f32,
    ld_v: usize,
    q_row: usize,
    column: usize,
    block_row: usize,
) void {
    const layout = args.layout;
    const p = slot + layout.scores + block_row * layout.seq_pad;
    const inv_sum = slot + layout.inv_sum + block_row;
    var c0: usize = 0;
    while (c0 < args.problem.head_size) : (c0 += cols_tile) {
        const acc = dotTile(rows, p, layout.seq_pad, v_base + c0, ld_v, args.problem.seq);
        const cols = @min(cols_tile, args.problem.head_size - c0);
        inline for (0..rows) |r| {
            const o: [cols_tile]f32 = acc[r] * @as(W, @splat(inv_sum[r]));
            const dst = args.problem.out + (q_row + r) * args.problem.ld_out + column + c0;
            if (cols == cols_tile) {
                dst[0..cols_tile].* = o;
            } else {
                @memcpy(dst[0..cols], o[0..cols]);
            }
        }
    }
}

/// `rows` x 16 tile of A [rows, depth] (row stride lda) times B [depth, 16] (row stride ldb).
inline fn dotTile(
    comptime rows: usize,
    a: [*]const f32,
    lda: usize,
    b: [*]const f32,
    ldb: usize,
    depth: usize,
) [rows]W {
    var acc: [rows]W = @splat(@as(W, @splat(0.0)));
    for (0..depth) |kk| {
        const bv: W = b[kk * ldb ..][0..cols_tile].*;
        inline for (0..rows) |r| {
            acc[r] = @mulAdd(W, @as(W, @splat(a[r * lda + kk])), bv, acc[r]);
        }
    }
    return acc;
}

test "attention matches a naive computation with padding, odd sizes and head size 24" {
    try checkNaive();
}

test "attention on two threads, each claiming its next head ahead" {
    _ = pool.setThreadCount(2);
    defer _ = pool.setThreadCount(1);
    try checkNaive();
}

test "claimHeads runs every job once, and each job's next is the one its thread runs next" {
    const Record = struct {
        runs: [23]std.atomic.Value(u32) = @splat(std.atomic.Value(u32).init(0)),
        // Per thread slot: the next job announced by the previous call, or none.
        announced: [2]?HeadRows = .{ null, null },
        wrong: std.atomic.Value(u32) = std.atomic.Value(u32).init(0),
    };
    const Ctx = struct {
        record: *Record,
        problem: *const Problem,
        slot: usize,
        fn work(self: *const @This(), b: usize, h: usize, next: ?HeadRows) void {
            const job = b * self.problem.heads + h;
            _ = self.record.runs[job].fetchAdd(1, .monotonic);
            if (self.record.announced[self.slot]) |a| {
                if (!std.meta.eql(a, HeadRows.of(self.problem, job))) _ = self.record.wrong.fetchAdd(1, .monotonic);
            }
            self.record.announced[self.slot] = next;
        }
    };
    const Run = struct {
        record: *Record,
        problem: *const Problem,
        next_job: *std.atomic.Value(usize),
        fn run(self: *const @This(), ith: u32, nth: u32) void {
            const ctx = Ctx{ .record = self.record, .problem = self.problem, .slot = ith };
            claimHeads(Ctx, &ctx, self.problem, self.next_job, nth, Ctx.work);
        }
    };
    var dummy: [1]f32 = .{0};
    var mask: [1]u8 = .{1};
    // 23 jobs: batch 1 x 23 heads (only the counts matter here).
    const problem = Problem{ .q = &dummy, .k = &dummy, .v = &dummy, .ld = 23, .mask = &mask, .mask_value = 0, .batch = 1, .seq = 1, .heads = 23, .head_size = 1, .scale = 1, .out = &dummy, .ld_out = 23 };
    for ([_]u32{ 1, 2 }) |threads| {
        _ = pool.setThreadCount(threads);
        defer _ = pool.setThreadCount(1);
        var record = Record{};
        var next_job = std.atomic.Value(usize).init(0);
        const threads_run = Run{ .record = &record, .problem = &problem, .next_job = &next_job };
        pool.parallel(Run, &threads_run, Run.run);
        for (&record.runs) |*r| try std.testing.expectEqual(@as(u32, 1), r.load(.monotonic));
        try std.testing.expectEqual(@as(u32, 0), record.wrong.load(.monotonic));
    }
}

fn checkNaive() !void {
    const batch = 2;
    const seq = 19;
    const heads = 3;
    const hs = 24;
    const hidden = heads * hs;
    const ld = 3 * hidden;
    var qkv: [batch * seq * ld]f32 = undefined;
    for (&qkv, 0..) |*x, i| x.* = @as(f32, @floatFromInt((i * 37) % 101)) / 50.0 - 1.0;
    var mask: [batch * seq]u8 = undefined;
    for (0..batch) |b| for (0..seq) |j| {
        mask[b * seq + j] = @intFromBool(j < seq - 7 * b);
    };
    var out: [batch * seq * hidden]f32 = undefined;
    var scratch: [4 * 8192]f32 = undefined;
    const need = scratchLen(seq, hs, 2);
    try std.testing.expect(need <= scratch.len);
    const scale = 1.0 / @sqrt(@as(f32, hs));
    const base: [*]const f32 = &qkv;
    const problem = Problem{ .q = base, .k = base + hidden, .v = base + 2 * hidden, .ld = ld, .mask = &mask, .mask_value = -1e4, .batch = batch, .seq = seq, .heads = heads, .head_size = hs, .scale = scale, .out = &out, .ld_out = hidden };
    forward(&problem, &scratch, need);
    for (0..batch) |b| for (0..heads) |h| for (0..seq) |i| {
        var s: [seq]f64 = undefined;
        var max: f64 = -std.math.inf(f64);
        for (0..seq) |j| {
            var dot: f64 = 0;
            for (0..hs) |d| dot += qkv[(b * seq + i) * ld + h * hs + d] * qkv[(b * seq + j) * ld + hidden + h * hs + d];
            s[j] = dot * scale + (if (mask[b * seq + j] != 0) @as(f64, 0) else -1e4);
            max = @max(max, s[j]);
        }
        var total: f64 = 0;
        for (&s) |*x| {
            x.* = @exp(x.* - max);
            total += x.*;
        }
        for (0..hs) |d| {
            var o: f64 = 0;
            for (0..seq) |j| o += s[j] * qkv[(b * seq + j) * ld + 2 * hidden + h * hs + d];
            try std.testing.expectApproxEqAbs(o / total, out[(b * seq + i) * hidden + h * hs + d], 1e-5);
        }
    };
}

//! BERT embeddings fused with their LayerNorm:
//!   out[b, s] = LayerNorm(word[input_ids[b, s]] + position[s] + token_type[token_type_ids[b, s]])
//! Tables are row-major [rows, hidden]. Position ids are 0..seq-1 for every sequence (the
//! Hugging Face default); DistilBERT has no token type table (null). Without token type ids
//! every token uses type 0.
//!
//! Envelope: three row reads and one write per token (3 KiB each at H = 768) plus the norm:
//! about 0.5 us per token, far below one linear layer; rows are split over the pool only for
//! large batches (the LayerNorm threshold).
const std = @import("std");
const assert = std.debug.assert;
const pool = @import("pool.zig");
const layernorm = @import("layernorm.zig");
const lanes = @import("linear_f32.zig").lanes;

const V = @Vector(lanes, f32);

const Args = struct {
    input_ids: [*]const i32,
    token_type_ids: ?[*]const i32,
    seq: usize,
    rows: usize,
    word: [*]const f32,
    vocab: usize,
    position: [*]const f32,
    token_type: ?[*]const f32,
    type_vocab: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    hidden: usize,
    out: [*]f32,
};

/// One call's tables, ids and shape (an `extern struct`: the C ABI passes it by pointer,
/// `ffi/structs.ts` writes it). `token_type` is null with `type_vocab` 0 (DistilBERT);
/// `token_type_ids` null means type 0 everywhere.
pub const Call = extern struct {
    input_ids: [*]const i32,
    token_type_ids: ?[*]const i32,
    batch: usize,
    seq: usize,
    word: [*]const f32,
    vocab: usize,
    position: [*]const f32,
    max_positions: usize,
    token_type: ?[*]const f32,
    type_vocab: usize,
    gamma: [*]const f32,
    beta: [*]const f32,
    eps: f32,
    hidden: usize,
    out: [*]f32,
};

/// Gathers and normalises the embeddings of `batch` x `seq` tokens into `out` [batch * seq, hidden].
/// Ids must be in range (the C ABI checks them; this asserts).
pub fn forward(call: *const Call) void {
    const hidden = call.hidden;
    assert(call.batch >= 1 and call.seq >= 1 and hidden >= 1 and call.vocab >= 1);
    assert(call.seq <= call.max_positions);
    assert((call.token_type == null) == (call.type_vocab == 0));
    assert(call.token_type_ids == null or call.token_type != null);
    assert(call.eps >= 0.0);
    const args = Args{
        .input_ids = call.input_ids,
        .token_type_ids = call.token_type_ids,
        .seq = call.seq,
        .rows = call.batch * call.seq,
        .word = call.word,
        .vocab = call.vocab,
        .position = call.position,
        .token_type = call.token_type,
        .type_vocab = call.type_vocab,
        .gamma = call.gamma,
        .beta = call.beta,
        .eps = call.eps,
        .hidden = hidden,
        .out = call.out,
    };
    if (args.rows * hidden < layernorm.parallel_threshold) {
        run(&args, 0, 1);
    } else {
        pool.parallel(Args, &args, run);
    }
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    const range = pool.split(args.rows, ith, nth);
    for (range.begin..range.end) |row| embedRow(args, row);
}

fn embedRow(args: *const Args, row: usize) void {
    const hidden = args.hidden;
    const id = args.input_ids[row];
    assert(id >= 0 and @as(usize, @intCast(id)) < args.vocab);
    const word = args.word + @as(usize, @intCast(id)) * hidden;
    const position = args.position + (row % args.seq) * hidden;
    const y = args.out + row * hidden;
    if (args.token_type) |table| {
        const type_id: usize = if (args.token_type_ids) |ids| blk: {
            assert(ids[row] >= 0 and @as(usize, @intCast(ids[row])) < args.type_vocab);
            break :blk @intCast(ids[row]);
        } else 0;
        add3(word, position, table + type_id * hidden, hidden, y);
    } else {
        add2(word, position, hidden, y);
    }
    layernorm.normalizeRow(y, hidden, args.gamma, args.beta, args.eps, y);
}

fn add3(a: [*]const f32, b: [*]const f32, c: [*]const f32, n: usize, y: [*]f32) void {
    var j: usize = 0;
    while (j + lanes <= n) : (j += lanes) {
        const av: V = a[j..][0..lanes].*;
        const bv: V = b[j..][0..lanes].*;
        const cv: V = c[j..][0..lanes].*;
        // The Hugging Face order: (word + token type) + position.
        y[j..][0..lanes].* = (av + cv) + bv;
    }
    while (j < n) : (j += 1) y[j] = (a[j] + c[j]) + b[j];
}

fn add2(a: [*]const f32, b: [*]const f32, n: usize, y: [*]f32) void {
    var j: usize = 0;
    while (j + lanes <= n) : (j += lanes) {
        const av: V = a[j..][0..lanes].*;
        const bv: V = b[j..][0..lanes].*;
        y[j..][0..lanes].* = av + bv;
    }
    while (j < n) : (j += 1) y[j] = a[j] + b[j];
}

test "embeddings gather the right rows and normalise them" {
    const vocab = 5;
    const hidden = 11;
    const seq = 3;
    var word: [vocab * hidden]f32 = undefined;
    var position: [4 * hidden]f32 = undefined;
    var token_type: [2 * hidden]f32 = undefined;
    for (&word, 0..) |*v, i| v.* = @floatFromInt(i % 13);
    for (&position, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i % 7)) * 0.5;
    for (&token_type, 0..) |*v, i| v.* = @as(f32, @floatFromInt(i % 3)) * 0.25;
    const gamma = [_]f32{1.0} ** hidden;
    const beta = [_]f32{0.0} ** hidden;
    const ids = [_]i32{ 4, 0, 2 };
    const types = [_]i32{ 0, 1, 1 };
    var out: [seq * hidden]f32 = undefined;
    forward(&.{ .input_ids = &ids, .token_type_ids = &types, .batch = 1, .seq = seq, .word = &word, .vocab = vocab, .position = &position, .max_positions = 4, .token_type = &token_type, .type_vocab = 2, .gamma = &gamma, .beta = &beta, .eps = 1e-12, .hidden = hidden, .out = &out });
    for (0..seq) |s| {
        var sum: [hidden]f32 = undefined;
        for (0..hidden) |j| {
            const id: usize = @intCast(ids[s]);
            const t: usize = @intCast(types[s]);
            sum[j] = (word[id * hidden + j] + token_type[t * hidden + j]) + position[s * hidden + j];
        }
        var expected: [hidden]f32 = undefined;
        layernorm.normalizeRow(&sum, hidden, &gamma, &beta, 1e-12, &expected);
        try std.testing.expectEqualSlices(f32, &expected, out[s * hidden ..][0..hidden]);
    }
}

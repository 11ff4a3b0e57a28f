//! Peak probes: tight loops of independent vector operations that measure what this CPU
//! sustains, so benchmarks can report the fraction of the measured peak they reach.
const std = @import("std");
const pool = @import("pool.zig");
const lanes = @import("linear_f32.zig").lanes;

const V = @Vector(lanes, f32);
/// Independent FMA chains: enough to cover FMA latency (4) x pipes (2) with room to spare.
const chains = 12;

const Args = struct { iterations: u64 };

/// Runs `iterations` steps of `chains` FMAs per thread on every pool thread; returns FLOPs done.
pub fn peakF32(iterations: u64) u64 {
    const args = Args{ .iterations = iterations };
    pool.parallel(Args, &args, run);
    const per_thread = iterations * chains * lanes * 2;
    return per_thread * pool.threadCount();
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    _ = nth;
    var acc: [chains]V = undefined;
    for (&acc, 0..) |*a, i| a.* = @splat(@floatFromInt(i + ith));
    const mul: V = @splat(0.999999);
    const add: V = @splat(1e-7);
    var i: u64 = 0;
    while (i < args.iterations) : (i += 1) {
        inline for (&acc) |*a| a.* = @mulAdd(V, a.*, mul, add);
    }
    std.mem.doNotOptimizeAway(acc);
}

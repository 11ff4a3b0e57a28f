//! int8 peak probe: independent chains of the kernels' own dot-product step (`int8.dot4`:
//! vpmaddubsw + vpmaddwd + vpaddd on AVX2, vpdpbusd with VNNI), so that benchmarks can report
//! the fraction of the measured int8 peak they reach. One step is 32 MACs = 64 ops.
const std = @import("std");
const pool = @import("pool.zig");
const int8 = @import("int8.zig");

/// Independent chains, each with its own inputs; with the weights and the ones of vpmaddwd
/// they use 14 of the 16 ymm registers.
const chains = 6;

const Args = struct { iterations: u64 };

/// Runs `iterations` steps of `chains` dot4 steps on every pool thread; returns int8 ops done
/// (2 per multiply-accumulate).
pub fn peakI8(iterations: u64) u64 {
    const args = Args{ .iterations = iterations };
    pool.parallel(Args, &args, run);
    const per_thread = iterations * chains * 32 * 2;
    return per_thread * pool.threadCount();
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    _ = nth;
    var acc: [chains]int8.I32x8 = undefined;
    var a: [chains]int8.U8x32 = undefined;
    for (&acc, &a, 0..) |*c, *x, i| {
        c.* = @splat(@intCast(i + ith));
        x.* = @splat(@intCast(i + 1));
    }
    var w: int8.I8x32 = @splat(-5);
    var i: u64 = 0;
    while (i < args.iterations) : (i += 1) {
        // An empty asm that "changes" the inputs keeps every product inside the loop (the
        // baseline build reloads them through a volatile pointer instead).
        if (comptime hasVectorRegisters()) {
            inline for (&a) |*x| {
                var v = x.*;
                asm volatile (""
                    : [v] "+x" (v),
                );
                x.* = v;
            }
            asm volatile (""
                : [w] "+x" (w),
            );
        } else {
            const pw: *volatile int8.I8x32 = &w;
            w = pw.*;
            for (&a) |*x| {
                const px: *volatile int8.U8x32 = x;
                x.* = px.*;
            }
        }
        inline for (&acc, a) |*c, x| c.* = int8.dot4(c.*, x, w);
    }
    std.mem.doNotOptimizeAway(acc);
}

/// Whether a 32-byte vector fits one register (AVX2 and up).
fn hasVectorRegisters() bool {
    return int8.path != .generic;
}

test "peakI8 counts its work" {
    try std.testing.expectEqual(@as(u64, 7 * chains * 64 * pool.threadCount()), peakI8(7));
}

//! int8 peak probe: independent chains of the dot-product step (`int8.dot4`: vpmaddubsw +
//! vpmaddwd + vpaddd on AVX2, 32 MACs = 64 ops a step), so that benchmarks can report the
//! fraction of the measured int8 peak they reach. With VNNI the chains are 512-bit `vpdpbusd`
//! (64 MACs a step): the machine's int8 peak, which a CPU with two 512-bit multiply units
//! (Intel Xeon) reaches only with zmm, while Zen 4 runs zmm at the ymm rate (measured 442 vs 436
//! GOP/s on one Zen 4 core); the kernels' ymm steps are measured against that peak.
const std = @import("std");
const pool = @import("pool.zig");
const int8 = @import("int8.zig");

/// Independent chains, each with its own inputs. AVX2: with the weights and the ones of
/// vpmaddwd they use 14 of the 16 ymm registers. VNNI: `vpdpbusd` has a latency of about 4
/// cycles at 2 per cycle (Zen 4), so 6 chains measured only 77% of the rate that 12 reach
/// (647 vs 861 GOP/s on 2 Zen 4 cores); EVEX gives 32 registers for 24 inputs and accumulators.
const chains = if (int8.path == .vnni) 12 else 6;
/// Lanes of one step: 16 s32 (zmm) with VNNI, 8 (ymm) otherwise.
const lanes = if (int8.path == .vnni) 16 else 8;
const Acc = @Vector(lanes, i32);
const Bytes = @Vector(4 * lanes, u8);
const Weights = @Vector(4 * lanes, i8);

extern fn @"llvm.x86.avx512.vpdpbusd.512"(acc: Acc, a: Acc, b: Acc) Acc;

inline fn step(acc: Acc, a: Bytes, w: Weights) Acc {
    if (comptime int8.path == .vnni) return @"llvm.x86.avx512.vpdpbusd.512"(acc, @bitCast(a), @bitCast(w));
    return int8.dot4(acc, a, w);
}

const Args = struct { iterations: u64 };

/// Runs `iterations` steps of `chains` dot4 steps on every pool thread; returns int8 ops done
/// (2 per multiply-accumulate).
pub fn peakI8(iterations: u64) u64 {
    const args = Args{ .iterations = iterations };
    pool.parallel(Args, &args, run);
    const per_thread = iterations * chains * 4 * lanes * 2;
    return per_thread * pool.threadCount();
}

fn run(args: *const Args, ith: u32, nth: u32) void {
    _ = nth;
    var acc: [chains]Acc = undefined;
    var a: [chains]Bytes = undefined;
    for (&acc, &a, 0..) |*c, *x, i| {
        c.* = @splat(@intCast(i + ith));
        x.* = @splat(@intCast(i + 1));
    }
    var w: Weights = @splat(-5);
    var i: u64 = 0;
    while (i < args.iterations) : (i += 1) {
        // An empty asm that "changes" the inputs keeps every product inside the loop (the
        // baseline build reloads them through a volatile pointer instead).
        if (comptime hasVectorRegisters()) {
            inline for (&a) |*x| opaqueRegister(Bytes, x);
            opaqueRegister(Weights, &w);
        } else {
            const pw: *volatile Weights = &w;
            w = pw.*;
            for (&a) |*x| {
                const px: *volatile Bytes = x;
                x.* = px.*;
            }
        }
        inline for (&acc, a) |*c, x| c.* = step(c.*, x, w);
    }
    std.mem.doNotOptimizeAway(acc);
}

/// An empty asm that "changes" `v` in a register: "v" lets the VNNI build use all 32 vector
/// registers, "x" the first 16.
inline fn opaqueRegister(comptime T: type, p: *T) void {
    var v = p.*;
    if (comptime int8.path == .vnni) {
        asm volatile (""
            : [v] "+v" (v),
        );
    } else {
        asm volatile (""
            : [v] "+x" (v),
        );
    }
    p.* = v;
}

/// Whether a 32-byte vector fits one register (AVX2 and up).
fn hasVectorRegisters() bool {
    return int8.path != .generic;
}

test "peakI8 counts its work" {
    try std.testing.expectEqual(@as(u64, 7 * chains * 8 * lanes * pool.threadCount()), peakI8(7));
}

//! Runtime CPU feature probe: cpuid plus the XCR0 check that the OS saves the vector state.
//! It is compiled into every variant, including the baseline one, so the loader can ask the
//! baseline library which variant this CPU can run before opening it.
const std = @import("std");
const builtin = @import("builtin");

/// Bits of `features()`; the TypeScript loader mirrors them in `ffi/library.ts`.
pub const feature_avx2 = 1 << 0; // AVX2 + FMA + F16C + BMI2, with YMM state enabled by the OS
pub const feature_avx512 = 1 << 1; // AVX-512 F/BW/DQ/VL/CD, with ZMM state enabled by the OS
pub const feature_avx512vnni = 1 << 2; // AVX-512 VNNI (vpdpbusd)
pub const feature_avxvnni = 1 << 3; // AVX-VNNI (VEX vpdpbusd on ymm), reported only
pub const feature_avx512f = 1 << 4; // AVX-512 Foundation alone, with ZMM state; reported only
pub const feature_avx512bf16 = 1 << 5; // AVX512_BF16 (vdpbf16ps), with ZMM state; reported only
pub const feature_amx = 1 << 6; // AMX-TILE + AMX-INT8, with tile state enabled; reported only

/// ISA level that this library was compiled for: 0 baseline, 1 avx2, 2 avx512vnni.
pub const isa_level: u32 = blk: {
    const has = std.Target.x86.featureSetHas;
    const built = builtin.cpu.features;
    if (builtin.cpu.arch != .x86_64) break :blk 0;
    if (has(built, .avx512vnni) and has(built, .avx512bw)) break :blk 2;
    if (has(built, .avx2) and has(built, .fma)) break :blk 1;
    break :blk 0;
};

const CpuidResult = struct { eax: u32, ebx: u32, ecx: u32, edx: u32 };

fn cpuid(leaf: u32, subleaf: u32) CpuidResult {
    var eax: u32 = undefined;
    var ebx: u32 = undefined;
    var ecx: u32 = undefined;
    var edx: u32 = undefined;
    asm volatile ("cpuid"
        : [_] "={eax}" (eax),
          [_] "={ebx}" (ebx),
          [_] "={ecx}" (ecx),
          [_] "={edx}" (edx),
        : [_] "{eax}" (leaf),
          [_] "{ecx}" (subleaf),
    );
    return .{ .eax = eax, .ebx = ebx, .ecx = ecx, .edx = edx };
}

fn xgetbv0() u64 {
    var eax: u32 = undefined;
    var edx: u32 = undefined;
    asm volatile ("xgetbv"
        : [_] "={eax}" (eax),
          [_] "={edx}" (edx),
        : [_] "{ecx}" (@as(u32, 0)),
    );
    return (@as(u64, edx) << 32) | eax;
}

fn bit(value: u32, index: u5) bool {
    return (value >> index) & 1 == 1;
}

/// Feature bits of the CPU this process runs on (0 on non-x86_64).
pub fn features() u32 {
    if (builtin.cpu.arch != .x86_64) return 0;
    const max_leaf = cpuid(0, 0).eax;
    if (max_leaf < 7) return 0;
    const leaf1 = cpuid(1, 0);
    const osxsave = bit(leaf1.ecx, 27);
    if (!osxsave) return 0;
    const xcr0 = xgetbv0();
    const ymm_state = (xcr0 & 0b110) == 0b110; // SSE and AVX state
    const zmm_state = (xcr0 & 0b1110_0110) == 0b1110_0110; // plus opmask, ZMM_Hi256, Hi16_ZMM
    const leaf7 = cpuid(7, 0);
    // Leaf 7 sub-leaf 1 (AVX-VNNI, AVX512_BF16) exists only where sub-leaf 0 reports it.
    const leaf7_1 = if (leaf7.eax >= 1) cpuid(7, 1) else CpuidResult{ .eax = 0, .ebx = 0, .ecx = 0, .edx = 0 };

    var result: u32 = 0;
    const avx = bit(leaf1.ecx, 28);
    const fma = bit(leaf1.ecx, 12);
    const f16c = bit(leaf1.ecx, 29);
    const avx2 = bit(leaf7.ebx, 5);
    const bmi2 = bit(leaf7.ebx, 8);
    if (ymm_state and avx and fma and f16c and avx2 and bmi2) result |= feature_avx2;
    const avx512 = bit(leaf7.ebx, 16) and bit(leaf7.ebx, 17) and bit(leaf7.ebx, 28) and
        bit(leaf7.ebx, 30) and bit(leaf7.ebx, 31); // F, DQ, CD, BW, VL
    if (result & feature_avx2 != 0 and zmm_state and avx512) {
        result |= feature_avx512;
        if (bit(leaf7.ecx, 11)) result |= feature_avx512vnni;
    }
    if (zmm_state and bit(leaf7.ebx, 16)) result |= feature_avx512f;
    if (zmm_state and bit(leaf7.ebx, 16) and bit(leaf7_1.eax, 5)) result |= feature_avx512bf16;
    if (result & feature_avx2 != 0 and bit(leaf7_1.eax, 4)) result |= feature_avxvnni;
    const tile_state = (xcr0 & (0b11 << 17)) == (0b11 << 17); // XTILECFG and XTILEDATA
    if (tile_state and bit(leaf7.edx, 24) and bit(leaf7.edx, 25)) result |= feature_amx;
    return result;
}

/// Feature bits this library's own code needs; the loader refuses a library whose needs
/// the CPU does not meet, so a wrong choice fails with a message instead of SIGILL.
pub fn requiredFeatures() u32 {
    return switch (isa_level) {
        0 => 0,
        1 => feature_avx2,
        else => feature_avx2 | feature_avx512 | feature_avx512vnni,
    };
}

test "features are consistent" {
    const f = features();
    if (f & feature_avx512 != 0) try std.testing.expect(f & feature_avx2 != 0);
    if (f & feature_avx512vnni != 0) try std.testing.expect(f & feature_avx512 != 0);
    if (f & feature_avx512 != 0) try std.testing.expect(f & feature_avx512f != 0);
    if (f & feature_avx512bf16 != 0) try std.testing.expect(f & feature_avx512f != 0);
}

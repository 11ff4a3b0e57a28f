//! Builds one shared kernel library per ISA level from `kernels.zig`:
//!   libsparsebert_baseline.so    x86-64 (SSE2), runs on any x86_64 CPU
//!   libsparsebert_avx2.so        x86-64-v3 (AVX2, FMA, F16C, BMI2)
//!   libsparsebert_avx512vnni.so  x86-64-v4 (AVX-512 F/BW/DQ/VL) + AVX-512 VNNI
//! The TypeScript loader (`ffi/library.ts`) probes the CPU and opens the best one.
//!
//!   zig build -Doptimize=ReleaseFast --prefix build/fast
//!   zig build -Doptimize=ReleaseSafe --prefix build/safe
//!   zig build test   (Zig unit tests on the host CPU)
const std = @import("std");
const builtin = @import("builtin");

/// The one Zig release this project is written for (the build API changes between releases).
const required_zig = std.SemanticVersion{ .major = 0, .minor = 15, .patch = 2 };

comptime {
    if (builtin.zig_version.order(required_zig) != .eq) {
        @compileError("sparsebert needs Zig 0.15.2 exactly, but this is Zig " ++
            builtin.zig_version_string ++
            ". Run `deno task setup` to install the pinned Zig into .tools/zig.");
    }
}

const Variant = struct {
    name: []const u8,
    model: *const std.Target.Cpu.Model,
    extra: []const std.Target.x86.Feature,
};

const variants = [_]Variant{
    .{ .name = "baseline", .model = &std.Target.x86.cpu.x86_64, .extra = &.{} },
    .{ .name = "avx2", .model = &std.Target.x86.cpu.x86_64_v3, .extra = &.{} },
    .{ .name = "avx512vnni", .model = &std.Target.x86.cpu.x86_64_v4, .extra = &.{.avx512vnni} },
};

pub fn build(b: *std.Build) void {
    const optimize = b.option(
        std.builtin.OptimizeMode,
        "optimize",
        "ReleaseFast (default) for speed, ReleaseSafe for tests that trap on bounds and overflow bugs",
    ) orelse .ReleaseFast;

    for (variants) |variant| {
        var query: std.Target.Query = .{
            .cpu_arch = .x86_64,
            .os_tag = .linux,
            .abi = .gnu,
            .cpu_model = .{ .explicit = variant.model },
        };
        query.cpu_features_add = std.Target.x86.featureSet(variant.extra);
        const module = b.createModule(.{
            .root_source_file = b.path("kernels.zig"),
            .target = b.resolveTargetQuery(query),
            .optimize = optimize,
            // libc gives pthreads: the worker pool runs inside Deno's (glibc) process.
            .link_libc = true,
            .pic = true,
            // The ReleaseFast libraries are the released ones: without debug info they hold no
            // build paths, so the same source and Zig give the same bytes on any machine and
            // in any folder (their SHA-256 is pinned in ffi/checksums.ts). ReleaseSafe keeps
            // its debug info for readable traces in tests.
            .strip = optimize == .ReleaseFast,
        });
        const lib = b.addLibrary(.{
            .name = b.fmt("sparsebert_{s}", .{variant.name}),
            .linkage = .dynamic,
            .root_module = module,
        });
        b.installArtifact(lib);
    }

    const unit_tests = b.addTest(.{ .root_module = b.createModule(.{
        .root_source_file = b.path("kernels.zig"),
        .target = b.graph.host,
        .optimize = optimize,
        .link_libc = true,
    }) });
    const test_step = b.step("test", "Run the Zig unit tests on the host CPU");
    test_step.dependOn(&b.addRunArtifact(unit_tests).step);
}

//! One process-wide pool of persistent worker threads (ggml style): a call hands every thread
//! the same work function with its `ith` of `nth`, and returns when all of them are done.
//! Workers spin briefly after each job (BERT calls ops back to back), then sleep on a futex.
//!
//! Several Deno isolates (Workers) share this library and so this pool: `parallel` takes a
//! mutex, so concurrent callers run one after another instead of corrupting the job slot.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;

pub const max_threads: u32 = 64;
/// Spins before a worker sleeps; about 50-100 us on current x86 cores.
const spin_limit: u32 = 1 << 14;

const WorkFn = *const fn (ctx: *const anyopaque, ith: u32, nth: u32) void;

var call_mutex: std.Thread.Mutex = .{};
var threads: [max_threads]std.Thread = undefined;
var spawned: u32 = 0; // workers started (caller not counted); only grows
var active: u32 = 1; // threads used per job, caller included

var generation = std.atomic.Value(u32).init(0);
var pending = std.atomic.Value(u32).init(0);
var sleepers = std.atomic.Value(u32).init(0);
var job_fn: WorkFn = undefined;
var job_ctx: *const anyopaque = undefined;
var job_nth: u32 = 1;

const DlInfo = extern struct {
    fname: ?[*:0]const u8,
    fbase: ?*anyopaque,
    sname: ?[*:0]const u8,
    saddr: ?*anyopaque,
};
extern "c" fn dladdr(address: *const anyopaque, info: *DlInfo) c_int;

var pinned = false;

/// Keeps this library mapped for the life of the process once it owns threads. Deno unloads a
/// library when the last isolate that opened it ends (`deno test` runs each file in its own
/// runtime); a worker sleeping in unmapped code, woken by a fresh copy mapped at the same
/// address, would run with stale state and corrupt the new pool's counters.
fn pinLibrary() bool {
    const shared_library = builtin.output_mode == .Lib and builtin.link_mode == .dynamic;
    if (pinned or !shared_library) return true;
    var info: DlInfo = undefined;
    if (dladdr(@ptrCast(&pinLibrary), &info) == 0) return false;
    const path = info.fname orelse return false;
    const handle = std.c.dlopen(path, .{ .NOW = true, .NOLOAD = true, .NODELETE = true });
    pinned = handle != null;
    return pinned;
}

/// Sets the number of threads used per job (caller included); spawns workers as needed.
/// Returns the count in effect, which is lower than asked if threads could not be spawned.
pub fn setThreadCount(count: u32) u32 {
    assert(count >= 1);
    call_mutex.lock();
    defer call_mutex.unlock();
    // Without pinning, worker threads could outlive the code they run: stay single-threaded.
    const wanted = if (count > 1 and !pinLibrary()) 1 else @min(count, max_threads);
    while (spawned + 1 < wanted) {
        const ith = spawned + 1;
        // The worker starts from the current generation: a job published before it first runs
        // must not be missed, or `pending` would never reach zero.
        const start = generation.load(.acquire);
        threads[spawned] = std.Thread.spawn(.{ .stack_size = 256 * 1024 }, workerMain, .{ ith, start }) catch break;
        threads[spawned].detach();
        spawned += 1;
    }
    active = @min(wanted, spawned + 1);
    return active;
}

/// Threads used per job, caller included.
pub fn threadCount() u32 {
    return @atomicLoad(u32, &active, .monotonic);
}

/// Runs `work(ctx, ith, nth)` on every pool thread (the caller is `ith == 0`) and returns once
/// all have finished. Not reentrant: work functions must not call `parallel`.
pub fn parallel(
    comptime Ctx: type,
    ctx: *const Ctx,
    comptime work: fn (ctx: *const Ctx, ith: u32, nth: u32) void,
) void {
    const Erased = struct {
        fn call(erased: *const anyopaque, ith: u32, nth: u32) void {
            work(@ptrCast(@alignCast(erased)), ith, nth);
        }
    };
    call_mutex.lock();
    defer call_mutex.unlock();
    const nth = active;
    if (nth == 1) {
        work(ctx, 0, 1);
        return;
    }
    job_fn = Erased.call;
    job_ctx = ctx;
    job_nth = nth;
    pending.store(spawned, .seq_cst);
    _ = generation.fetchAdd(1, .seq_cst);
    if (sleepers.load(.seq_cst) > 0) std.Thread.Futex.wake(&generation, max_threads);
    work(ctx, 0, nth);
    waitForWorkers();
}

fn waitForWorkers() void {
    var spins: u32 = 0;
    while (pending.load(.acquire) != 0) {
        if (spins < spin_limit) {
            std.atomic.spinLoopHint();
            spins += 1;
        } else {
            std.Thread.yield() catch {};
        }
    }
}

fn workerMain(ith: u32, start_generation: u32) void {
    var seen = start_generation;
    while (true) {
        seen = waitForJob(seen);
        const nth = job_nth;
        if (ith < nth) job_fn(job_ctx, ith, nth);
        _ = pending.fetchSub(1, .release);
    }
}

fn waitForJob(seen: u32) u32 {
    var spins: u32 = 0;
    while (true) {
        const now = generation.load(.acquire);
        if (now != seen) return now;
        if (spins < spin_limit) {
            std.atomic.spinLoopHint();
            spins += 1;
        } else {
            _ = sleepers.fetchAdd(1, .seq_cst);
            std.Thread.Futex.wait(&generation, seen);
            _ = sleepers.fetchSub(1, .seq_cst);
        }
    }
}

/// Splits `count` items into `nth` contiguous ranges that differ by at most one item.
pub fn split(count: usize, ith: u32, nth: u32) struct { begin: usize, end: usize } {
    assert(nth >= 1 and ith < nth);
    const base = count / nth;
    const extra = count % nth;
    const begin = ith * base + @min(ith, extra);
    const end = begin + base + @intFromBool(ith < extra);
    return .{ .begin = begin, .end = end };
}

test "split covers the range exactly once" {
    const total: usize = 37;
    var covered: usize = 0;
    var previous_end: usize = 0;
    for (0..5) |i| {
        const r = split(total, @intCast(i), 5);
        try std.testing.expectEqual(previous_end, r.begin);
        covered += r.end - r.begin;
        previous_end = r.end;
    }
    try std.testing.expectEqual(total, covered);
}

test "parallel runs every ith once" {
    _ = setThreadCount(3);
    const Ctx = struct { hits: [max_threads]std.atomic.Value(u32) };
    var ctx: Ctx = undefined;
    for (&ctx.hits) |*h| h.* = std.atomic.Value(u32).init(0);
    const work = struct {
        fn run(c: *const Ctx, ith: u32, nth: u32) void {
            assert(nth == 3);
            const hits: *std.atomic.Value(u32) = @constCast(&c.hits[ith]);
            _ = hits.fetchAdd(1, .monotonic);
        }
    }.run;
    for (0..100) |_| parallel(Ctx, &ctx, work);
    for (0..3) |i| try std.testing.expectEqual(@as(u32, 100), ctx.hits[i].load(.monotonic));
}

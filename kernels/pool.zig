//! One process-wide pool of persistent worker threads (ggml style): a call hands every thread
//! the same work function with its `ith` of `nth`, and returns when all of them are done.
//! Workers spin briefly after each job (BERT calls ops back to back), then sleep on a futex.
//!
//! Slots `1..nth` of a job are claimed, not assigned: a worker claims one when it wakes, and the
//! caller, once done with slot 0, runs every slot no worker has claimed yet. So a worker that
//! another process keeps off its core delays nothing; the caller only waits for slots already
//! running. (A plain barrier made a MiniLM forward 10x slower on a busy 2-core machine.)
//!
//! Several Deno isolates (Workers) share this library and so this pool: `parallel` takes a
//! mutex, so concurrent callers run one after another instead of corrupting the job slot.
const std = @import("std");
const builtin = @import("builtin");
const assert = std.debug.assert;

pub const max_threads: u32 = 64;
/// Spins before a worker sleeps: about 450-480 us on a Zen 4 (28 ns per `pause`, measured), which
/// keeps a worker awake through a forward's serial stretches. (Bounding it at 50 us instead made
/// batch-1 all-MiniLM-L6-v2 forwards 1.3-1.5x slower; parking workers after each server call
/// saved no measurable CPU: see docs/BENCHMARKS.md, issue 17.)
const spin_limit: u32 = 1 << 14;

const WorkFn = *const fn (ctx: *const anyopaque, ith: u32, nth: u32) void;

var call_mutex: std.Thread.Mutex = .{};
var threads: [max_threads]std.Thread = undefined;
var spawned: u32 = 0; // workers started (caller not counted); only grows
var active: u32 = 1; // threads used per job, caller included

/// Wake word: bumped once per job; sleeping workers wait on it.
var generation = std.atomic.Value(u32).init(0);
/// (generation << 32) | next unclaimed slot of the current job.
var slots = std.atomic.Value(u64).init(0);
/// Slots 1..nth of the current job finished, whoever ran them.
var done = std.atomic.Value(u32).init(0);
var sleepers = std.atomic.Value(u32).init(0);
// The job; written by the caller before it publishes the generation, read by workers after.
// Atomic accesses: a late worker may read them while the next job is being written, and then
// discards what it read because its claim fails.
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
        // The worker starts from the current generation, so its first wait is for the next job
        // (a job it misses is no harm: the caller runs unclaimed slots itself).
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
    @atomicStore(WorkFn, &job_fn, Erased.call, .monotonic);
    @atomicStore(*const anyopaque, &job_ctx, ctx, .monotonic);
    @atomicStore(u32, &job_nth, nth, .monotonic);
    done.store(0, .monotonic);
    const gen = generation.load(.monotonic) +% 1;
    slots.store((@as(u64, gen) << 32) | 1, .release); // slot 0 is the caller's
    generation.store(gen, .seq_cst);
    if (sleepers.load(.seq_cst) > 0) std.Thread.Futex.wake(&generation, max_threads);
    work(ctx, 0, nth);
    while (claim(gen, nth)) |slot| {
        work(ctx, slot, nth);
        _ = done.fetchAdd(1, .release);
    }
    waitForSlots(nth - 1);
}

/// Claims the next slot of job `gen`, or returns null when that job has none left (or is over).
fn claim(gen: u32, nth: u32) ?u32 {
    var current = slots.load(.acquire);
    while (true) {
        if (@as(u32, @intCast(current >> 32)) != gen) return null;
        const slot: u32 = @truncate(current);
        if (slot >= nth) return null;
        current = slots.cmpxchgWeak(current, current + 1, .acq_rel, .acquire) orelse return slot;
    }
}

fn waitForSlots(count: u32) void {
    var spins: u32 = 0;
    while (done.load(.acquire) != count) {
        if (spins < spin_limit) {
            std.atomic.spinLoopHint();
            spins += 1;
        } else {
            std.Thread.yield() catch {};
        }
    }
}

fn workerMain(ith: u32, start_generation: u32) void {
    _ = ith; // slots are claimed, so a worker's own index does not matter
    var seen = start_generation;
    while (true) {
        seen = waitForJob(seen);
        const work = @atomicLoad(WorkFn, &job_fn, .monotonic);
        const ctx = @atomicLoad(*const anyopaque, &job_ctx, .monotonic);
        const nth = @atomicLoad(u32, &job_nth, .monotonic);
        while (claim(seen, nth)) |slot| {
            work(ctx, slot, nth);
            _ = done.fetchAdd(1, .release);
        }
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

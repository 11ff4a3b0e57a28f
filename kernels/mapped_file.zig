//! Read-only files mapped into memory for compiled models: the packed weights of a `.sbert`
//! file are used in place, straight from the page cache, with no read into a second copy.
//!
//! The map is private (copy-on-write) and writable, so a stray write changes only this
//! process's pages, never the file. A file truncated after it was mapped would raise SIGBUS on
//! the missing pages; `map` checks the size first, and the loader checks every header before
//! mapping.
const std = @import("std");
const assert = std.debug.assert;
const posix = std.posix;

pub const Error = error{ PathTooLong, TooShort, Empty } || posix.OpenError || posix.FStatError || posix.MMapError;

/// Maps the first `bytes` bytes of the file at `path`.
pub fn map(path: []const u8, bytes: usize) Error![]align(std.heap.page_size_min) u8 {
    if (bytes == 0) return error.Empty;
    var path_z: [std.fs.max_path_bytes:0]u8 = undefined;
    if (path.len >= path_z.len) return error.PathTooLong;
    @memcpy(path_z[0..path.len], path);
    path_z[path.len] = 0;
    const fd = try posix.openZ(&path_z, .{ .ACCMODE = .RDONLY, .CLOEXEC = true }, 0);
    // The map keeps its own reference to the file.
    defer posix.close(fd);
    const stat = try posix.fstat(fd);
    if (stat.size < 0 or @as(u64, @intCast(stat.size)) < bytes) return error.TooShort;
    const memory = try posix.mmap(
        null,
        bytes,
        posix.PROT.READ | posix.PROT.WRITE,
        .{ .TYPE = .PRIVATE },
        fd,
        0,
    );
    // Ask for read-ahead now; the first forward pass would otherwise fault page by page.
    posix.madvise(memory.ptr, memory.len, posix.MADV.WILLNEED) catch {};
    return memory;
}

/// Unmaps what `map` returned for the same `bytes`.
pub fn unmap(ptr: [*]u8, bytes: usize) void {
    assert(bytes > 0);
    assert(@intFromPtr(ptr) % std.heap.page_size_min == 0);
    const memory: []align(std.heap.page_size_min) u8 = @alignCast(ptr[0..bytes]);
    posix.munmap(memory);
}

test "map reads a file's bytes and refuses a short file" {
    var dir = std.testing.tmpDir(.{});
    defer dir.cleanup();
    const content = "sparsebert mapped file test";
    try dir.dir.writeFile(.{ .sub_path = "f.bin", .data = content });
    var buf: [std.fs.max_path_bytes]u8 = undefined;
    const path = try dir.dir.realpath("f.bin", &buf);
    const memory = try map(path, content.len);
    defer unmap(memory.ptr, memory.len);
    try std.testing.expectEqualStrings(content, memory);
    // A private map: writing changes this copy only.
    memory[0] = 'S';
    const again = try map(path, content.len);
    defer unmap(again.ptr, again.len);
    try std.testing.expectEqual(@as(u8, 's'), again[0]);
    try std.testing.expectError(error.TooShort, map(path, content.len + 1));
    try std.testing.expectError(error.FileNotFound, map("/nonexistent/sparsebert", 1));
}

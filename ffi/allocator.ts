/**
 * Lets the C allocator give large freed buffers back to the system.
 *
 * Loading a model allocates a few GB of short-lived ArrayBuffers (the file, the importer's
 * dequantized fp32 copy of an int8 file, repacked weights). glibc serves buffers of a few MB
 * from its heap once its dynamic mmap threshold has grown, and keeps them after they are freed:
 * a process serving BERT-Large int8 stayed at 3.5 GB resident although the encoder needs about
 * 0.3 GB (docs/BENCHMARKS.md, "Peak memory"). With a fixed threshold of 1 MiB every large
 * buffer is mapped on its own and unmapped when garbage-collected. Inference allocates no large
 * buffers (workspaces are planned up front), so the hot path is unaffected.
 *
 * @module
 */

/** glibc's `M_MMAP_THRESHOLD` parameter of `mallopt`. */
const M_MMAP_THRESHOLD = -3;

/** Allocations from this size on are mapped on their own (and unmapped when freed). */
export const LARGE_ALLOCATION_BYTES = 1 << 20;

let applied: boolean | undefined;

/**
 * Sets glibc's mmap threshold to {@linkcode LARGE_ALLOCATION_BYTES} once per process, so that
 * large freed buffers go back to the system. Does nothing where libc is not glibc, where FFI or
 * reading `MALLOC_MMAP_THRESHOLD_` is not granted (it never prompts), or where the user set
 * `MALLOC_MMAP_THRESHOLD_` (theirs wins).
 *
 * @returns Whether the threshold is set by this call or an earlier one.
 */
export function returnLargeBuffersToSystem(): boolean {
  if (applied !== undefined) return applied;
  applied = false;
  if (Deno.build.os !== "linux") return applied;
  // Ask nothing of a user who did not grant these (a library call must not prompt): without env
  // access a MALLOC_MMAP_THRESHOLD_ of theirs cannot be seen, and it must win.
  const granted = (d: Deno.PermissionDescriptor): boolean =>
    Deno.permissions.querySync(d).state === "granted";
  if (!granted({ name: "ffi" }) || !granted({ name: "env", variable: "MALLOC_MMAP_THRESHOLD_" })) {
    return applied;
  }
  if (Deno.env.get("MALLOC_MMAP_THRESHOLD_") !== undefined) return applied;
  try {
    const libc = Deno.dlopen(
      "libc.so.6",
      {
        mallopt: { parameters: ["i32", "i32"], result: "i32" },
      } as const satisfies Deno.ForeignLibraryInterface,
    );
    try {
      applied = libc.symbols.mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES) === 1;
    } finally {
      libc.close();
    }
  } catch {
    // Not glibc (musl has no such library name), or no FFI permission.
  }
  return applied;
}

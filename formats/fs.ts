/**
 * File-system helpers shared by the loaders and the tools.
 *
 * @module
 */

/**
 * What `Deno.stat` says of `path`, or `null` when nothing is there.
 *
 * @throws Error as `Deno.stat` does for anything but a missing path (permissions, I/O).
 */
export async function statIfExists(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}

/** Whether anything (a file, a folder) is at `path`. */
export async function exists(path: string): Promise<boolean> {
  return (await statIfExists(path)) !== null;
}

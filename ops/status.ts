/**
 * The kernels' status codes (`kernels.zig`: 0 ok, -1 non-finite input, -2 bad packed blob, -3
 * bad argument, -4 too large for the format, -5 buffer too small, -6 activation above the int8
 * bound, -7 token id outside its table) as errors.
 *
 * @module
 */

/** Throws a clear error for a negative status of a kernel call (`kernels.zig`'s codes). */
export function checkStatus(code: number, what: string): void {
  if (code === 0) return;
  const reasons: Record<number, string> = {
    [-1]: "the input contains NaN or infinity",
    [-2]: "the packed weights are corrupt or of another format",
    [-3]: "an argument is invalid (a size, stride or option code the kernel cannot take)",
    [-4]: "the shape is too large for the packed format",
    [-5]: "the buffer is too small",
    [-6]: "an activation exceeds the int8 kernels' bound (int8ActivationQmax)",
    [-7]: "a token id is outside its embedding table",
  };
  throw new Error(`${what} failed: ${reasons[code] ?? `status ${code}`}`);
}

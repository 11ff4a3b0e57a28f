/**
 * Files the module fetches for its user (kernel libraries, models): the user cache folder, a
 * streamed download, SHA-256, and writes that go through a temporary file and a rename, so a
 * crash never leaves half a file and a file another process has loaded is never overwritten.
 *
 * @module
 */

/**
 * The user cache root: `$SPARSEBERT_CACHE` when set, else the platform cache folder
 * (`$XDG_CACHE_HOME` or `~/.cache` on Linux, `~/Library/Caches` on macOS, `%LOCALAPPDATA%` on
 * Windows) with `sparsebert/` appended.
 */
export function userCacheDir(): string {
  const get = (name: string): string | undefined => Deno.env.get(name) || undefined;
  const explicit = get("SPARSEBERT_CACHE");
  if (explicit !== undefined) return explicit;
  const home = get("HOME") ?? get("USERPROFILE") ?? ".";
  const platform = Deno.build.os === "darwin"
    ? `${home}/Library/Caches`
    : Deno.build.os === "windows"
    ? get("LOCALAPPDATA") ?? `${home}/AppData/Local`
    : get("XDG_CACHE_HOME") ?? `${home}/.cache`;
  return `${platform}/sparsebert`;
}

/** Writes `data` to `path` through a temporary file in the same folder and a rename. */
export async function writeFileAtomic(path: string, data: Uint8Array): Promise<void> {
  const tmp = `${path}.tmp-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`;
  try {
    await Deno.writeFile(tmp, data);
    await Deno.rename(tmp, path);
  } catch (err) {
    await Deno.remove(tmp).catch(() => {});
    throw err;
  }
}

/** Lower-case hex SHA-256 of `data`. */
export async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = new Uint8Array(
    await crypto.subtle.digest("SHA-256", data as Uint8Array<ArrayBuffer>),
  );
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Progress of {@linkcode downloadBytes}: bytes so far and the announced total (or null). */
export type DownloadProgress = (received: number, total: number | null) => void;

/**
 * Fetches `url` whole, reporting progress about every 4 MiB. Throws on an HTTP error status
 * and on a body shorter than its `content-length`.
 */
export async function downloadBytes(
  url: string | URL,
  onProgress: DownloadProgress = () => {},
): Promise<Uint8Array> {
  const response = await fetch(url);
  if (!response.ok || response.body === null) {
    await response.body?.cancel();
    throw new Error(`HTTP ${response.status} ${response.statusText} for ${url}`);
  }
  const header = response.headers.get("content-length");
  const total = header === null ? null : Number(header);
  const chunks: Uint8Array[] = [];
  let received = 0;
  let nextReport = 0;
  for await (const chunk of response.body) {
    chunks.push(chunk);
    received += chunk.byteLength;
    if (received >= nextReport) {
      onProgress(received, total);
      nextReport = received + (4 << 20);
    }
  }
  if (total !== null && received !== total) {
    throw new Error(`Download of ${url} was cut short: got ${received} of ${total} bytes`);
  }
  onProgress(received, total);
  const out = new Uint8Array(received);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return out;
}

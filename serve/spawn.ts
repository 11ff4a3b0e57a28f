/**
 * Starts the server as a child process on a free loopback port and waits until it is ready;
 * used by the server tests and the load tool. The child's JSON log lines are collected.
 *
 * @module
 */
/** Options of {@linkcode spawnServer}. */
export interface SpawnOptions {
  /**
   * Configuration as in a serve.json file (validated by the server); host and port are forced
   * to 127.0.0.1 and a free port.
   */
  config: Record<string, unknown>;
  /** Extra environment variables (e.g. `SPARSEBERT_API_KEY`). */
  env?: Record<string, string>;
  /** Longest wait for readiness, in milliseconds (default 180 s). */
  readyTimeoutMs?: number;
  /** Forward the child's stderr to ours (default true). */
  inheritStderr?: boolean;
}

/** A server child process. */
export interface SpawnedServer {
  /** Base URL, e.g. `http://127.0.0.1:40123`. */
  url: string;
  /** Port. */
  port: number;
  /** The child process. */
  process: Deno.ChildProcess;
  /** Log lines parsed so far. */
  logs: Record<string, unknown>[];
  /** Sends SIGTERM and waits for the exit status (SIGKILL after `graceMs`, default 30 s). */
  stop(graceMs?: number): Promise<Deno.CommandStatus>;
}

const MAIN = new URL("./main.ts", import.meta.url).pathname;
const ROOT_CONFIG = new URL("../deno.json", import.meta.url).pathname;

/**
 * Spawns `serve/main.ts` with `config` on 127.0.0.1 and a free port.
 *
 * @throws Error with the child's last log lines when it exits or is not ready in time.
 */
export async function spawnServer(options: SpawnOptions): Promise<SpawnedServer> {
  const dir = await Deno.makeTempDir({ prefix: "sparsebert-serve-" });
  const configPath = `${dir}/serve.json`;
  await Deno.writeTextFile(
    configPath,
    JSON.stringify({ log: true, ...options.config, host: "127.0.0.1", port: 0 }),
  );
  const process = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "--unstable-no-legacy-abort",
      "--config",
      ROOT_CONFIG,
      MAIN,
      "--config",
      configPath,
    ],
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: options.inheritStderr === false ? "null" : "inherit",
  }).spawn();
  const logs: Record<string, unknown>[] = [];
  let resolveReady!: (url: string) => void;
  let rejectReady!: (error: Error) => void;
  const ready = new Promise<string>((resolve, reject) => {
    resolveReady = resolve;
    rejectReady = reject;
  });
  const pump = (async () => {
    const decoder = new TextDecoder();
    let buffer = "";
    for await (const chunk of process.stdout) {
      buffer += decoder.decode(chunk, { stream: true });
      let newline: number;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        try {
          const entry = JSON.parse(line) as Record<string, unknown>;
          logs.push(entry);
          if (entry.event === "ready") resolveReady(entry.url as string);
        } catch {
          logs.push({ text: line });
        }
      }
    }
  })();
  const exited = process.status.then((status) => {
    rejectReady(
      new Error(
        `The server exited with code ${status.code} before it was ready; last log lines:\n${
          logs.slice(-5).map((l) => JSON.stringify(l)).join("\n")
        }`,
      ),
    );
    return status;
  });
  const timeoutMs = options.readyTimeoutMs ?? 180_000;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`The server was not ready within ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  let url: string;
  try {
    url = await Promise.race([ready, timeout]);
  } catch (err) {
    try {
      process.kill("SIGKILL");
    } catch { /* already gone */ }
    await exited;
    await pump;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    throw err;
  } finally {
    clearTimeout(timer);
  }
  const stop = async (graceMs = 30_000): Promise<Deno.CommandStatus> => {
    try {
      process.kill("SIGTERM");
    } catch { /* already gone */ }
    let killTimer: ReturnType<typeof setTimeout> | undefined;
    const killed = new Promise<void>((resolve) => {
      killTimer = setTimeout(() => {
        try {
          process.kill("SIGKILL");
        } catch { /* already gone */ }
        resolve();
      }, graceMs);
    });
    const status = await Promise.race([exited, killed.then(() => exited)]);
    clearTimeout(killTimer);
    await pump;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    return status;
  };
  return { url, port: Number(new URL(url).port), process, logs, stop };
}

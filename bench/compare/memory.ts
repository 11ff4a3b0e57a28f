/**
 * Memory accounting for an interleaved group: which contestants can be loaded side by side
 * without the kernel's out-of-memory killer ending one of them (or the run).
 *
 * A group used to load every contestant before the first turn; BERT-Large's int8 step (11
 * processes, each holding its own copy of the model) needs more than this 23.5 GiB machine
 * has. {@linkcode MemoryPlanner} decides before each start whether the next contestant fits
 * in what `/proc/meminfo` says is available, from what the same runtime's processes peaked at
 * earlier in the run (`VmHWM`, per byte of model file); what does not fit waits for the next
 * wave of the group.
 *
 * ```ts
 * const planner = new MemoryPlanner();
 * if (planner.fits(spec, modelBytes(spec.path))) { ... }
 * planner.learn(spec, modelBytes(spec.path), peakRssBytes(pids), pids.length);
 * ```
 *
 * @module
 */

import type { ContestantSpec } from "./contestants.ts";
import type { RuntimeName } from "./matrix.ts";

const GIB = 1024 ** 3;

/**
 * Peak resident bytes per byte of model file, per process, assumed before a runtime has been
 * seen in the run. Measured on BERT-Large seq 128 (peaks after warm-up, less start-up): fp32
 * file 1.34 GB: sparsebert 2.2, ORT node 1.3, ORT Python 1.7, OpenVINO 2.6, DeepSparse 2.8;
 * int8 files 0.43 GB: sparsebert 8.0, ORT about 1, OpenVINO 9.2 (MatMulInteger files; 2.0
 * QDQ), DeepSparse 8.0 (QDQ). The guesses sit above those, so a first guess errs on the side
 * of an extra wave.
 */
const DEFAULT_RATIO: Readonly<Record<RuntimeName, { fp32: number; int8: number }>> = {
  "sparsebert": { fp32: 3, int8: 12 },
  "ort-node": { fp32: 2, int8: 2 },
  "ort-py": { fp32: 2.5, int8: 2 },
  "openvino": { fp32: 3.2, int8: 10 },
  "deepsparse": { fp32: 3.2, int8: 9 },
  "torch": { fp32: 3, int8: 4 },
};

/** Bytes of a process start-up without a model (interpreter, runtime libraries). */
const BASE_BYTES = 400 * 1024 ** 2;

/** Model files below this size teach the planner nothing (start-up dominates their peak). */
const MIN_LEARN_BYTES = 64 * 1024 ** 2;

/** Extra factor on a learned ratio: a new shape can need a little more than the last one. */
const LEARNED_MARGIN = 1.15;

/** Bytes of a model file and its external data file, if any. */
export function modelBytes(path: string): number {
  let total = 0;
  for (const p of [path, `${path}.data`]) {
    try {
      total += Deno.statSync(p).size;
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
  }
  return total;
}

/** A field of /proc/meminfo (`text`, or the file) in bytes, or null where it cannot be read. */
export function meminfoBytes(field: string, text?: string): number | null {
  let info = text;
  if (info === undefined) {
    try {
      info = Deno.readTextFileSync("/proc/meminfo");
    } catch {
      return null;
    }
  }
  const kb = info.match(new RegExp(`^${field}:\\s+(\\d+)\\s+kB`, "m"))?.[1];
  return kb === undefined ? null : Number(kb) * 1024;
}

/** `MemAvailable` of /proc/meminfo in bytes, or null where it cannot be read. */
export function memAvailableBytes(meminfo?: string): number | null {
  return meminfoBytes("MemAvailable", meminfo);
}

/**
 * Sum of the peak resident set (`VmHWM`) of the processes, in bytes; processes that are gone
 * or unreadable count 0.
 */
export function peakRssBytes(pids: readonly number[]): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const kb = Deno.readTextFileSync(`/proc/${pid}/status`).match(/^VmHWM:\s+(\d+)\s+kB/m)?.[1];
      if (kb !== undefined) total += Number(kb) * 1024;
    } catch {
      // Gone, or not Linux.
    }
  }
  return total;
}

/** Gibibytes with one decimal, for progress lines and errors. */
export function gib(bytes: number): string {
  return `${(bytes / GIB).toFixed(1)} GiB`;
}

/** Settings of {@linkcode MemoryPlanner}. */
export interface MemoryPlannerOptions {
  /** Bytes to leave free for everything else (default: 8% of memory, at least 1.5 GiB). */
  reserveBytes?: number;
  /** Reads available bytes (default {@linkcode memAvailableBytes}; null: no limit known). */
  available?: () => number | null;
}

/**
 * Decides which contestants can be loaded next to those already loaded, and learns each
 * runtime's peak memory per byte of model file as contestants load. Lives for a whole run so
 * that what BERT-Large's fp32 step taught applies to its int8 step.
 */
export class MemoryPlanner {
  #ratio = new Map<string, number>();
  #reserve: number;
  #available: () => number | null;

  /** A planner with nothing learned yet. */
  constructor(options: MemoryPlannerOptions = {}) {
    const total = meminfoBytes("MemTotal");
    this.#reserve = options.reserveBytes ??
      Math.max(1.5 * GIB, total === null ? 0 : 0.08 * total);
    this.#available = options.available ?? (() => memAvailableBytes());
  }

  /** Bytes kept free. */
  get reserveBytes(): number {
    return this.#reserve;
  }

  #key(spec: ContestantSpec): string {
    return `${spec.runtime}|${spec.form === "fp32" ? "fp32" : "int8"}`;
  }

  /** Processes a contestant starts: one per instance for Deno runners, one for Python peers. */
  static processes(spec: ContestantSpec): number {
    return spec.runtime === "sparsebert" || spec.runtime === "ort-node" ? spec.instances : 1;
  }

  /** Expected peak bytes of `spec` on a model file of `fileBytes`. */
  need(spec: ContestantSpec, fileBytes: number): number {
    const kind = spec.form === "fp32" ? "fp32" : "int8";
    const learned = this.#ratio.get(this.#key(spec));
    // A learned ratio replaces the default guess, but never falls below half of it.
    const guess = DEFAULT_RATIO[spec.runtime][kind];
    const ratio = learned !== undefined ? Math.max(learned * LEARNED_MARGIN, guess / 2) : guess;
    return MemoryPlanner.processes(spec) * (BASE_BYTES + ratio * fileBytes);
  }

  /**
   * Whether `spec` can be started now: its expected peak fits in the available memory less
   * the reserve. True when the available memory cannot be read (no limit known).
   */
  fits(spec: ContestantSpec, fileBytes: number): boolean {
    const available = this.#available();
    if (available === null) return true;
    return this.need(spec, fileBytes) <= available - this.#reserve;
  }

  /** Available bytes now, or null. */
  available(): number | null {
    return this.#available();
  }

  /**
   * Records what a loaded (and warmed-up) contestant peaked at: `peakBytes` over `processes`
   * processes. The ratio kept per runtime and precision is the largest seen.
   */
  learn(spec: ContestantSpec, fileBytes: number, peakBytes: number, processes: number): void {
    // A small model's peak is mostly start-up: its ratio says nothing about a large one.
    if (!(fileBytes >= MIN_LEARN_BYTES) || !(peakBytes > 0) || processes < 1) return;
    const ratio = Math.max(0, peakBytes / processes - BASE_BYTES) / fileBytes;
    const key = this.#key(spec);
    this.#ratio.set(key, Math.max(this.#ratio.get(key) ?? 0, ratio));
  }

  /** Learned ratios (peak bytes per model byte), for the report. */
  learned(): Record<string, number> {
    return Object.fromEntries(this.#ratio);
  }
}

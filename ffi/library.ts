/**
 * Resolution and loading of the native kernel library.
 *
 * Order: `SPARSEBERT_LIB` (an explicit file) -> `SPARSEBERT_LIB_DIR` (a build folder) -> the
 * local build in `build/fast/lib` next to this module. Within a folder the variant is chosen
 * by probing the CPU through the baseline library (cpuid + XCR0): `avx512vnni`, then `avx2`,
 * then `baseline`. `SPARSEBERT_ISA` forces a variant and fails clearly if the CPU lacks it.
 *
 * @module
 */
import { ABI_VERSION, type KernelSymbols, symbols } from "./symbols.ts";

/** ISA variants of the kernel library, best last. */
export const ISA_VARIANTS = ["baseline", "avx2", "avx512vnni"] as const;
/** One ISA variant name. */
export type IsaVariant = typeof ISA_VARIANTS[number];

/** CPU feature bits reported by `sb_cpu_features` (mirrors `kernels/cpu.zig`). */
export const CpuFeature = {
  avx2: 1 << 0,
  avx512: 1 << 1,
  avx512vnni: 1 << 2,
  avxvnni: 1 << 3,
} as const;

const REQUIRED: Record<IsaVariant, number> = {
  baseline: 0,
  avx2: CpuFeature.avx2,
  avx512vnni: CpuFeature.avx2 | CpuFeature.avx512 | CpuFeature.avx512vnni,
};

/** A loaded kernel library and what was learned while loading it. */
export interface KernelLibrary {
  /** Bound symbols. */
  readonly symbols: KernelSymbols;
  /** Variant loaded. */
  readonly isa: IsaVariant;
  /** File loaded. */
  readonly path: string;
  /** CPU feature bits of this machine. */
  readonly cpuFeatures: number;
  /** Closes the library; only for tests that open several variants. */
  close(): void;
}

/** Options for {@linkcode openKernelLibrary}. */
export interface OpenOptions {
  /** Variant to load; default: the best the CPU supports. */
  isa?: IsaVariant;
  /** Folder holding `libsparsebert_<isa>.so`; default: env or the local build. */
  dir?: string;
  /** Explicit library file; overrides `dir` and `isa`. */
  path?: string;
}

/** Error raised when the native library cannot be found, opened or used on this CPU. */
export class KernelLibraryError extends Error {
  /** Creates the error; `cause` keeps the original failure. */
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "KernelLibraryError";
  }
}

const BUILD_HINT =
  "Build it with `deno task build` (installs the pinned Zig into .tools/ and compiles kernels.zig)";

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined; // no --allow-env: use defaults
  }
}

/** Folder searched for the library when no option or env var says otherwise. */
export function defaultLibraryDir(): string {
  return env("SPARSEBERT_LIB_DIR") ?? new URL("../build/fast/lib", import.meta.url).pathname;
}

/** File name of one variant inside a build folder. */
export function libraryFileName(isa: IsaVariant): string {
  return `libsparsebert_${isa}.so`;
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

function open(path: string): Deno.DynamicLibrary<typeof symbols> {
  if (!exists(path)) {
    throw new KernelLibraryError(`Native kernel library not found at "${path}". ${BUILD_HINT}.`);
  }
  try {
    return Deno.dlopen(path, symbols);
  } catch (cause) {
    throw new KernelLibraryError(
      `Could not load the native kernel library "${path}" (${(cause as Error).message}). ` +
        `${BUILD_HINT}; run Deno with --allow-ffi.`,
      { cause },
    );
  }
}

function checkAbi(lib: Deno.DynamicLibrary<typeof symbols>, path: string): void {
  const abi = lib.symbols.sb_abi_version();
  if (abi !== ABI_VERSION) {
    lib.close();
    throw new KernelLibraryError(
      `Native kernel library "${path}" has ABI version ${abi}, but this module needs ` +
        `${ABI_VERSION}. ${BUILD_HINT}.`,
    );
  }
}

/** Reads the CPU feature bits through the baseline library (safe on any x86_64 CPU). */
export function probeCpuFeatures(dir: string = defaultLibraryDir()): number {
  const lib = open(`${dir}/${libraryFileName("baseline")}`);
  try {
    checkAbi(lib, dir);
    return lib.symbols.sb_cpu_features();
  } finally {
    lib.close();
  }
}

/** Whether a CPU with `features` can run `isa`. */
export function cpuSupports(features: number, isa: IsaVariant): boolean {
  return (features & REQUIRED[isa]) === REQUIRED[isa];
}

/** Human-readable name of a feature mask, e.g. `"avx2 avx512 avx512vnni"`. */
export function describeFeatures(features: number): string {
  const names = Object.entries(CpuFeature).filter(([, bit]) => (features & bit) !== 0);
  return names.map(([name]) => name).join(" ") || "none (x86-64 baseline only)";
}

/** Opens a kernel library: explicit path, forced variant, or the best variant for this CPU. */
export function openKernelLibrary(options: OpenOptions = {}): KernelLibrary {
  const explicit = options.path ?? env("SPARSEBERT_LIB");
  if (explicit !== undefined) return openExplicit(explicit);
  const dir = options.dir ?? defaultLibraryDir();
  const features = probeCpuFeatures(dir);
  const forced = options.isa ?? env("SPARSEBERT_ISA");
  let isa: IsaVariant;
  if (forced !== undefined) {
    if (!(ISA_VARIANTS as readonly string[]).includes(forced)) {
      throw new KernelLibraryError(
        `Unknown ISA variant "${forced}" (SPARSEBERT_ISA); expected one of ${
          ISA_VARIANTS.join(", ")
        }.`,
      );
    }
    isa = forced as IsaVariant;
    if (!cpuSupports(features, isa)) {
      throw new KernelLibraryError(
        `This CPU cannot run the "${isa}" kernel variant: it has ${
          describeFeatures(features)
        }. Unset SPARSEBERT_ISA or choose a variant it supports.`,
      );
    }
  } else {
    isa = [...ISA_VARIANTS].reverse().find((v) => cpuSupports(features, v)) ?? "baseline";
  }
  const path = `${dir}/${libraryFileName(isa)}`;
  const lib = open(path);
  checkAbi(lib, path);
  return { symbols: lib.symbols, isa, path, cpuFeatures: features, close: () => lib.close() };
}

function openExplicit(path: string): KernelLibrary {
  const lib = open(path);
  checkAbi(lib, path);
  const features = lib.symbols.sb_cpu_features();
  const required = lib.symbols.sb_required_features();
  if ((features & required) !== required) {
    lib.close();
    throw new KernelLibraryError(
      `This CPU cannot run "${path}": it needs ${describeFeatures(required)} but the CPU has ${
        describeFeatures(features)
      }.`,
    );
  }
  const isa = ISA_VARIANTS[lib.symbols.sb_isa_level()] ?? "baseline";
  return { symbols: lib.symbols, isa, path, cpuFeatures: features, close: () => lib.close() };
}

let shared: KernelLibrary | undefined;

/**
 * The process-wide kernel library, opened on first use and shared by every op. Opening it
 * sets the default thread count: `SPARSEBERT_THREADS`, else the physical core count.
 */
export function kernels(): KernelLibrary {
  if (shared === undefined) {
    const lib = openKernelLibrary();
    const fromEnv = env("SPARSEBERT_THREADS");
    const wanted = fromEnv !== undefined ? Number(fromEnv) : physicalCores();
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > 64) {
      lib.close();
      throw new RangeError(`SPARSEBERT_THREADS must be an integer in 1..64, got "${fromEnv}"`);
    }
    lib.symbols.sb_set_threads(wanted);
    shared = lib;
  }
  return shared;
}

/** The CPU's model name from /proc/cpuinfo, or null where it cannot be read. */
export function cpuModel(): string | null {
  try {
    const line = Deno.readTextFileSync("/proc/cpuinfo").split("\n").find((l) =>
      l.startsWith("model name")
    );
    return line?.split(":")[1]?.trim() ?? null;
  } catch {
    return null; // not Linux, or no --allow-read
  }
}

/** Physical cores of this machine (Linux topology), falling back to logical CPUs. */
export function physicalCores(): number {
  try {
    const info = Deno.readTextFileSync("/proc/cpuinfo");
    const cores = new Set<string>();
    let physical = "0";
    for (const line of info.split("\n")) {
      const [key, value] = line.split(":").map((s) => s?.trim());
      if (key === "physical id") physical = value;
      if (key === "core id") cores.add(`${physical}:${value}`);
    }
    if (cores.size > 0) return cores.size;
  } catch {
    // no /proc or no --allow-read: fall through
  }
  return navigator.hardwareConcurrency ?? 1;
}

/** Sets the worker threads used by every kernel (caller included); returns the count in effect. */
export function setThreads(count: number): number {
  if (!Number.isInteger(count) || count < 1 || count > 64) {
    throw new RangeError(`Thread count must be an integer in 1..64, got ${count}`);
  }
  return kernels().symbols.sb_set_threads(count);
}

/** Threads in use by the kernels (caller included). */
export function threads(): number {
  return kernels().symbols.sb_threads();
}

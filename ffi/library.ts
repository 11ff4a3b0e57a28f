/**
 * Resolution and loading of the native kernel library.
 *
 * Order: `SPARSEBERT_LIB` (an explicit file) -> `SPARSEBERT_LIB_DIR` (a build folder) -> the
 * local build in `build/fast/lib` next to this module, when the module is a local file -> for a
 * module imported from a URL, the user cache (`$SPARSEBERT_CACHE`, else the platform cache
 * folder; keyed by module version and the pinned digests), filled on import from the release
 * base URL (`$SPARSEBERT_RELEASE_URL`, default: the module's own root) after checking each file
 * against the SHA-256 pinned in `ffi/checksums.ts`.
 *
 * Within a folder the variant is chosen by probing the CPU through the baseline library (cpuid
 * + XCR0): `avx512vnni`, then `avx2`, then `baseline`. `SPARSEBERT_ISA` forces a variant and
 * fails clearly if the CPU lacks it.
 *
 * @module
 */
import { LIBRARY_SHA256, RELEASE_VERSION } from "./checksums.ts";
import { downloadBytes, sha256Hex, userCacheDir, writeFileAtomic } from "./download.ts";
import { ABI_VERSION, type KernelSymbols, symbols } from "./symbols.ts";

/** ISA variants of the kernel library, best last. */
export const ISA_VARIANTS = ["baseline", "avx2", "avx512vnni"] as const;
/** One ISA variant name. */
export type IsaVariant = typeof ISA_VARIANTS[number];

/**
 * How each variant's kernels compute where variants may differ, so callers and tests can expect
 * the right numbers from the variant loaded instead of from a guess about the machine.
 */
export const VARIANT_NUMERICS: Record<
  IsaVariant,
  { int8PairsSaturate: boolean; activationQmax: number }
> = {
  // int8PairsSaturate: the "ort-u8" mode's 8-bit activations: AVX2's vpmaddubsw adds each pair
  // of u8 x s8 products in saturating int16 (as ONNX Runtime's AVX2 kernel does); VNNI and the
  // scalar path are exact. activationQmax: the largest code of the kernels' own activations
  // (7 bits where vpmaddubsw could saturate, 8 bits with vpdpbusd).
  baseline: { int8PairsSaturate: false, activationQmax: 127 },
  avx2: { int8PairsSaturate: true, activationQmax: 127 },
  avx512vnni: { int8PairsSaturate: false, activationQmax: 255 },
};

/** CPU feature bits reported by `sb_cpu_features` (mirrors `kernels/cpu.zig`). */
export const CpuFeature = {
  avx2: 1 << 0,
  avx512: 1 << 1,
  avx512vnni: 1 << 2,
  avxvnni: 1 << 3,
  avx512f: 1 << 4,
  avx512bf16: 1 << 5,
  amx: 1 << 6,
} as const;

/**
 * The CPU features a user asks about, under their `/proc/cpuinfo` names: what
 * `deno task cli info --json` reports. Only avx2, avx512 and avx512_vnni choose a variant today;
 * the others are reported so a reader knows what the machine could offer.
 */
export interface CpuFeatureReport {
  /** AVX2 + FMA + F16C + BMI2 with the YMM state enabled by the OS. */
  avx2: boolean;
  /** AVX-512 Foundation with the ZMM state enabled. */
  avx512f: boolean;
  /** AVX-512 F/BW/DQ/VL/CD together: what the avx512vnni variant needs besides VNNI. */
  avx512: boolean;
  /** AVX-512 VNNI (`vpdpbusd` on zmm). */
  avx512_vnni: boolean;
  /** AVX512_BF16 (`vdpbf16ps`). */
  avx512_bf16: boolean;
  /** AVX-VNNI (VEX-encoded `vpdpbusd` on ymm). */
  avx_vnni: boolean;
  /** AMX-TILE and AMX-INT8 with the tile state enabled. */
  amx: boolean;
}

/** The feature bits of `features` as a {@linkcode CpuFeatureReport}. */
export function cpuFeatureReport(features: number): CpuFeatureReport {
  const has = (bit: number): boolean => (features & bit) !== 0;
  return {
    avx2: has(CpuFeature.avx2),
    avx512f: has(CpuFeature.avx512f),
    avx512: has(CpuFeature.avx512),
    avx512_vnni: has(CpuFeature.avx512vnni),
    avx512_bf16: has(CpuFeature.avx512bf16),
    avx_vnni: has(CpuFeature.avxvnni),
    amx: has(CpuFeature.amx),
  };
}

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
  /** CPU feature bits of this machine (after {@linkcode OpenOptions.featureMask}). */
  readonly cpuFeatures: number;
  /** Why this variant was loaded, e.g. `"forced by SPARSEBERT_ISA"`. */
  readonly reason: string;
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
  /**
   * Only these of the probed feature bits count (default: all). Tests use it to act as a CPU
   * that lacks a feature; it can only remove features, never claim ones the CPU lacks.
   */
  featureMask?: number;
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

/** Where this module lives: a `file:` URL for a checkout, `http(s):` when imported remotely. */
const MODULE_ROOT = new URL("../", import.meta.url);
const MODULE_IS_LOCAL = MODULE_ROOT.protocol === "file:";

/** Folder searched for the library when no option or env var says otherwise. */
export function defaultLibraryDir(): string {
  const fromEnv = env("SPARSEBERT_LIB_DIR");
  if (fromEnv !== undefined) return fromEnv;
  if (MODULE_IS_LOCAL) return decodeURIComponent(new URL("build/fast/lib", MODULE_ROOT).pathname);
  if (remote.dir !== undefined) return remote.dir;
  throw remote.error ?? new KernelLibraryError("The kernel libraries were not fetched.");
}

/** The base URL released libraries are fetched from: `<base>/lib/libsparsebert_<isa>.so`. */
export function releaseBaseUrl(): URL {
  const fromEnv = env("SPARSEBERT_RELEASE_URL");
  return fromEnv !== undefined
    ? new URL(fromEnv.endsWith("/") ? fromEnv : `${fromEnv}/`)
    : MODULE_ROOT;
}

/**
 * The cache folder of this module version's libraries: keyed by the version and by a digest of
 * the pinned digests, so libraries of another build never mix with these.
 */
export async function libraryCacheDir(): Promise<string> {
  const pinned = new TextEncoder().encode(JSON.stringify(LIBRARY_SHA256));
  const key = (await sha256Hex(pinned)).slice(0, 16);
  return `${userCacheDir()}/lib/${RELEASE_VERSION}-${key}`;
}

/**
 * Makes sure `libsparsebert_<isa>.so` is in the cache folder `dir` with its pinned digest,
 * fetching it from the release base URL when it is not. A file whose digest differs is never
 * written (downloaded) or used (cached: it is removed and fetched again).
 */
export async function fetchLibrary(isa: IsaVariant, dir: string): Promise<string> {
  const name = libraryFileName(isa);
  const path = `${dir}/${name}`;
  const expected = LIBRARY_SHA256[isa];
  try {
    if (await sha256Hex(await Deno.readFile(path)) === expected) return path;
    await Deno.remove(path); // corrupt or from another build: fetch it again
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  const url = new URL(`lib/${name}`, releaseBaseUrl());
  let data: Uint8Array;
  try {
    data = await downloadBytes(url);
  } catch (cause) {
    throw new KernelLibraryError(
      `Cannot fetch the kernel library ${name} from ${url} (${(cause as Error).message}). ` +
        `Set SPARSEBERT_RELEASE_URL to a release folder written by \`deno task release\`, or ` +
        `clone the repository and run \`deno task build\`, then set SPARSEBERT_LIB_DIR.`,
      { cause },
    );
  }
  const actual = await sha256Hex(data);
  if (actual !== expected) {
    throw new KernelLibraryError(
      `Refusing the kernel library ${name} from ${url}: its SHA-256 is ${actual}, but this ` +
        `module pins ${expected}. Nothing was written to the cache.`,
    );
  }
  await Deno.mkdir(dir, { recursive: true });
  await writeFileAtomic(path, data);
  return path;
}

/** What the import-time fetch of a URL-imported module left: the cache folder, or why not. */
const remote: { dir?: string; error?: KernelLibraryError } = {};

async function fetchRemoteLibraries(): Promise<void> {
  try {
    const dir = await libraryCacheDir();
    await fetchLibrary("baseline", dir);
    const features = probeCpuFeatures(dir);
    const forced = env("SPARSEBERT_ISA");
    const wanted = (ISA_VARIANTS as readonly string[]).includes(forced ?? "")
      ? forced as IsaVariant
      : bestVariant(features);
    // A forced variant the CPU lacks is not fetched; opening it reports the clear error.
    if (cpuSupports(features, wanted)) await fetchLibrary(wanted, dir);
    remote.dir = dir;
  } catch (cause) {
    remote.error = cause instanceof KernelLibraryError ? cause : new KernelLibraryError(
      `Cannot prepare the kernel libraries for ${MODULE_ROOT}: ${(cause as Error).message}`,
      { cause },
    );
  }
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

/** The feature names a variant needs, e.g. `"avx2 avx512 avx512vnni"`. */
export function requiredFeatures(isa: IsaVariant): string {
  return describeFeatures(REQUIRED[isa]).replace(/^none.*/, "nothing beyond x86-64");
}

/** Opens a kernel library: explicit path, forced variant, or the best variant for this CPU. */
export function openKernelLibrary(options: OpenOptions = {}): KernelLibrary {
  const mask = options.featureMask ?? ~0;
  const explicitOption = options.path;
  const explicit = explicitOption ?? env("SPARSEBERT_LIB");
  if (explicit !== undefined) {
    const source = explicitOption !== undefined ? "the path option" : "SPARSEBERT_LIB";
    return openExplicit(explicit, mask, `explicit library file from ${source}`);
  }
  const dir = options.dir ?? defaultLibraryDir();
  const features = probeCpuFeatures(dir) & mask;
  const forcedOption = options.isa;
  const forced = forcedOption ?? env("SPARSEBERT_ISA");
  let isa: IsaVariant;
  let reason: string;
  if (forced !== undefined) {
    reason = `forced by ${forcedOption !== undefined ? "the isa option" : "SPARSEBERT_ISA"}`;
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
    isa = bestVariant(features);
    const better = ISA_VARIANTS.slice(ISA_VARIANTS.indexOf(isa) + 1);
    reason = `best variant this CPU can run (it needs ${requiredFeatures(isa)})` +
      better.map((v) => `; not ${v}: this CPU lacks ${describeFeatures(REQUIRED[v] & ~features)}`)
        .join("");
  }
  const path = `${dir}/${libraryFileName(isa)}`;
  const lib = open(path);
  checkAbi(lib, path);
  return loaded(lib, { isa, path, cpuFeatures: features, reason });
}

function loaded(
  lib: Deno.DynamicLibrary<typeof symbols>,
  facts: Omit<KernelLibrary, "symbols" | "close">,
): KernelLibrary {
  return { symbols: lib.symbols, ...facts, close: () => lib.close() };
}

/** The best variant a CPU with `features` can run. */
export function bestVariant(features: number): IsaVariant {
  return [...ISA_VARIANTS].reverse().find((v) => cpuSupports(features, v)) ?? "baseline";
}

function openExplicit(path: string, mask: number, reason: string): KernelLibrary {
  const lib = open(path);
  checkAbi(lib, path);
  const features = lib.symbols.sb_cpu_features() & mask;
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
  return loaded(lib, { isa, path, cpuFeatures: features, reason });
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

// A module imported from a URL fetches (or finds in the cache) its libraries once, on import, so
// every op can open them synchronously. Failures are kept and raised on first use, with the
// reason, instead of failing the import itself.
if (
  !MODULE_IS_LOCAL && env("SPARSEBERT_LIB") === undefined && env("SPARSEBERT_LIB_DIR") === undefined
) {
  await fetchRemoteLibraries();
}

/**
 * Per-layer kernel choice: a {@linkcode LinearFactory} that picks dense fp32, dense int8,
 * sparse fp32 or sparse int8 for every linear layer from its measured sparsity and whether it
 * has int8 weights, confirms the pick with a quick autotune on the layer's real shape, and
 * records the choice and the reason.
 *
 * ```ts
 * import { KernelChooser } from "./kernel_choice.ts";
 * const chooser = new KernelChooser({ precision: "auto" });
 * using encoder = new BertEncoder(weights, { linear: chooser.factory });
 * await chooser.saveCache();
 * for (const d of chooser.decisions) console.log(d.layer, d.role, d.kind, d.reason);
 * ```
 *
 * Rules: the precision (`"fp32"`, `"int8"`, or `"auto"`: int8 when the weight has an int8 form)
 * gives a dense kernel and a sparse one. The sparse kernel is a candidate only when the layer
 * is sparse enough to possibly win (element sparsity for sparse fp32, 4x1-block sparsity for
 * sparse int8, at least `sparseFloor`). With two candidates the autotune times both on the
 * layer's shape (`tuneRows` tokens, best of `iterations`) and keeps the faster; without the
 * autotune the sparse kernel is taken at `sparseThreshold` (0.7, where Intel's SpMM dispatch
 * switches). Timings are cached by (shape, kind, sparsity bucket, ISA and library digest,
 * threads, rows; a dense kernel's time is one per shape, whatever its zeros) in
 * `.cache/autotune.json`, so the next load times nothing. `kernels` forces one kind for every
 * layer, `roles` one kind per role.
 *
 * @module
 */
import { LIBRARY_SHA256 } from "../ffi/checksums.ts";
import { kernels, threads } from "../ffi/library.ts";
import { userCacheDir } from "../ffi/download.ts";
import { KERNEL_KINDS, type KernelKind, type LinearOp } from "../ops/linear.ts";
import { SPARSE_I8_MAX_IN } from "../ops/sparse_linear_i8.ts";
import type { LinearFactory, LinearRole, LinearSpec } from "./bert.ts";
import { buildLinear, INT8_ACTIVATIONS, type Int8Activations } from "./linear_kinds.ts";
import { measureSparsity } from "./quantized.ts";
import type { DenseWeight, WeightSparsity } from "./weights.ts";

/**
 * Which arithmetic to run: fp32, int8, int8 where the model has int8 weights (`"auto"`), or
 * `"bf16"` (opt-in: dense layers with bf16 weights, `vdpbf16ps` where the CPU has AVX512_BF16;
 * sparse layers stay sparse fp32).
 */
export type Precision = "fp32" | "int8" | "auto" | "bf16";

/**
 * Default autotune cache file: `.cache/autotune.json` in the checkout holding this module, or
 * `autotune.json` in the user cache ({@linkcode userCacheDir}) when it was imported from a URL.
 */
export function defaultAutotuneCache(): string {
  const here = new URL("../.cache/autotune.json", import.meta.url);
  if (here.protocol === "file:") return decodeURIComponent(here.pathname);
  return `${userCacheDir()}/autotune.json`;
}

/** Options of {@linkcode KernelChooser}. */
export interface KernelChoiceOptions {
  /** `"auto"` (default): int8 kernels for layers with int8 weights, fp32 otherwise. */
  precision?: Precision;
  /** Force one kernel for every layer; default `"auto"` (choose per layer). */
  kernels?: "auto" | KernelKind;
  /** Force a kernel per role (wins over `kernels`). */
  roles?: Partial<Record<LinearRole, KernelKind>>;
  /** Time the candidates when there are two (default true). */
  autotune?: boolean;
  /** Autotune cache file; default {@linkcode defaultAutotuneCache}, `null` for none. */
  cachePath?: string | null;
  /** Tokens per timed call (default 128: one sequence of 128). */
  tuneRows?: number;
  /** Timed calls per candidate after one warm-up, in turns; the best counts (default 5). */
  iterations?: number;
  /** Least sparsity at which a sparse kernel is a candidate (default 0.5). */
  sparseFloor?: number;
  /** Without the autotune: sparsity at which the sparse kernel is taken (default 0.7). */
  sparseThreshold?: number;
  /**
   * Activation quantization of the int8 layers: `"per-token"` (default) or `"ort"` (ONNX
   * Runtime's u8 per-tensor numerics for `quantize_dynamic` layers; see
   * {@linkcode Int8Activations}).
   */
  int8Activations?: Int8Activations;
  /** Progress lines (one per timed shape). */
  log?: (line: string) => void;
}

/** The kernel chosen for one linear layer, and why. */
export interface KernelDecision {
  /** Encoder layer. */
  layer: number;
  /** Role in the layer. */
  role: LinearRole;
  /** `[out, in]`. */
  shape: [number, number];
  /** The kernel. */
  kind: KernelKind;
  /** Measured sparsity. */
  sparsity: WeightSparsity;
  /** Why, in one line. */
  reason: string;
  /** Milliseconds per call of each timed candidate (absent when nothing was timed). */
  timings?: Partial<Record<KernelKind, number>>;
  /** Whether the timings came from the cache. */
  cached?: boolean;
}

/** The autotune cache file's content. */
interface CacheFile {
  version: 1;
  entries: Record<string, number>;
}

function fixed(x: number): string {
  return x.toFixed(2);
}

/** Chooses and builds the linear ops of an encoder; see the module note. */
export class KernelChooser {
  /** Decisions in build order. */
  readonly decisions: KernelDecision[] = [];
  #options: Required<
    Omit<KernelChoiceOptions, "log" | "roles" | "cachePath" | "int8Activations">
  >;
  #int8Activations: Int8Activations;
  #roles: Partial<Record<LinearRole, KernelKind>>;
  #cachePath: string | null;
  #log: (line: string) => void;
  #cache: Record<string, number> | null = null;
  #dirty = false;

  /**
   * Validates the options; nothing is timed or read until the factory runs.
   *
   * @throws RangeError on an unknown precision or kernel kind, or bad autotune numbers.
   */
  constructor(options: KernelChoiceOptions = {}) {
    const o = {
      precision: options.precision ?? "auto",
      kernels: options.kernels ?? "auto",
      autotune: options.autotune ?? true,
      tuneRows: options.tuneRows ?? 128,
      iterations: options.iterations ?? 5,
      sparseFloor: options.sparseFloor ?? 0.5,
      sparseThreshold: options.sparseThreshold ?? 0.7,
    };
    if (!["fp32", "int8", "auto", "bf16"].includes(o.precision)) {
      throw new RangeError(
        `Unknown precision "${o.precision}": expected fp32, int8, auto or bf16`,
      );
    }
    if (o.kernels !== "auto" && !KERNEL_KINDS.includes(o.kernels)) {
      throw new RangeError(
        `Unknown kernels "${o.kernels}": expected auto, ${KERNEL_KINDS.join(", ")}`,
      );
    }
    for (const [role, kind] of Object.entries(options.roles ?? {})) {
      if (!KERNEL_KINDS.includes(kind as KernelKind)) {
        throw new RangeError(`Unknown kernel "${kind}" for role "${role}"`);
      }
    }
    if (!Number.isInteger(o.tuneRows) || o.tuneRows < 1 || o.tuneRows > 4096) {
      throw new RangeError(`tuneRows must be an integer in 1..4096, got ${o.tuneRows}`);
    }
    if (!Number.isInteger(o.iterations) || o.iterations < 1 || o.iterations > 100) {
      throw new RangeError(`iterations must be an integer in 1..100, got ${o.iterations}`);
    }
    for (const key of ["sparseFloor", "sparseThreshold"] as const) {
      if (!(o[key] >= 0 && o[key] <= 1)) {
        throw new RangeError(`${key} must be in [0, 1], got ${o[key]}`);
      }
    }
    this.#options = o;
    this.#roles = { ...options.roles };
    this.#int8Activations = options.int8Activations ?? "per-token";
    if (!INT8_ACTIVATIONS.includes(this.#int8Activations)) {
      throw new RangeError(
        `Unknown int8Activations "${this.#int8Activations}": expected ${
          INT8_ACTIVATIONS.join(" or ")
        }`,
      );
    }
    this.#cachePath = options.cachePath === undefined ? defaultAutotuneCache() : options.cachePath;
    this.#log = options.log ?? (() => {});
  }

  /** The factory to give {@linkcode BertEncoder} (bound to this chooser). */
  get factory(): LinearFactory {
    return (weight, spec) => this.build(weight, spec);
  }

  #build(kind: KernelKind, weight: DenseWeight, spec: LinearSpec): LinearOp {
    return buildLinear(kind, weight, spec, this.#int8Activations);
  }

  /** Chooses the kernel of one layer (recording the decision) and builds its op. */
  build(weight: DenseWeight, spec: LinearSpec): LinearOp {
    const sparsity = weight.sparsity ?? measureSparsity(weight.weight, weight);
    const base = { layer: spec.layer, role: spec.role, shape: [weight.out, weight.in] } as const;
    const forced = this.#roles[spec.role] ??
      (this.#options.kernels === "auto" ? undefined : this.#options.kernels);
    if (forced !== undefined) {
      const why = this.#roles[spec.role] !== undefined
        ? `forced for role ${spec.role}`
        : "forced by the kernels option";
      this.decisions.push({ ...base, shape: [...base.shape], kind: forced, sparsity, reason: why });
      return this.#build(forced, weight, spec);
    }
    const int8 = this.#options.precision === "int8" ||
      (this.#options.precision === "auto" && weight.quantized !== undefined);
    const dense: KernelKind = int8
      ? "dense-i8"
      : this.#options.precision === "bf16"
      ? "dense-bf16"
      : "dense-f32";
    const sparse: KernelKind = int8 ? "sparse-i8" : "sparse-f32";
    const measure = int8 ? sparsity.block4x1 : sparsity.element;
    const what = int8 ? "4x1 block sparsity" : "element sparsity";
    const precisionWhy = this.#options.precision === "auto"
      ? (int8 ? "int8 weights" : "fp32 weights")
      : `precision ${this.#options.precision}`;
    const record = (kind: KernelKind, reason: string, extra = {}): void => {
      this.decisions.push({
        ...base,
        shape: [...base.shape],
        kind,
        sparsity,
        reason: `${kind}: ${precisionWhy}; ${reason}`,
        ...extra,
      });
    };
    if (int8 && weight.in > SPARSE_I8_MAX_IN) {
      record(dense, `in ${weight.in} > ${SPARSE_I8_MAX_IN}, too wide for the sparse int8 format`);
      return this.#build(dense, weight, spec);
    }
    if (measure < this.#options.sparseFloor) {
      record(dense, `${what} ${fixed(measure)} < ${fixed(this.#options.sparseFloor)}`);
      return this.#build(dense, weight, spec);
    }
    if (!this.#options.autotune) {
      const kind = measure >= this.#options.sparseThreshold ? sparse : dense;
      const cmp = kind === sparse ? ">=" : "<";
      record(kind, `${what} ${fixed(measure)} ${cmp} ${fixed(this.#options.sparseThreshold)}`);
      return this.#build(kind, weight, spec);
    }
    return this.#tune(weight, spec, { dense, sparse, measure, what, record });
  }

  #tune(
    weight: DenseWeight,
    spec: LinearSpec,
    c: {
      dense: KernelKind;
      sparse: KernelKind;
      measure: number;
      what: string;
      record: (kind: KernelKind, reason: string, extra?: object) => void;
    },
  ): LinearOp {
    const cache = this.#loadCache();
    const timings: Partial<Record<KernelKind, number>> = {};
    const built = new Map<KernelKind, LinearOp>();
    let allCached = true;
    try {
      for (const kind of [c.sparse, c.dense]) {
        const hit = cache[this.cacheKey(kind, weight.out, weight.in, c.measure)];
        if (typeof hit === "number" && hit > 0) {
          timings[kind] = hit;
        } else {
          allCached = false;
          built.set(kind, this.#build(kind, weight, spec));
        }
      }
      // The uncached candidates are timed in turns (A B A B ...), so that a burst of noise on
      // this shared machine slows every candidate's worst samples, not one candidate's best.
      for (const [kind, ms] of this.#timeInTurns([...built.entries()])) {
        timings[kind] = ms;
        cache[this.cacheKey(kind, weight.out, weight.in, c.measure)] = ms;
        this.#dirty = true;
        this.#log(`autotune [${weight.out}, ${weight.in}] ${kind}: ${ms.toFixed(3)} ms`);
      }
      const kind = timings[c.sparse]! < timings[c.dense]! ? c.sparse : c.dense;
      const other = kind === c.sparse ? c.dense : c.sparse;
      const cmp = `${c.what} ${fixed(c.measure)} >= ${fixed(this.#options.sparseFloor)}`;
      c.record(
        kind,
        `${cmp}; autotune ${timings[kind]!.toFixed(3)} ms vs ${other} ${
          timings[other]!.toFixed(3)
        } ms${allCached ? " (cached)" : ""}`,
        { timings, cached: allCached },
      );
      const op = built.get(kind) ?? this.#build(kind, weight, spec);
      built.delete(kind);
      return op;
    } finally {
      for (const op of built.values()) op[Symbol.dispose]();
    }
  }

  /**
   * The cache key of a timing: shape, kind, sparsity bucket (0.05; `dense` for the dense
   * kernels, whose time does not depend on the zeros, so every sparsity shares one timing),
   * ISA and the library's pinned digest (a new library's kernels are timed afresh), threads,
   * rows.
   */
  cacheKey(kind: KernelKind, out: number, inFeatures: number, sparsity: number): string {
    const bucket = kind.startsWith("dense-")
      ? "dense"
      : `s${(Math.round(sparsity * 20) / 20).toFixed(2)}`;
    const isa = kernels().isa;
    const library = (LIBRARY_SHA256[isa] ?? "unpinned").slice(0, 12);
    return `${out}x${inFeatures}|${kind}|${bucket}|${isa}@${library}|t${threads()}|m${this.#options.tuneRows}`;
  }

  /** Best ms per call of each op: one warm-up call each, then `iterations` turns of one call each. */
  #timeInTurns(ops: [KernelKind, LinearOp][]): [KernelKind, number][] {
    const m = this.#options.tuneRows;
    const runs = ops.map(([kind, op]) => {
      const x = new Float32Array(m * op.inFeatures);
      // A fixed, sign-varying input: the kernels' speed does not depend on the values.
      for (let i = 0; i < x.length; i++) x[i] = ((i * 7919) % 255) / 127.5 - 1;
      const out = new Float32Array(m * op.outFeatures);
      op.forward(x, m, { out });
      return { kind, run: () => op.forward(x, m, { out }), best: Infinity };
    });
    for (let i = 0; i < this.#options.iterations; i++) {
      for (const r of runs) {
        const t0 = performance.now();
        r.run();
        r.best = Math.min(r.best, performance.now() - t0);
      }
    }
    // performance.now() is coarse without --allow-hr; never record a zero.
    return runs.map((r) => [r.kind, Math.max(r.best, 1e-3)]);
  }

  #loadCache(): Record<string, number> {
    if (this.#cache !== null) return this.#cache;
    this.#cache = {};
    if (this.#cachePath === null) return this.#cache;
    try {
      const parsed = JSON.parse(Deno.readTextFileSync(this.#cachePath)) as CacheFile;
      if (parsed?.version === 1 && typeof parsed.entries === "object") {
        for (const [k, v] of Object.entries(parsed.entries)) {
          if (typeof v === "number" && v > 0) this.#cache[k] = v;
        }
      }
    } catch (error) {
      // A missing or unreadable cache only means timing again; a corrupt one is rewritten.
      if (!(error instanceof Deno.errors.NotFound) && !(error instanceof SyntaxError)) {
        this.#log(`autotune cache "${this.#cachePath}" ignored: ${(error as Error).message}`);
      }
    }
    return this.#cache;
  }

  /** Writes new timings to the cache file (write to a temp file, then rename). */
  async saveCache(): Promise<void> {
    if (!this.#dirty || this.#cachePath === null || this.#cache === null) return;
    const path = this.#cachePath;
    const slash = path.lastIndexOf("/");
    if (slash > 0) await Deno.mkdir(path.slice(0, slash), { recursive: true });
    // Merge with entries another process may have written meanwhile.
    const merged: Record<string, number> = {};
    try {
      const disk = JSON.parse(await Deno.readTextFile(path)) as CacheFile;
      if (disk?.version === 1) Object.assign(merged, disk.entries);
    } catch {
      // nothing to merge
    }
    Object.assign(merged, this.#cache);
    const file: CacheFile = { version: 1, entries: merged };
    const tmp = `${path}.${Deno.pid}.tmp`;
    await Deno.writeTextFile(tmp, JSON.stringify(file, null, 1) + "\n");
    await Deno.rename(tmp, path);
    this.#dirty = false;
  }
}

/** Counts of the chosen kernels, e.g. `{ "sparse-i8": 60, "dense-i8": 12 }`. */
export function summarizeDecisions(decisions: readonly KernelDecision[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const d of decisions) counts[d.kind] = (counts[d.kind] ?? 0) + 1;
  return counts;
}

/**
 * Queries over an ONNX graph for the importer (`onnx_import.ts`): who produces and who consumes
 * a value, constants behind a value (initializers, `Constant` nodes, through `Identity`),
 * weights and vectors, small constant folding of shape computations, and the importer's errors,
 * which name the node where the pattern stopped matching and what was expected.
 *
 * @module
 */
import { makeTensor, tensorSize, tensorToFloat32, tensorToNumbers } from "./onnx_tensors.ts";
import { DataType, type OnnxModel, type OnnxNode, type OnnxTensor } from "./onnx_types.ts";

/** A 1-D constant whose entries may be unknown (null): a partially folded shape. */
export type Partial1D = (number | null)[];

/** A node as errors name it: `"name" (OpType)`. */
export function describe(node: OnnxNode): string {
  return `"${node.name || "<unnamed>"}" (${node.opType})`;
}

/** An integer attribute of a node, or `fallback` when it has none. */
export function attrInt(node: OnnxNode, name: string, fallback: number): number {
  return node.attributes.find((a) => a.name === name)?.i ?? fallback;
}

/** The shortest decimal that rounds to the same fp32 value (e.g. 1e-12, not 9.99999996e-13). */
export function fp32Decimal(v: number): number {
  const f = Math.fround(v);
  for (let digits = 1; digits <= 9; digits++) {
    const d = Number(f.toPrecision(digits));
    if (Math.fround(d) === f) return d;
  }
  return f;
}

/** The input of a two-input node that is not `value`. */
export function otherInput(node: OnnxNode, value: string): string {
  return node.inputs[0] === value ? node.inputs[1] : node.inputs[0];
}

/** Whether an ONNX data type is a floating-point one. */
export function isFloat(dataType: number): boolean {
  return dataType === DataType.FLOAT || dataType === DataType.FLOAT16 ||
    dataType === DataType.BFLOAT16 || dataType === DataType.DOUBLE;
}

/** Whether two integer lists are equal. */
export function sameInts(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

function sliceRange(data: Partial1D, start: number, end: number, step: number): Partial1D {
  const n = data.length;
  const clamp = (v: number): number => Math.min(Math.max(v < 0 ? v + n : v, 0), n);
  const out: Partial1D = [];
  if (step > 0) { for (let i = clamp(start); i < clamp(end); i += step) out.push(data[i]); }
  return out;
}

function numberTensor(dataType: number, dims: number[], values: number[]): OnnxTensor {
  return makeTensor("", dataType, dims, values);
}

/** The graph of one ONNX model, indexed for the importer's pattern walk. */
export class GraphIndex {
  /** The model. */
  readonly model: OnnxModel;
  /** Its file, for errors. */
  readonly path: string;
  /** The node producing each value. */
  readonly producer: Map<string, OnnxNode> = new Map();
  /** The nodes consuming each value. */
  readonly consumers: Map<string, OnnxNode[]> = new Map();
  /** Initializers by name. */
  readonly inits: Map<string, OnnxTensor> = new Map();
  /** Graph inputs that are not initializers. */
  readonly graphInputs: Set<string> = new Set();
  /** Folded constants by value name. */
  readonly constCache: Map<string, Partial1D | null> = new Map();

  /** Indexes the graph of `model` (read from `path`). */
  constructor(model: OnnxModel, path: string) {
    this.model = model;
    this.path = path;
    const g = model.graph;
    for (const t of g.initializers) this.inits.set(t.name, t);
    for (const i of g.inputs) if (!this.inits.has(i.name)) this.graphInputs.add(i.name);
    for (const n of g.nodes) {
      for (const o of n.outputs) if (o) this.producer.set(o, n);
      for (const i of n.inputs) {
        if (!i) continue;
        const list = this.consumers.get(i);
        if (list) list.push(n);
        else this.consumers.set(i, [n]);
      }
    }
  }

  fail(node: OnnxNode | null, expected: string): never {
    const at = node ? `at node ${describe(node)}: ` : "";
    throw new Error(`Cannot import ONNX model "${this.path}" as a BERT encoder: ${at}${expected}`);
  }

  after(value: string): string {
    const p = this.producer.get(value);
    if (p) return `after node ${describe(p)}`;
    return this.graphInputs.has(value) ? `after graph input "${value}"` : `after "${value}"`;
  }

  failAfter(value: string, expected: string): never {
    const found = this.next(value).map(describe).join(", ") || "no consumer";
    const p = this.producer.get(value) ?? null;
    this.fail(p, `expected ${expected} consuming "${value}", found ${found}`);
  }

  /** Consumers of a value, ignoring Shape nodes (dynamic-shape bookkeeping). */
  next(value: string): OnnxNode[] {
    return (this.consumers.get(value) ?? []).filter((n) => n.opType !== "Shape");
  }

  attr(node: OnnxNode, name: string): OnnxNode["attributes"][number] | undefined {
    return node.attributes.find((a) => a.name === name);
  }

  attrInt(node: OnnxNode, name: string, fallback: number): number {
    return attrInt(node, name, fallback);
  }

  attrFloat(node: OnnxNode, name: string, fallback: number): number {
    const a = this.attr(node, name);
    return a ? a.f : fallback;
  }

  /** An initializer or Constant-node tensor behind a value (through Identity), or null. */
  constTensor(value: string): OnnxTensor | null {
    const init = this.inits.get(value);
    if (init) return init;
    const p = this.producer.get(value);
    if (!p) return null;
    if (p.opType === "Constant") {
      const t = this.attr(p, "value")?.t;
      if (t) return t;
      const f = this.attr(p, "value_float");
      if (f) return numberTensor(DataType.FLOAT, [], [f.f]);
      const fs = this.attr(p, "value_floats");
      if (fs) return numberTensor(DataType.FLOAT, [fs.floats.length], fs.floats);
      const i = this.attr(p, "value_int");
      if (i) return numberTensor(DataType.INT64, [], [i.i]);
      const is = this.attr(p, "value_ints");
      if (is) return numberTensor(DataType.INT64, [is.ints.length], is.ints);
      return null;
    }
    if (p.opType === "Identity") return this.constTensor(p.inputs[0]);
    return null;
  }

  /** A constant scalar (one-element tensor, possibly computed from shapes), or null. */
  scalar(value: string): number | null {
    const v = this.evalConst(value);
    if (v === null || v.length !== 1 || v[0] === null) return null;
    return v[0];
  }

  /**
   * Float32 weights of a constant tensor, or a Transpose of one (returned already transposed),
   * with the initializer's name when it is a graph initializer.
   */
  matrix(
    value: string,
  ): { data: Float32Array; dims: number[]; transposed: boolean; name: string | null } | null {
    const t = this.constTensor(value);
    if (t) {
      if (t.dims.length !== 2 || !isFloat(t.dataType)) return null;
      const name = this.inits.get(value) === t ? value : null;
      return { data: tensorToFloat32(t), dims: t.dims, transposed: false, name };
    }
    const p = this.producer.get(value);
    if (p?.opType === "Transpose") {
      const src = this.constTensor(p.inputs[0]);
      const perm = this.attr(p, "perm")?.ints ?? [1, 0];
      if (src && src.dims.length === 2 && isFloat(src.dataType) && sameInts(perm, [1, 0])) {
        const name = this.inits.get(p.inputs[0]) === src ? p.inputs[0] : null;
        return {
          data: tensorToFloat32(src),
          dims: [src.dims[1], src.dims[0]],
          transposed: true,
          name,
        };
      }
    }
    return null;
  }

  /** `[in, out]` of a MatMul weight (constant or transposed constant), without converting it. */
  weightDims(value: string): number[] | null {
    const t = this.constTensor(value);
    if (t) return t.dims.length === 2 ? t.dims : null;
    const p = this.producer.get(value);
    const src = p?.opType === "Transpose" ? this.constTensor(p.inputs[0]) : null;
    return src && src.dims.length === 2 ? [src.dims[1], src.dims[0]] : null;
  }

  isWeight(value: string): boolean {
    const t = this.constTensor(value);
    if (t) return t.dims.length === 2 && isFloat(t.dataType);
    const p = this.producer.get(value);
    if (p?.opType !== "Transpose") return false;
    const src = this.constTensor(p.inputs[0]);
    return src !== null && src.dims.length === 2 && isFloat(src.dataType);
  }

  vector(value: string, length: number, what: string, node: OnnxNode): Float32Array {
    const t = this.constTensor(value);
    if (!t || !isFloat(t.dataType)) {
      this.fail(node, `expected a constant ${what} of ${length} values as input "${value}"`);
    }
    if (tensorSize(t) !== length) {
      this.fail(
        node,
        `expected ${what} "${value}" to have ${length} values, found dims [${t.dims.join(", ")}]`,
      );
    }
    return tensorToFloat32(t);
  }

  /** Graph inputs that a value depends on (backwards walk, bounded). */
  inputsReaching(value: string, limit = 200): { inputs: Set<string>; ops: Set<string> } {
    const inputs = new Set<string>();
    const ops = new Set<string>();
    const seen = new Set<string>();
    const stack = [value];
    while (stack.length && seen.size < limit) {
      const v = stack.pop()!;
      if (seen.has(v)) continue;
      seen.add(v);
      if (this.graphInputs.has(v)) inputs.add(v);
      const p = this.producer.get(v);
      if (!p) continue;
      ops.add(p.opType);
      for (const i of p.inputs) if (i) stack.push(i);
    }
    return { inputs, ops };
  }

  // -------------------------------------------------------------------------------------------
  // Constant folding of small shape/scalar computations (partial: unknown entries are null)

  evalConst(value: string, depth = 0): Partial1D | null {
    if (this.constCache.has(value)) return this.constCache.get(value)!;
    const result = depth > 40 ? null : this.evalConstUncached(value, depth + 1);
    this.constCache.set(value, result);
    return result;
  }

  evalConstUncached(value: string, depth: number): Partial1D | null {
    const t = this.constTensor(value);
    if (t) return tensorSize(t) <= 4096 ? tensorToNumbers(t) : null;
    const p = this.producer.get(value);
    if (!p) return null;
    const input = (i: number): Partial1D | null =>
      p.inputs[i] ? this.evalConst(p.inputs[i], depth) : null;
    switch (p.opType) {
      case "Identity":
      case "Unsqueeze":
      case "Squeeze":
      case "Reshape":
      case "Flatten":
        return input(0);
      case "Cast": {
        const v = input(0);
        const to = this.attrInt(p, "to", DataType.FLOAT);
        if (v === null || isFloat(to)) return v;
        return v.map((x) => (x === null ? null : Math.trunc(x)));
      }
      case "Shape": {
        const shape = this.staticShape(p.inputs[0], depth);
        if (shape === null) return null;
        const start = this.attr(p, "start")?.i ?? 0;
        const end = this.attr(p, "end")?.i ?? shape.length;
        return sliceRange(shape, start, end, 1);
      }
      case "Concat": {
        const out: Partial1D = [];
        for (let i = 0; i < p.inputs.length; i++) {
          const v = input(i);
          if (v !== null) out.push(...v);
          else if (this.producer.get(p.inputs[i])?.opType === "Unsqueeze") out.push(null);
          else return null;
        }
        return out;
      }
      case "Gather": {
        const data = input(0);
        const idx = input(1);
        if (data === null || idx === null || this.attrInt(p, "axis", 0) !== 0) return null;
        return idx.map((i) => (i === null ? null : data[i < 0 ? i + data.length : i] ?? null));
      }
      case "Slice": {
        const data = input(0);
        const starts = input(1);
        const ends = input(2);
        const steps = p.inputs[4] ? input(4) : [1];
        if (!data || !starts || !ends || !steps) return null;
        if (starts[0] === null || ends[0] === null || steps[0] === null) return null;
        return sliceRange(data, starts[0], ends[0], steps[0]);
      }
      case "Sqrt":
      case "Reciprocal":
      case "Neg": {
        const v = input(0);
        if (v === null) return null;
        const f = p.opType === "Sqrt"
          ? Math.sqrt
          : p.opType === "Neg"
          ? (x: number) => -x
          : (x: number) => 1 / x;
        return v.map((x) => (x === null ? null : Math.fround(f(x))));
      }
      case "Add":
      case "Sub":
      case "Mul":
      case "Div":
      case "Pow": {
        const a = input(0);
        const b = input(1);
        if (a === null || b === null) return null;
        const n = Math.max(a.length, b.length);
        if ((a.length !== 1 && a.length !== n) || (b.length !== 1 && b.length !== n)) return null;
        const out: Partial1D = [];
        for (let i = 0; i < n; i++) {
          const x = a[a.length === 1 ? 0 : i];
          const y = b[b.length === 1 ? 0 : i];
          if (x === null || y === null) {
            out.push(null);
            continue;
          }
          const r = p.opType === "Add"
            ? x + y
            : p.opType === "Sub"
            ? x - y
            : p.opType === "Mul"
            ? x * y
            : p.opType === "Div"
            ? x / y
            : x ** y;
          out.push(Math.fround(r));
        }
        return out;
      }
      default:
        return null;
    }
  }

  /** Static shape of a value where the graph makes it knowable (Reshape/Transpose chains). */
  staticShape(value: string, depth: number): Partial1D | null {
    if (depth > 40) return null;
    const t = this.constTensor(value);
    if (t) return [...t.dims];
    const p = this.producer.get(value);
    if (!p) {
      const info = this.model.graph.inputs.find((i) => i.name === value);
      return info?.shape?.map((d) => (typeof d === "number" ? d : null)) ?? null;
    }
    switch (p.opType) {
      case "Reshape": {
        const target = this.evalConst(p.inputs[1], depth + 1);
        if (target === null) return null;
        const src = this.staticShape(p.inputs[0], depth + 1);
        return target.map((d, i) => (d === 0 ? src?.[i] ?? null : d === -1 ? null : d));
      }
      case "Transpose": {
        const src = this.staticShape(p.inputs[0], depth + 1);
        if (src === null) return null;
        const perm = this.attr(p, "perm")?.ints ?? src.map((_, i) => src.length - 1 - i);
        return perm.map((i) => src[i] ?? null);
      }
      case "Mul":
      case "Div":
      case "Add":
      case "Sub":
      case "Cast":
      case "Identity":
      case "Softmax":
        return this.staticShape(p.inputs[0], depth + 1);
      default:
        return null;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Building blocks
}

/**
 * The per-layer part of the ONNX pattern importer (`onnx_import.ts`): linears (MatMul + Add, or
 * Gemm), LayerNorms (decomposed or fused), one encoder layer's attention (Q/K/V told apart by
 * where they enter the attention products, head split, scale, mask) and feed-forward block with
 * its GELU, matched on an {@linkcode GraphIndex}. Every mismatch names the node and what was
 * expected.
 *
 * @module
 */
import type { OnnxNode } from "./onnx_types.ts";
import { tensorSize, tensorToFloat32 } from "./onnx_tensors.ts";
import {
  fp32Decimal,
  type GraphIndex,
  isFloat,
  otherInput,
  type Partial1D,
  sameInts,
} from "./onnx_graph.ts";
import {
  type BertConfig,
  type BertLayerWeights,
  type DenseWeight,
  type NormWeight,
  transpose2d,
} from "../encoder/weights.ts";

/** Names of the six linears of an encoder layer. */
export type LayerLinearName =
  | "query"
  | "key"
  | "value"
  | "attentionOutput"
  | "intermediate"
  | "output";

/** The linears of an encoder layer, in graph order. */
export const LAYER_LINEARS: readonly LayerLinearName[] = Object.freeze([
  "query",
  "key",
  "value",
  "attentionOutput",
  "intermediate",
  "output",
]);

/** Where a linear's input and output live in the (fp32) graph. */
export interface LinearValues {
  /** The MatMul/Gemm data input. */
  input: string;
  /** The linear's output after the bias add. */
  output: string;
}

/** Graph values found on the walk: the embedding output and each layer's linears and output. */
export interface WalkTrace {
  /** The embedding LayerNorm output (input of layer 0). */
  embeddingOutput: string;
  /** Per encoder layer: its linears' values and its output. */
  layers: { linears: Record<LayerLinearName, LinearValues>; output: string }[];
}

/** A linear layer found in the graph. */
export interface LinearMatch {
  /** Its weight, torch layout. */
  dense: DenseWeight;
  /** The value after the bias add (or the MatMul output when there is no bias). */
  out: string;
  /** The MatMul or Gemm node. */
  node: OnnxNode;
}

/** A LayerNorm found in the graph. */
export interface NormMatch {
  /** Its weights. */
  norm: NormWeight;
  /** Its output value. */
  out: string;
  /** The last node of the LayerNorm. */
  node: OnnxNode;
}

/** How a projection is split into attention heads (reshape, transpose, scale). */
export interface HeadPath {
  end: OnnxNode;
  index: number;
  shape: Partial1D | null;
  order: number[];
  scale: number;
  reshape: OnnxNode | null;
}

/** Matches linears, LayerNorms and whole encoder layers; keeps what the walk learns. */
export class LayerMatcher {
  /** The graph. */
  readonly g: GraphIndex;
  /** Hidden size, once the embeddings are matched. */
  hidden = 0;
  /** The attention mask's fill value, once a layer's mask is matched. */
  maskValue: number | undefined;
  /** Graph values found on the walk. */
  readonly trace: WalkTrace = { embeddingOutput: "", layers: [] };

  /** Matches on `g`. */
  constructor(g: GraphIndex) {
    this.g = g;
  }

  /** MatMul(x, W[in,out]) [+ Add(bias)] or Gemm(x, W, b) as a torch-layout dense layer. */
  linear(node: OnnxNode, x: string): LinearMatch {
    if (node.opType === "Gemm") return this.gemm(node, x);
    if (node.opType !== "MatMul" || node.inputs[0] !== x) {
      this.g.fail(node, `expected MatMul of "${x}" with a constant weight`);
    }
    const m = this.g.matrix(node.inputs[1]);
    if (m === null) {
      this.g.fail(node, `expected a constant 2-D float weight as input "${node.inputs[1]}"`);
    }
    const [inn, out] = m.dims;
    const weight = m.transposed ? m.data : transpose2d(m.data, inn, out);
    const dense: DenseWeight = { out, in: inn, weight, bias: new Float32Array(out) };
    if (m.name !== null) dense.initializer = { name: m.name, transposed: m.transposed };
    const mmOut = node.outputs[0];
    const next = this.g.next(mmOut);
    if (next.length === 1 && next[0].opType === "Add") {
      const add = next[0];
      const other = add.inputs[0] === mmOut ? add.inputs[1] : add.inputs[0];
      const bias = this.g.constTensor(other);
      if (bias && tensorSize(bias) === out && isFloat(bias.dataType)) {
        dense.bias = tensorToFloat32(bias);
        return { dense, out: add.outputs[0], node };
      }
    }
    return { dense, out: mmOut, node };
  }

  gemm(node: OnnxNode, x: string): LinearMatch {
    if (node.inputs[0] !== x || this.g.attrInt(node, "transA", 0) !== 0) {
      this.g.fail(node, `expected Gemm with "${x}" as its untransposed input A`);
    }
    if (this.g.attrFloat(node, "alpha", 1) !== 1 || this.g.attrFloat(node, "beta", 1) !== 1) {
      this.g.fail(node, "expected Gemm with alpha = beta = 1");
    }
    const t = this.g.constTensor(node.inputs[1]);
    if (!t || t.dims.length !== 2 || !isFloat(t.dataType)) {
      this.g.fail(node, `expected a constant 2-D float weight as input B "${node.inputs[1]}"`);
    }
    const transB = this.g.attrInt(node, "transB", 0) === 1;
    const data = tensorToFloat32(t);
    const [out, inn] = transB ? t.dims : [t.dims[1], t.dims[0]];
    const weight = transB ? data : transpose2d(data, inn, out);
    const bias = node.inputs[2]
      ? this.g.vector(node.inputs[2], out, "Gemm bias", node)
      : new Float32Array(out);
    const dense: DenseWeight = { out, in: inn, weight, bias };
    if (this.g.inits.get(node.inputs[1]) === t) {
      dense.initializer = { name: node.inputs[1], transposed: transB };
    }
    return { dense, out: node.outputs[0], node };
  }

  /** The unique constant-weight MatMul/Gemm consuming `x` as its data input. */
  linearConsumers(x: string): OnnxNode[] {
    return this.g.next(x).filter((n) =>
      (n.opType === "MatMul" || n.opType === "Gemm") && n.inputs[0] === x &&
      this.g.isWeight(n.inputs[1])
    );
  }

  reduceMeanLastAxis(node: OnnxNode): boolean {
    if (node.opType !== "ReduceMean") return false;
    const axes = this.g.attr(node, "axes")?.ints ??
      (node.inputs[1] ? this.g.evalConst(node.inputs[1]) : null);
    return axes !== null && axes.length === 1 && (axes[0] === -1 || axes[0] === 2);
  }

  /** LayerNorm over the last axis of `x`, fused or decomposed. */
  layerNorm(x: string, what: string): NormMatch {
    const consumers = this.g.next(x);
    const fused = consumers.find((n) =>
      (n.opType === "LayerNormalization" || n.opType === "SimplifiedLayerNormalization") &&
      n.inputs[0] === x
    );
    if (fused) {
      if (fused.opType === "SimplifiedLayerNormalization") {
        this.g.fail(
          fused,
          `expected a LayerNorm with mean subtraction for ${what} (RMSNorm found)`,
        );
      }
      const axis = this.g.attrInt(fused, "axis", -1);
      if (axis !== -1 && axis !== 2) this.g.fail(fused, `expected LayerNorm over the last axis`);
      const h = this.hidden;
      const gamma = this.g.vector(fused.inputs[1], h, "LayerNorm scale", fused);
      const beta = fused.inputs[2]
        ? this.g.vector(fused.inputs[2], h, "LayerNorm bias", fused)
        : new Float32Array(h);
      const eps = fp32Decimal(this.g.attrFloat(fused, "epsilon", 1e-5));
      return { norm: { gamma, beta, eps }, out: fused.outputs[0], node: fused };
    }
    const mean = consumers.find((n) => this.reduceMeanLastAxis(n) && n.inputs[0] === x);
    if (!mean) {
      this.g.failAfter(x, `a LayerNormalization or ReduceMean over the last axis (${what})`);
    }
    const sub = this.g.next(x).find((n) =>
      n.opType === "Sub" && n.inputs[0] === x && n.inputs[1] === mean.outputs[0]
    );
    if (!sub) this.g.failAfter(mean.outputs[0], `Sub(x, mean) of the ${what} LayerNorm`);
    const d = sub.outputs[0];
    const sq = this.g.next(d).find((n) =>
      (n.opType === "Pow" && n.inputs[0] === d && this.g.scalar(n.inputs[1]) === 2) ||
      (n.opType === "Mul" && n.inputs[0] === d && n.inputs[1] === d)
    );
    if (!sq) this.g.failAfter(d, `Pow(x - mean, 2) of the ${what} LayerNorm`);
    const variance = this.g.next(sq.outputs[0]).find((n) => this.reduceMeanLastAxis(n));
    if (!variance) {
      this.g.failAfter(sq.outputs[0], `ReduceMean (variance) of the ${what} LayerNorm`);
    }
    const addEps = this.g.next(variance.outputs[0]).find((n) => n.opType === "Add");
    if (!addEps) {
      this.g.failAfter(variance.outputs[0], `Add(variance, eps) of the ${what} LayerNorm`);
    }
    const eps = this.g.scalar(otherInput(addEps, variance.outputs[0]));
    if (eps === null || !(eps > 0)) {
      this.g.fail(addEps, `expected a positive constant epsilon for the ${what} LayerNorm`);
    }
    const sqrt = this.g.next(addEps.outputs[0]).find((n) => n.opType === "Sqrt");
    if (!sqrt) this.g.failAfter(addEps.outputs[0], `Sqrt of the ${what} LayerNorm`);
    let normalized: string;
    const div = this.g.next(sqrt.outputs[0]).find((n) =>
      n.opType === "Div" && n.inputs[0] === d && n.inputs[1] === sqrt.outputs[0]
    );
    if (div) {
      normalized = div.outputs[0];
    } else {
      const recip = this.g.next(sqrt.outputs[0]).find((n) => n.opType === "Reciprocal");
      const mul = recip &&
        this.g.next(recip.outputs[0]).find((n) => n.opType === "Mul" && n.inputs.includes(d));
      if (!mul) this.g.failAfter(sqrt.outputs[0], `Div(x - mean, std) of the ${what} LayerNorm`);
      normalized = mul.outputs[0];
    }
    const h = this.hidden;
    const scale = this.g.next(normalized).find((n) => n.opType === "Mul");
    if (!scale) this.g.failAfter(normalized, `Mul by the ${what} LayerNorm weight`);
    const gamma = this.g.vector(otherInput(scale, normalized), h, "LayerNorm weight", scale);
    const shift = this.g.next(scale.outputs[0]).find((n) => n.opType === "Add");
    if (!shift) this.g.failAfter(scale.outputs[0], `Add of the ${what} LayerNorm bias`);
    const beta = this.g.vector(otherInput(shift, scale.outputs[0]), h, "LayerNorm bias", shift);
    return { norm: { gamma, beta, eps: fp32Decimal(eps) }, out: shift.outputs[0], node: shift };
  }

  layer(
    x: string,
    linears: OnnxNode[],
    index: number,
  ): {
    weights: BertLayerWeights;
    out: string;
    numHeads: number;
    act: BertConfig["hiddenAct"];
    first: OnnxNode;
  } {
    const h = this.hidden;
    if (linears.length !== 3) {
      const what = linears.length === 1 && this.g.weightDims(linears[0].inputs[1])?.[1] === 3 * h
        ? "a fused QKV projection is not supported"
        : `expected 3 Q/K/V projections in layer ${index}, found ${linears.length}`;
      this.g.fail(linears[0], what);
    }
    const proj = linears.map((n) => this.linear(n, x));
    for (const p of proj) {
      if (p.dense.out !== h || p.dense.in !== h) {
        this.g.fail(
          p.node,
          `expected a [${h}, ${h}] Q/K/V projection, found [${p.dense.in}, ${p.dense.out}]`,
        );
      }
    }
    const paths = proj.map((p) => this.headPath(p.out));
    // Q and K meet in the score MatMul; V enters the context MatMul as its second input.
    let qi = -1;
    let ki = -1;
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) {
        if (
          i !== j && paths[i].end === paths[j].end && paths[i].index === 0 && paths[j].index === 1
        ) {
          qi = i;
          ki = j;
        }
      }
    }
    if (qi < 0) {
      this.g.fail(paths[0].end, "expected the query and key projections to meet in one MatMul");
    }
    const vi = 3 - qi - ki;
    const q = paths[qi];
    const k = paths[ki];
    const v = paths[vi];
    const scoresMatMul = q.end;
    if (v.index !== 1) this.g.fail(v.end, "expected the value heads as the second MatMul input");
    if (!sameInts(q.order, [0, 2, 1, 3])) {
      this.g.fail(
        q.reshape ?? q.end,
        `expected query heads transposed to [batch, heads, seq, head]`,
      );
    }
    if (!sameInts(k.order, [0, 2, 3, 1])) {
      this.g.fail(k.reshape ?? k.end, `expected key heads transposed to [batch, heads, head, seq]`);
    }
    if (!sameInts(v.order, [0, 2, 1, 3])) {
      this.g.fail(
        v.reshape ?? v.end,
        `expected value heads transposed to [batch, heads, seq, head]`,
      );
    }
    const numHeads = this.heads(q);
    for (const p of [k, v]) {
      if (this.heads(p) !== numHeads) this.g.fail(p.reshape, `expected ${numHeads} heads`);
    }
    const headSize = h / numHeads;
    // Scores: scale, mask, softmax.
    let value = scoresMatMul.outputs[0];
    let scale = q.scale * k.scale;
    let softmax: OnnxNode | null = null;
    for (let step = 0; step < 8 && softmax === null; step++) {
      const next = this.g.next(value);
      if (next.length !== 1) this.g.failAfter(value, "a single scale, mask or Softmax");
      const n = next[0];
      if (n.opType === "Div" || n.opType === "Mul") {
        const s = n.inputs[0] === value ? this.g.scalar(n.inputs[1]) : null;
        const s2 = n.opType === "Mul" && n.inputs[1] === value ? this.g.scalar(n.inputs[0]) : s;
        if (s2 === null) this.g.fail(n, "expected the attention scores scaled by a constant");
        scale *= n.opType === "Div" ? 1 / s2 : s2;
      } else if (n.opType === "Add") {
        this.checkMask(n, otherInput(n, value));
      } else if (n.opType === "Where") {
        if (n.inputs[2] !== value) this.g.fail(n, "expected Where(mask, fill, scores)");
        this.checkMask(n, n.inputs[0], n.inputs[1]);
      } else if (n.opType === "Softmax") {
        const axis = this.g.attrInt(n, "axis", -1);
        if (axis !== -1 && axis !== 3) this.g.fail(n, "expected Softmax over the last axis");
        softmax = n;
      } else {
        this.g.fail(n, "expected the attention scores to be scaled, masked and passed to Softmax");
      }
      value = n.outputs[0];
    }
    if (softmax === null) this.g.failAfter(value, "Softmax of the attention scores");
    const expectedScale = 1 / Math.sqrt(headSize);
    if (Math.abs(scale - expectedScale) > 1e-4 * expectedScale) {
      this.g.fail(
        scoresMatMul,
        `expected the attention scores scaled by 1/sqrt(${headSize}) = ${expectedScale}, found ${scale}`,
      );
    }
    const probsNext = this.g.next(softmax.outputs[0]);
    if (
      probsNext.length !== 1 || probsNext[0] !== v.end || v.end.inputs[0] !== softmax.outputs[0]
    ) {
      this.g.failAfter(softmax.outputs[0], "the context MatMul(probs, value heads)");
    }
    // Context: transpose back, merge heads, output projection.
    value = v.end.outputs[0];
    let order = [0, 1, 2, 3];
    let attnOut: LinearMatch | null = null;
    for (let step = 0; step < 6 && attnOut === null; step++) {
      const lin = this.linearConsumers(value);
      if (lin.length === 1) {
        attnOut = this.linear(lin[0], value);
        break;
      }
      const next = this.g.next(value);
      if (next.length !== 1) this.g.failAfter(value, "the attention output projection");
      const n = next[0];
      if (n.opType === "Transpose") {
        const perm = this.g.attr(n, "perm")?.ints ?? [3, 2, 1, 0];
        order = perm.map((i) => order[i]);
      } else if (n.opType !== "Reshape") {
        this.g.fail(n, "expected Transpose/Reshape merging the heads before the output projection");
      }
      value = n.outputs[0];
    }
    if (attnOut === null) this.g.failAfter(value, "the attention output projection");
    if (!sameInts(order, [0, 2, 1, 3])) {
      this.g.fail(
        attnOut.node,
        "expected the context transposed back to [batch, seq, heads, head]",
      );
    }
    const res1 = this.residual(attnOut.out, x);
    const attnNorm = this.layerNorm(res1, `layer ${index} attention`);
    // Feed-forward.
    const interNodes = this.linearConsumers(attnNorm.out);
    if (interNodes.length !== 1) {
      this.g.failAfter(attnNorm.out, `the feed-forward MatMul of layer ${index}`);
    }
    const inter = this.linear(interNodes[0], attnNorm.out);
    const act = this.activation(inter);
    const output = this.linear(act.next, act.out);
    if (output.dense.out !== h || output.dense.in !== inter.dense.out) {
      this.g.fail(output.node, `expected a [${inter.dense.out}, ${h}] feed-forward output weight`);
    }
    const res2 = this.residual(output.out, attnNorm.out);
    const outNorm = this.layerNorm(res2, `layer ${index} output`);
    const values = (m: LinearMatch): LinearValues => ({ input: m.node.inputs[0], output: m.out });
    this.trace.layers.push({
      linears: {
        query: values(proj[qi]),
        key: values(proj[ki]),
        value: values(proj[vi]),
        attentionOutput: values(attnOut),
        intermediate: values(inter),
        output: values(output),
      },
      output: outNorm.out,
    });
    return {
      weights: {
        query: proj[qi].dense,
        key: proj[ki].dense,
        value: proj[vi].dense,
        attentionOutput: attnOut.dense,
        attentionNorm: attnNorm.norm,
        intermediate: inter.dense,
        output: output.dense,
        outputNorm: outNorm.norm,
      },
      out: outNorm.out,
      numHeads,
      act: act.kind,
      first: linears[0],
    };
  }

  /** Follows a Q/K/V projection output through Reshape/Transpose/scale to its MatMul. */
  headPath(start: string): HeadPath {
    let value = start;
    const path: HeadPath = {
      end: null as unknown as OnnxNode,
      index: -1,
      shape: null,
      order: [0, 1, 2, 3],
      scale: 1,
      reshape: null,
    };
    for (let step = 0; step < 8; step++) {
      const next = this.g.next(value);
      if (next.length !== 1) {
        this.g.failAfter(value, "a single Reshape splitting the heads");
      }
      const n = next[0];
      if (n.opType === "Reshape" && path.reshape === null) {
        path.reshape = n;
        path.shape = this.g.evalConst(n.inputs[1]);
      } else if (n.opType === "Transpose" && path.reshape !== null) {
        const perm = this.g.attr(n, "perm")?.ints ?? [3, 2, 1, 0];
        path.order = perm.map((i) => path.order[i]);
      } else if ((n.opType === "Mul" || n.opType === "Div") && path.reshape !== null) {
        const s = n.inputs[0] === value
          ? this.g.scalar(n.inputs[1])
          : n.opType === "Mul"
          ? this.g.scalar(n.inputs[0])
          : null;
        if (s === null) this.g.fail(n, "expected the heads scaled by a constant");
        path.scale *= n.opType === "Div" ? 1 / s : s;
      } else if (n.opType === "MatMul" && path.reshape !== null) {
        path.end = n;
        path.index = n.inputs.indexOf(value);
        return path;
      } else {
        this.g.fail(
          n,
          "expected Reshape/Transpose of the projected heads into an attention MatMul",
        );
      }
      value = n.outputs[0];
    }
    this.g.failAfter(value, "an attention MatMul");
  }

  heads(path: HeadPath): number {
    const shape = path.shape;
    const h = this.hidden;
    if (shape === null || shape.length !== 4) {
      this.g.fail(
        path.reshape,
        "expected a 4-D Reshape [batch, seq, heads, head size] with constant head dims",
      );
    }
    let heads = shape[2];
    let size = shape[3];
    if ((heads === null || heads === -1) && size !== null && size > 0) heads = h / size;
    if ((size === null || size === -1) && heads !== null && heads > 0) size = h / heads;
    if (heads === null || size === null || heads <= 0 || heads * size !== h) {
      this.g.fail(
        path.reshape,
        `expected Reshape dims [.., .., heads, head size] with heads x head size = ${h}, found [${
          shape.join(", ")
        }]`,
      );
    }
    return heads;
  }

  checkMask(node: OnnxNode, maskValue: string, fill?: string): void {
    const { inputs } = this.g.inputsReaching(maskValue);
    const maskInput = [...inputs].find((i) => i.includes("mask"));
    if (!maskInput) {
      this.g.fail(node, `expected the attention mask to come from the attention_mask input`);
    }
    if (fill !== undefined) {
      const f = this.g.scalar(fill);
      if (f === null) this.g.fail(node, "expected a constant fill value in the mask Where");
      this.maskValue = f;
      return;
    }
    // (1 - mask) * c: find the Mul by a constant on the mask path.
    let v = maskValue;
    for (let i = 0; i < 6 && this.maskValue === undefined; i++) {
      const p = this.g.producer.get(v);
      if (!p) break;
      if (p.opType === "Mul") {
        const c = this.g.scalar(p.inputs[1]) ?? this.g.scalar(p.inputs[0]);
        if (c !== null) this.maskValue = c;
      } else if (p.opType === "Where") {
        const c = this.g.scalar(p.inputs[1]) ?? this.g.scalar(p.inputs[2]);
        if (c !== null && c < 0) this.maskValue = c;
      }
      v = p.inputs[0];
    }
  }

  residual(a: string, b: string): string {
    const add = this.g.next(a).find((n) =>
      n.opType === "Add" &&
      ((n.inputs[0] === a && n.inputs[1] === b) || (n.inputs[0] === b && n.inputs[1] === a))
    );
    if (!add) this.g.failAfter(a, `the residual Add with "${b}"`);
    return add.outputs[0];
  }

  /** The activation between the feed-forward linears. */
  activation(
    inter: LinearMatch,
  ): { kind: BertConfig["hiddenAct"]; out: string; next: OnnxNode } {
    const start = inter.out;
    // Collect the region between the two feed-forward MatMuls.
    const region: OnnxNode[] = [];
    const seen = new Set<OnnxNode>();
    let terminal: OnnxNode | null = null;
    const queue = [start];
    while (queue.length) {
      const v = queue.shift()!;
      for (const n of this.g.next(v)) {
        if (seen.has(n)) continue;
        if ((n.opType === "MatMul" || n.opType === "Gemm") && this.g.isWeight(n.inputs[1])) {
          if (terminal && terminal !== n) {
            this.g.fail(n, "expected one feed-forward output MatMul after the activation");
          }
          terminal = n;
          continue;
        }
        seen.add(n);
        region.push(n);
        if (region.length > 16) {
          this.g.fail(n, "expected a GELU between the feed-forward MatMuls (too many nodes)");
        }
        queue.push(...n.outputs);
      }
    }
    if (terminal === null) {
      this.g.failAfter(start, "a GELU followed by the feed-forward output MatMul");
    }
    const actOut = terminal.inputs[0];
    const ops = region.map((n) => n.opType).sort();
    const consts = region.flatMap((n) =>
      n.inputs.map((i) => this.g.scalar(i)).filter((v): v is number => v !== null)
    );
    const near = (a: number, b: number): boolean => Math.abs(a - b) <= 1e-4 * Math.abs(b);
    const has = (c: number): boolean => consts.some((v) => near(v, c));
    const fail = (): never =>
      this.g.fail(
        region[0] ?? terminal,
        `expected a GELU (Erf or tanh form, or a Gelu/FastGelu node) between the feed-forward MatMuls, found ${
          ops.join(", ")
        }`,
      );
    if (region.length === 1) {
      const n = region[0];
      if (n.outputs[0] !== actOut) fail();
      let kind: BertConfig["hiddenAct"];
      if (n.opType === "Gelu") {
        const approx = this.g.attr(n, "approximate")?.s;
        kind = approx && new TextDecoder().decode(approx) === "tanh" ? "gelu_tanh" : "gelu";
      } else if (n.opType === "FastGelu") {
        kind = "gelu_tanh";
      } else if (n.opType === "BiasGelu") {
        kind = "gelu";
      } else {
        return fail();
      }
      if (n.inputs[1]) {
        const bias = this.g.vector(n.inputs[1], inter.dense.out, "GELU bias", n);
        for (let i = 0; i < bias.length; i++) inter.dense.bias[i] += bias[i];
      }
      return { kind, out: actOut, next: terminal };
    }
    const erf = ops.filter((o) => o === "Erf").length;
    const tanh = ops.filter((o) => o === "Tanh").length;
    if (erf === 1 && tanh === 0 && region.length <= 6) {
      if (!(has(Math.SQRT2) || has(Math.SQRT1_2)) || !has(1) || !has(0.5)) fail();
      return { kind: "gelu", out: actOut, next: terminal };
    }
    if (tanh === 1 && erf === 0 && region.length <= 10) {
      if (!has(0.044715) || !has(Math.sqrt(2 / Math.PI)) || !has(1)) fail();
      return { kind: "gelu_tanh", out: actOut, next: terminal };
    }
    return fail();
  }
}

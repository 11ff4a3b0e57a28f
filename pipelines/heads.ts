/**
 * The layers after the encoder: a sentence-transformers model's Dense modules
 * ({@linkcode SentenceHead}) and a task model's pooler and classifier ({@linkcode TaskHead}),
 * both built by the pipeline's linear factory like the encoder's layers.
 *
 * @module
 */
import type { LinearOp } from "../ops/linear.ts";
import {
  denseF32Linear,
  HEAD_LAYER,
  type LinearFactory,
  type LinearRole,
} from "../encoder/bert.ts";
import type { DenseLayer } from "../formats/sentence_config.ts";
import type { BertWeights, HeadWeights } from "../encoder/weights.ts";

/**
 * The sentence-transformers modules between pooling and Normalize: `Dense` layers
 * (y = activation(W x + b)), built by the pipeline's linear factory (role `"sentence-dense"`).
 * With none it passes vectors through.
 */
export class SentenceHead implements Disposable {
  /** Width of the vectors it returns. */
  readonly width: number;
  /** Whether it has no layers (vectors pass through). */
  readonly identity: boolean;
  #layers: { op: LinearOp; tanh: boolean }[] = [];

  /**
   * Builds the layers of `dense` for pooled vectors of `hidden` features with `linear`
   * (default dense fp32).
   */
  constructor(
    dense: readonly DenseLayer[],
    hidden: number,
    linear: LinearFactory = denseF32Linear,
  ) {
    try {
      for (const d of dense) {
        const weight = { ...d, bias: d.bias ?? new Float32Array(d.out) };
        const op = linear(weight, {
          layer: HEAD_LAYER,
          role: "sentence-dense",
          activation: "none",
        });
        this.#layers.push({ op, tanh: d.activation === "tanh" });
      }
    } catch (error) {
      this[Symbol.dispose]();
      throw error;
    }
    this.width = dense.at(-1)?.out ?? hidden;
    this.identity = dense.length === 0;
  }

  /** The head's output for `rows` pooled vectors (`x` itself when there are no layers). */
  apply(x: Float32Array, rows: number): Float32Array {
    let y = x;
    for (const layer of this.#layers) {
      y = layer.op.forward(y, rows);
      if (layer.tanh) { for (let i = 0; i < y.length; i++) y[i] = Math.tanh(y[i]); }
    }
    return y;
  }

  /** Frees the layers. */
  [Symbol.dispose](): void {
    for (const layer of this.#layers) layer.op[Symbol.dispose]();
  }
}

/**
 * The pooler / classifier weights of a task, run on the encoder output; built by the
 * pipeline's linear factory like the encoder's layers.
 */
export class TaskHead implements Disposable {
  /** What the head predicts. */
  readonly kind: HeadWeights["kind"];
  /** Label names, `LABEL_i` where the model names none. */
  readonly labels: string[];
  #pooler: LinearOp | null = null;
  #preClassifier: LinearOp | null = null;
  #dense: LinearOp | null = null;
  #hidden: number;

  /** Builds the head of `weights` with `linear`. */
  constructor(weights: BertWeights, linear: LinearFactory) {
    const head = weights.head!;
    this.kind = head.kind;
    this.#hidden = weights.config.hiddenSize;
    const out = head.dense.out;
    this.labels = Array.from({ length: out }, (_, i) => head.labels?.[i] ?? `LABEL_${i}`);
    const build = (role: LinearRole, weight: NonNullable<BertWeights["pooler"]>) =>
      linear(weight, { layer: HEAD_LAYER, role, activation: "none" });
    try {
      if (head.kind === "classification") {
        if (weights.pooler) this.#pooler = build("pooler", weights.pooler);
        if (weights.preClassifier) {
          this.#preClassifier = build("pre-classifier", weights.preClassifier);
        }
      }
      this.#dense = build("classifier", head.dense);
    } catch (error) {
      this[Symbol.dispose]();
      throw error;
    }
  }

  /** Logits of the head from the encoder output `[batch * seq * H]`. */
  logits(hidden: Float32Array, batch: number, seq: number): Float32Array {
    const h = this.#hidden;
    const dense = this.#dense!;
    if (this.kind !== "classification") return dense.forward(hidden, batch * seq);
    let pooled: Float32Array = new Float32Array(batch * h);
    for (let b = 0; b < batch; b++) {
      pooled.set(hidden.subarray(b * seq * h, b * seq * h + h), b * h);
    }
    if (this.#pooler) {
      pooled = this.#pooler.forward(pooled, batch);
      for (let i = 0; i < pooled.length; i++) pooled[i] = Math.tanh(pooled[i]);
    }
    if (this.#preClassifier) {
      pooled = this.#preClassifier.forward(pooled, batch);
      for (let i = 0; i < pooled.length; i++) pooled[i] = Math.max(0, pooled[i]);
    }
    return dense.forward(pooled, batch);
  }

  /** Frees the head's layers. */
  [Symbol.dispose](): void {
    this.#pooler?.[Symbol.dispose]();
    this.#preClassifier?.[Symbol.dispose]();
    this.#dense?.[Symbol.dispose]();
  }
}

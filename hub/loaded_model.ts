/**
 * What every model source loads to ({@linkcode LoadedModel}): the type shared by the loaders
 * (`load.ts`, `compiled.ts`) and the pipelines, in a module of its own so that none of them
 * imports another for it.
 *
 * @module
 */
import type { LinearFactory } from "../encoder/bert.ts";
import type { KernelDecision } from "../encoder/kernel_choice.ts";
import type { EmbeddingDefinition } from "../formats/sentence_config.ts";
import type { BertTokenizer } from "../pipelines/tokenizer.ts";
import type { BertWeights } from "../encoder/weights.ts";

/** A loaded model: weights and, when the source has a tokenizer.json, its tokenizer. */
export interface LoadedModel {
  /** The encoder (and head) weights. */
  weights: BertWeights;
  /** The tokenizer, or null when the source has no tokenizer.json. */
  tokenizer: BertTokenizer | null;
  /** What was loaded: the file or folder path. */
  path: string;
  /** The registry name, when loaded by name. */
  name: string | null;
  /**
   * The embedding the model defines (pooling, normalisation): its sentence-transformers files,
   * or the registry entry; null when the source declares none.
   */
  embedding?: EmbeddingDefinition | null;
  /**
   * Builds the encoder's linear layers: the packed layers of a compiled model, or the kernel
   * chooser when `kernels` options were given. Absent: dense fp32.
   */
  linear?: LinearFactory;
  /** How the encoder must fuse Q/K/V (set for compiled models). */
  fuseQkv?: boolean;
  /** The kernel chosen per linear layer and why (filled as the encoder is built). */
  kernelDecisions?: KernelDecision[];
  /** Writes new autotune timings to the cache (after the encoder is built). */
  saveKernelCache?: () => Promise<void>;
}

/**
 * sparsebert: sparse and int8-quantized BERT-family encoders on CPU, with Zig kernels loaded
 * through `Deno.dlopen`.
 *
 * ```ts
 * // From a release folder on any static host (`deno task release --out DIR`), or "./mod.ts".
 * // The kernel libraries are fetched beside it, checked against pinned SHA-256 and cached.
 * import { pipeline } from "https://example.com/sparsebert/mod.ts";
 * using embed = await pipeline("feature-extraction", "all-minilm-l6-v2");
 * const { data, dims } = await embed(["Deno runs BERT"], { pooling: "mean", normalize: true });
 * ```
 *
 * ```ts
 * import { LinearF32 } from "./mod.ts";
 * using linear = new LinearF32({ out: 2, in: 3, weight: new Float32Array(6) });
 * const y = linear.forward(new Float32Array(3), 1);
 * ```
 *
 * @module
 */
export {
  type CpuFeatureReport,
  cpuFeatureReport,
  cpuSupports,
  describeFeatures,
  ISA_VARIANTS,
  type IsaVariant,
  type KernelLibrary,
  KernelLibraryError,
  kernels,
  openKernelLibrary,
  type OpenOptions,
  setThreads,
  threads,
  VARIANT_NUMERICS,
} from "./ffi/library.ts";
export { NativeBuffer } from "./ffi/memory.ts";
export { type KernelSymbols, symbols } from "./ffi/symbols.ts";
export {
  type Activation,
  type ForwardOptions,
  KERNEL_KINDS,
  type KernelKind,
  type LinearOp,
  type LinearOptions,
  type LinearWeight,
} from "./ops/linear.ts";
export { type PackedSlice, type PackedSource, SharedRegion } from "./ops/packed.ts";
export { LinearF32 } from "./ops/linear_f32.ts";
export { bf16Hardware, LinearBf16 } from "./ops/linear_bf16.ts";
export { LinearI8, type LinearI8Options, type RequantizeOptions } from "./ops/linear_i8.ts";
export { SparseLinearI8 } from "./ops/sparse_linear_i8.ts";
export { SparseLinearF32 } from "./ops/sparse_linear_f32.ts";
export {
  int8ActivationQmax,
  packActivations,
  quantizeActivations,
  type QuantizedActivations,
  type QuantizedLinearWeight,
  type QuantizeOptions,
  quantizeWeights,
} from "./ops/quantize.ts";
export {
  pruneBlocks4x1,
  pruneUnstructured,
  randomBlockSparse,
  type RandomPatternOptions,
  type SparsityStats,
  sparsityStats,
} from "./ops/sparsity.ts";
export { layerNorm, type LayerNormOptions, type LayerNormWeight } from "./ops/layernorm.ts";
export {
  Attention,
  type AttentionInput,
  type AttentionOptions,
  type AttentionPrecision,
  FLOAT32_MIN,
} from "./ops/attention.ts";
export { type EmbeddingInput, Embeddings, type EmbeddingWeights } from "./ops/embeddings.ts";
export { l2NormalizeRows, pool, type PoolingMode, type PoolOptions } from "./ops/pooling.ts";
export {
  BERT_PRESETS,
  BertEncoder,
  type BertEncoderOptions,
  concatDense,
  denseF32Linear,
  type EncoderForwardOptions,
  type EncoderInput,
  type EncoderLinearInfo,
  type LinearFactory,
  type LinearRole,
  type LinearSpec,
  type TokenArray,
} from "./encoder/bert.ts";
export { FORWARD_PHASES, type ForwardPhase, ForwardProfile } from "./encoder/forward_profile.ts";
export { loadModel, type LoadModelOptions } from "./hub/load.ts";
export type { LoadedModel } from "./hub/loaded_model.ts";
export {
  type ClassificationInput,
  type ClassificationResult,
  type EncodedInput,
  type FeatureExtractionOptions,
  type FeatureExtractionPipeline,
  type FeaturePooling,
  type FeatureTensor,
  type LabelledPipeline,
  pipeline,
  type PipelineBase,
  type PipelineByTask,
  type PipelineOptions,
  type PipelineTask,
  type QuestionAnsweringOptions,
  type QuestionAnsweringPipeline,
  type QuestionWindows,
  type TextClassificationOptions,
  type TextClassificationPipeline,
  type TokenClassificationOptions,
  type TokenClassificationPipeline,
  type TokenClassificationResult,
} from "./pipelines/pipeline.ts";
export type { QuestionAnsweringResult } from "./pipelines/logits.ts";
export {
  type BertConfig,
  type BertLayerWeights,
  type BertWeights,
  type DenseWeight,
  type HeadWeights,
  type NormWeight,
  type OutputKind,
  parameterCount,
  type QuantizedOnnxForm,
  type QuantizedWeight,
  type WeightInitializer,
  type WeightSparsity,
} from "./encoder/weights.ts";
export {
  BertTokenizer,
  type BertTokenizerOptions,
  type EncodeBatchOptions,
  type EncodedBatch,
  type TextInput,
} from "./pipelines/tokenizer.ts";
export { importOnnx, type ImportOnnxOptions } from "./formats/onnx_import.ts";
export { loadHfFolder, type LoadHfFolderOptions } from "./formats/hf_folder.ts";

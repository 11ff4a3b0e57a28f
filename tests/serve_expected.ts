// Expected results for the server tests: the library's own pipeline, built the way the server
// builds it (serve/pipeline_backend.ts), called directly in the test process.
import type { FeatureExtractionPipeline } from "../pipelines/pipeline.ts";
import type { KernelChoice } from "../serve/config.ts";
import { buildPipeline } from "../serve/pipeline_backend.ts";

const cache = new Map<string, Promise<FeatureExtractionPipeline>>();

/** Options of {@linkcode libraryEmbeddings}. */
export interface ExpectedOptions {
  /** Longest sequence (the served model's maxLength). */
  maxLength: number;
  /** Cut long texts. */
  truncation?: boolean;
  /** Kernel choice (default `auto`, as served by default). */
  kernel?: KernelChoice;
}

/** Mean-pooled, normalized embeddings of `texts` from the feature-extraction pipeline. */
export async function libraryEmbeddings(
  model: string,
  texts: string[],
  options: ExpectedOptions,
): Promise<Float32Array[]> {
  const kernel = options.kernel ?? "auto";
  const key = `${model}|${options.maxLength}|${kernel}`;
  let pipe = cache.get(key);
  if (pipe === undefined) {
    pipe = buildPipeline("feature-extraction", model, {
      kernel,
      maxLength: options.maxLength,
      tokenizer: null,
    }) as Promise<FeatureExtractionPipeline>;
    cache.set(key, pipe);
  }
  const { data, dims } = await (await pipe)(texts, {
    pooling: "mean",
    normalize: true,
    truncation: options.truncation ?? false,
  });
  const h = dims[1];
  return texts.map((_, i) => data.slice(i * h, (i + 1) * h));
}

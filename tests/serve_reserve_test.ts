// A worker plans its largest batch at start (serve/pipeline_backend.ts reserveLargestBatch):
// afterwards no batch the server's limits allow grows the encoder's workspace, and reusing the
// pooled token-vector buffer leaves the embeddings unchanged.
import assert from "node:assert/strict";
import type { EncodedInput, FeatureExtractionPipeline } from "../pipelines/pipeline.ts";
import { buildPipeline, reserveLargestBatch } from "../serve/pipeline_backend.ts";

const opts = { sanitizeOps: false, sanitizeResources: false };

function batchOf(pipe: FeatureExtractionPipeline, batch: number, seq: number): EncodedInput {
  const inputIds = new Int32Array(batch * seq);
  const attentionMask = new Int32Array(batch * seq);
  for (let b = 0; b < batch; b++) {
    // Each row has its own length and ids, so a stale buffer would show in the results.
    const length = seq - (b % Math.max(1, seq - 1));
    for (let t = 0; t < length; t++) {
      inputIds[b * seq + t] = 1000 + ((b * 131 + t * 17) % 20_000);
      attentionMask[b * seq + t] = 1;
    }
    for (let t = length; t < seq; t++) inputIds[b * seq + t] = pipe.tokenizer.padTokenId;
  }
  return {
    shape: [batch, seq],
    inputIds,
    attentionMask,
    tokenTypeIds: new Int32Array(batch * seq),
  };
}

Deno.test({
  name: "serve reserve: after the largest batch is planned, no allowed batch grows the workspace",
  ...opts,
  fn: async () => {
    const pipe = await buildPipeline("feature-extraction", "all-minilm-l6-v2-q", {
      kernel: "auto",
      maxLength: 64,
      tokenizer: null,
    }) as FeatureExtractionPipeline;
    try {
      const embed = (batch: number, seq: number) =>
        pipe.embedEncoded(batchOf(pipe, batch, seq), { pooling: "mean", normalize: true });
      const before = embed(2, 10);
      // 300 tokens at maxLength 64: five rows of 64, so a batch of 8 x 37 (296 tokens) fits;
      // planning floor(300 / 64) = 4 rows of 64 would not hold it.
      const limits = { maxLength: 64, maxBatch: 8, maxBatchTokens: 300 };
      const reserved = reserveLargestBatch(pipe, limits);
      assert.deepEqual([reserved.batch, reserved.seq], [5, 64]);
      assert.equal(reserved.workspaceBytes, pipe.encoder.workspaceBytes);
      assert.ok(reserved.workspaceBytes > 0);
      for (const [batch, seq] of [[8, 37], [5, 60], [4, 64], [1, 64], [8, 16], [3, 1]]) {
        assert.ok(batch * seq <= limits.maxBatchTokens && batch <= limits.maxBatch);
        embed(batch, seq);
        assert.equal(
          pipe.encoder.workspaceBytes,
          reserved.workspaceBytes,
          `a ${batch} x ${seq} batch grew the workspace`,
        );
      }
      assert.deepEqual(embed(2, 10), before, "the reused token buffer changed the results");
    } finally {
      pipe.dispose();
    }
  },
});

Deno.test({
  name: "serve reserve: the batch is bounded by maxBatch and by the model's position table",
  ...opts,
  fn: async () => {
    const pipe = await buildPipeline("feature-extraction", "all-minilm-l6-v2-q", {
      kernel: "auto",
      maxLength: 32,
      tokenizer: null,
    }) as FeatureExtractionPipeline;
    try {
      const small = reserveLargestBatch(pipe, { maxLength: 32, maxBatch: 3, maxBatchTokens: 4096 });
      assert.deepEqual([small.batch, small.seq], [3, 32]);
      const table = pipe.encoder.config.maxPositionEmbeddings;
      const long = reserveLargestBatch(pipe, {
        maxLength: table + 100,
        maxBatch: 2,
        maxBatchTokens: 2 * (table + 100),
      });
      assert.deepEqual([long.batch, long.seq], [2, table]);
    } finally {
      pipe.dispose();
    }
  },
});

/// <reference lib="deno.worker" />
/**
 * Entry of an inference worker (a Deno Worker). It loads one model through the library's
 * pipelines and runs the batches the main thread sends, one at a time, so that the main
 * event loop (HTTP, health checks, batching) never waits on inference.
 *
 * Protocol: {@linkcode ToWorker} in, {@linkcode FromWorker} out (see `backend.ts`).
 *
 * @module
 */
import { type FromWorker, type InferenceBackend, runCall, type ToWorker } from "./backend.ts";
import { loadPipelineBackend } from "./pipeline_backend.ts";

let backend: InferenceBackend | null = null;

function send(message: FromWorker, transfer: Transferable[] = []): void {
  self.postMessage(message, transfer);
}

function transferables(value: unknown): Transferable[] {
  if (ArrayBuffer.isView(value) && value.buffer instanceof ArrayBuffer) return [value.buffer];
  return [];
}

self.onmessage = async (event: MessageEvent<ToWorker>) => {
  const message = event.data;
  if (message.type === "load") {
    try {
      backend = await loadPipelineBackend(message.source, { threads: message.threads });
      send({ type: "loaded", info: backend.info });
    } catch (err) {
      send({ type: "load-failed", message: (err as Error).message });
    }
    return;
  }
  if (backend === null) {
    send({ type: "failed", id: message.id, message: "The model is not loaded" });
    return;
  }
  try {
    const value = await runCall(backend, message.call);
    send({ type: "result", id: message.id, value }, transferables(value));
  } catch (err) {
    send({ type: "failed", id: message.id, message: (err as Error).message });
  }
};

"""Calls the sparsebert server's KServe v2 routes with the real tritonclient[http].

Used by tests/serve_clients_test.ts: reads {"url", "model", "texts", "ids", "mask"} as JSON on
stdin, prints one JSON object with what the client saw.
"""
import json
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def main() -> None:
    request = json.load(sys.stdin)
    model = request["model"]
    texts = request["texts"]
    client = httpclient.InferenceServerClient(url=request["url"], network_timeout=120.0)
    out = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model),
        "config": client.get_model_config(model),
    }

    # BYTES input and FP32 output, both in the binary tensor data extension (the defaults).
    text = httpclient.InferInput("text", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode("utf-8") for t in texts], dtype=np.object_))
    result = client.infer(
        model, [text], outputs=[httpclient.InferRequestedOutput("embedding")], request_id="bin-1"
    )
    out["binary"] = result.as_numpy("embedding").astype(np.float64).tolist()
    out["binary_id"] = result.get_response()["id"]

    # The same as JSON both ways, shape [N, 1].
    text_json = httpclient.InferInput("text", [len(texts), 1], "BYTES")
    text_json.set_data_from_numpy(np.array(texts, dtype=np.object_).reshape(-1, 1), binary_data=False)
    result = client.infer(
        model,
        [text_json],
        outputs=[httpclient.InferRequestedOutput("embedding", binary_data=False)],
        model_version="1",
    )
    out["json"] = result.as_numpy("embedding").astype(np.float64).tolist()

    # INT64 token ids with an attention mask (binary).
    ids = np.array(request["ids"], dtype=np.int64)
    mask = np.array(request["mask"], dtype=np.int64)
    input_ids = httpclient.InferInput("input_ids", list(ids.shape), "INT64")
    input_ids.set_data_from_numpy(ids)
    attention = httpclient.InferInput("attention_mask", list(mask.shape), "INT64")
    attention.set_data_from_numpy(mask)
    result = client.infer(model, [input_ids, attention])
    out["tokens"] = result.as_numpy("embedding").astype(np.float64).tolist()

    # Errors arrive as InferenceServerException with the server's message and status.
    errors = {}
    try:
        client.infer("no-such-model", [text])
    except InferenceServerException as e:
        errors["unknown_model"] = {"status": e.status(), "message": e.message()}
    bad = httpclient.InferInput("txt", [1], "BYTES")
    bad.set_data_from_numpy(np.array([b"a"], dtype=np.object_))
    try:
        client.infer(model, [bad])
    except InferenceServerException as e:
        errors["unknown_input"] = {"status": e.status(), "message": e.message()}
    out["errors"] = errors
    client.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()

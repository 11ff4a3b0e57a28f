"""Calls the sparsebert server's TEI routes with the real tei-client (PyPI).

Used by tests/serve_clients_test.ts: reads {"url", "mode", ...} as JSON on stdin and prints one
JSON object with what the client saw. Mode "embedding" exercises /info, /health, /embed,
/embed_all, /tokenize and /decode; "reranker" /info and /rerank; "classifier" /predict.
"""
import json
import sys

import httpx
from tei_client import HttpClient
from tei_client.models import TruncationDirection


def embedding(client: HttpClient, request: dict) -> dict:
    texts = request["texts"]
    long = request["long"]
    out = {
        "health": client.health(),
        "info": client.info().model_dump(mode="json", by_alias=True),
        "embed": client.embed(texts),
        "embed_raw": client.embed(texts, normalize=False),
        "embed_all": client.embed_all(texts[:1]),
        "tokenize": [r.model_dump(mode="json") for r in client.tokenize(texts[:2])],
        "decode": client.decode(request["ids"]),
        "prompt_names": client.prompt_names(),
        "left": client.embed(long, truncate=True, truncation_direction=TruncationDirection.Left),
        "right": client.embed(long, truncate=True, truncation_direction=TruncationDirection.Right),
    }
    # The client returns error bodies as they are: TEI's {error, error_type}.
    out["too_long"] = client.embed(long)
    raw = httpx.post(request["url"] + "/embed", json={"inputs": "a", "dimensions": 0})
    out["bad_dimensions"] = {"status": raw.status_code, "body": raw.json()}
    return out


def reranker(client: HttpClient, request: dict) -> dict:
    ranked = client.rerank(request["query"], request["texts"], return_text=True)
    raw = client.rerank(request["query"], request["texts"], raw_scores=True)
    return {
        "info": client.info().model_dump(mode="json", by_alias=True),
        "rerank": [r.model_dump(mode="json") for r in ranked.ranks],
        "rerank_raw": [r.model_dump(mode="json") for r in raw.ranks],
    }


def classifier(client: HttpClient, request: dict) -> dict:
    texts = request["texts"]
    return {
        "info": client.info().model_dump(mode="json", by_alias=True),
        "predict": [[s.model_dump(mode="json") for s in r.scores] for r in client.classify(texts)],
        "predict_pair": [
            [s.model_dump(mode="json") for s in r.scores]
            for r in client.classify((texts[0], texts[1]), raw_scores=True)
        ],
    }


MODES = {"embedding": embedding, "reranker": reranker, "classifier": classifier}


def main() -> None:
    request = json.load(sys.stdin)
    client = HttpClient(request["url"], timeout=120.0)
    out = MODES[request["mode"]](client, request)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()

"""Records sentence-transformers' own embeddings of data/retrieval_set.json, the reference that
tests/sentence_transformers_test.ts holds sparsebert to (max abs 1e-5).

    python tools/st_reference.py MODEL_FOLDER data/retrieval_set.json OUT.f32

Run it in a venv with sentence-transformers and torch from PyPI (several GB: PyPI has no
CPU-only torch wheel for Linux x86_64, so it is not part of `deno task test`); it writes
little-endian float32 [texts, dim] and prints the versions as JSON for the fixture's notes.
"""
import json
import sys

import numpy as np
import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer


def main() -> None:
    folder, texts_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
    items = json.load(open(texts_path, encoding="utf-8"))["items"]
    texts = [item["text"] for item in items]
    torch.set_num_threads(2)
    model = SentenceTransformer(folder, device="cpu")
    embeddings = model.encode(texts, batch_size=32, convert_to_numpy=True)
    embeddings.astype("<f4").tofile(out)
    json.dump({
        "texts": len(texts),
        "dim": int(embeddings.shape[1]),
        "sentence_transformers": sentence_transformers.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "modules": str(model).replace("\n", " "),
    }, sys.stdout)


if __name__ == "__main__":
    main()

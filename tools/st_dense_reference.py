"""Writes the Dense fixture of tests/fixtures/st_dense: all-MiniLM-L6-v2's Transformer and
Pooling, a seeded Dense(384 -> 256, Tanh) and Normalize, saved by sentence-transformers, with
its own embeddings of the first 24 texts of data/retrieval_set.json in reference.f32.

    python tools/st_dense_reference.py .cache/models/all-minilm-l6-v2-st OUT_FOLDER

Copy modules.json, 1_Pooling/, 2_Dense/, 3_Normalize/ and reference.f32 from OUT_FOLDER into
tests/fixtures/st_dense/. Needs sentence-transformers and torch (PyPI, several GB).
"""
import json
import sys

import torch
from sentence_transformers import SentenceTransformer, models


def main() -> None:
    source, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(7)
    torch.set_num_threads(2)
    base = SentenceTransformer(source, device="cpu")
    dense = models.Dense(in_features=384, out_features=256, bias=True,
                         activation_function=torch.nn.Tanh())
    model = SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()],
                                device="cpu")
    model.save(out)
    items = json.load(open("data/retrieval_set.json", encoding="utf-8"))["items"]
    texts = [item["text"] for item in items][:24]
    model.encode(texts, convert_to_numpy=True).astype("<f4").tofile(out + "/reference.f32")


if __name__ == "__main__":
    main()

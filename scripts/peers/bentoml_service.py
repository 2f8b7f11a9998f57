"""The embedding example as a BentoML service with adaptive batching on (a batchable API,
up to 64 sentences a batch), one worker.

    .venv-peers/bin/bentoml serve bentoml_service:Embeddings --port PORT   (in scripts/peers)

Clients send {"sentences": ["..."]} to /predict: a batchable API takes a list, and BentoML
joins the lists of concurrent requests into one call.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import bentoml

from examples.embedding_model import Embedder


@bentoml.service(workers=1, traffic={"timeout": 60})
class Embeddings:
    def __init__(self) -> None:
        self.model = Embedder()
        self.model.setup()

    @bentoml.api(batchable=True, max_batch_size=64, max_latency_ms=10_000)
    def predict(self, sentences: list[str]) -> list[dict[str, Any]]:
        return self.model.predict_batch(list(sentences))

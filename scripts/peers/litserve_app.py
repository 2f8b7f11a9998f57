"""The embedding example behind LitServe with its dynamic batching on (up to 64 requests
a batch, a 10 ms window), one inference worker on the CPU.

    .venv-peers/bin/python scripts/peers/litserve_app.py PORT
"""

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import litserve as ls

from examples.embedding_model import Embedder


class EmbeddingAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = Embedder()
        self.model.setup()

    # LitServe reads the request's type from this annotation: a dict is the JSON body.
    def decode_request(self, request: dict) -> str:  # type: ignore[type-arg]
        return str(request["input"])

    def predict(self, sentences: list[str]) -> list[dict[str, Any]]:
        # Batching on: one call for the batch's inputs, as the service's predict_batch.
        return self.model.predict_batch(list(sentences))

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return {"result": output}


if __name__ == "__main__":
    api = EmbeddingAPI(max_batch_size=64, batch_timeout=0.01)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(port=int(sys.argv[1]), generate_client_file=False, log_level="warning")

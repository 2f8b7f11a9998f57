"""The sentence-embedding example (examples/embedding_model.py) on ONNX Runtime instead of
PyTorch: the same all-MiniLM-L6-v2, the same input and output, the same vectors (to 1e-6).

    MODEL=examples.embedding_onnx:OnnxEmbedder scripts/run

On its first start it exports the model to ONNX with PyTorch (a few seconds, before the
replica reports ready) into EMBEDDING_ONNX (default: all-MiniLM-L6-v2.onnx under
$XDG_CACHE_HOME/model-service, ~/.cache when unset); later starts, and replicas that share
the file, only load it. Needs the `torch` and `onnx` extras (docs/models.md). Set
EMBEDDING_THREADS to the cores the replica may use (default: all it sees).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

from examples.embedding_model import Embedder, prepare

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_path() -> Path:
    given = os.environ.get("EMBEDDING_ONNX")
    if given:
        return Path(given)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "model-service" / "all-MiniLM-L6-v2.onnx"


def export(path: Path, weights: str) -> None:
    """Writes the model as an ONNX graph at ``path`` (atomically: replicas starting at once
    never load half a file)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    # The eager attention: one export of the default (SDPA) attention, traced on other
    # sentences, gave padded rows other vectors (by up to 0.06); this one matches PyTorch.
    model = AutoModel.from_pretrained(weights, attn_implementation="eager").eval()
    tokens = AutoTokenizer.from_pretrained(weights)(
        ["an example", "a longer example sentence"], padding=True, return_tensors="pt"
    )

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(fd)
    try:
        axes = {"batch": 0, "tokens": 1}
        with warnings.catch_warnings():
            # The TorchScript exporter warns that it is deprecated (the newer one needs the
            # onnxscript package) and that tracing fixes Python-level branches: neither
            # matters to this graph, which is checked against PyTorch's vectors in tests.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encoder(),
                tuple(tokens[name] for name in _INPUTS),
                temporary,
                input_names=list(_INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {at: axis for axis, at in axes.items()}
                    for name in (*_INPUTS, "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


class OnnxEmbedder(Embedder):
    version = "all-MiniLM-L6-v2 (ONNX Runtime)"

    def setup(self) -> None:
        weights, threads = prepare()  # before transformers is imported: it reads the settings
        import numpy as np
        import onnxruntime as ort
        from transformers import AutoTokenizer

        path = onnx_path()
        if not path.exists():
            export(path, weights)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._np = np
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._tokenizer = AutoTokenizer.from_pretrained(weights)
        self._encode(["warm up"])

    def _encode(self, sentences: list[str]) -> tuple[list[list[float]], list[int]]:
        """One run of the graph: mean of the token vectors (padding left out), unit length;
        and the tokens of each sentence."""
        np = self._np
        tokens = self._tokenizer(
            sentences, padding=True, truncation=True, max_length=256, return_tensors="np"
        )
        feed = {name: tokens[name].astype(np.int64) for name in _INPUTS}
        hidden = self._session.run(None, feed)[0]
        mask = feed["attention_mask"][..., None].astype(hidden.dtype)
        mean = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        unit = mean / np.clip(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12, None)
        return unit.tolist(), feed["attention_mask"].sum(axis=1).tolist()

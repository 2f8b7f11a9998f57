"""ONNX models (.onnx) run with onnxruntime; the input follows the input tensor's shape."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from annotated_types import Len
from pydantic import Strict

from service.errors import ModelLoadError
from service.models.base import Model, file_digest
from service.models.tabular import FORM_TAGS, MAX_ROWS, flatten, one_or_many, regroup

try:
    import numpy as np
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ModelLoadError(
        f"ONNX models need the 'onnx' extra: pip install '.[onnx]' ({exc})"
    ) from exc

_ELEMENTS: dict[str, tuple[Any, Any]] = {
    "tensor(float)": (Annotated[float, Strict()], np.float32),
    "tensor(double)": (Annotated[float, Strict()], np.float64),
    "tensor(int64)": (Annotated[int, Strict()], np.int64),
    "tensor(int32)": (Annotated[int, Strict()], np.int32),
    "tensor(bool)": (Annotated[bool, Strict()], np.bool_),
    "tensor(string)": (Annotated[str, Strict()], np.str_),
}


def _nested(element: Any, dims: Sequence[Any]) -> Any:
    """List type nesting ``element`` in ``dims`` (an int fixes a length; else any length >= 1)."""
    out = element
    for dim in reversed(dims):
        bounds = Len(dim, dim) if isinstance(dim, int) and dim > 0 else Len(1, None)
        out = Annotated[list[out], bounds]  # type: ignore[valid-type]
    return out


class OnnxModel(Model):
    """One input tensor whose first dimension is the batch: the input is one item (the
    tensor without that dimension) or a list of items; each output is split back per item.
    """

    kind = "onnx"
    form_tags = FORM_TAGS

    def __init__(self, name: str, spec: str) -> None:
        path = Path(spec)
        try:
            options = ort.SessionOptions()
            # The service runs several model calls at once: keep each one to one core.
            options.intra_op_num_threads = 1
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ModelLoadError(f"{path} has {len(inputs)} inputs; one input tensor is supported")
        tensor = inputs[0]
        if tensor.type not in _ELEMENTS:
            raise ModelLoadError(f"{path}: input element type {tensor.type} is not supported")
        element, self._dtype = _ELEMENTS[tensor.type]
        shape = list(tensor.shape)
        if not shape or isinstance(shape[0], int):
            raise ModelLoadError(f"{path}: the input's first dimension must be a dynamic batch")
        self.input_name = tensor.name
        self.input_shape = shape
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._item_depth = len(shape) - 1
        input_type = one_or_many(_nested(element, shape[1:]), self._item_depth)
        meta = self.session.get_modelmeta()
        version = (
            f"{meta.graph_name or 'graph'}; producer {meta.producer_name} {meta.version}; "
            f"onnxruntime {ort.__version__}; sha256:{file_digest(path)}"
        )
        super().__init__(name, spec, input_type, version)

    def predict(self, value: Any) -> Any:
        return self.predict_batch([value])[0]

    def predict_batch(self, values: list[Any]) -> Sequence[Any]:
        items, spans = flatten(values, self._item_depth)
        feed = {self.input_name: np.asarray(items, dtype=self._dtype)}
        outputs = self.session.run(None, feed)
        per_item = [
            {name: _plain(out[i]) for name, out in zip(self.output_names, outputs, strict=True)}
            for i in range(len(items))
        ]
        return regroup(per_item, spans)

    def output_schema(self) -> dict[str, Any]:
        one = {
            "type": "object",
            "properties": {o.name: {"description": o.type} for o in self.session.get_outputs()},
        }
        return {"anyOf": [one, {"type": "array", "items": one, "maxItems": MAX_ROWS}]}


def _plain(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value

"""One loading path for every kind: the spec says which (a file suffix, or 'module:attr')."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from service.errors import ModelLoadError
from service.models.base import Model

log = logging.getLogger(__name__)

_KINDS_BY_SUFFIX = {
    ".joblib": ("sklearn", "SklearnModel"),
    ".pkl": ("sklearn", "SklearnModel"),
    ".pickle": ("sklearn", "SklearnModel"),
    ".onnx": ("onnx", "OnnxModel"),
}
FILE_SUFFIXES = tuple(_KINDS_BY_SUFFIX)


def _kind_class(spec: str) -> Any:
    for suffix, (module, cls) in _KINDS_BY_SUFFIX.items():
        if spec.lower().endswith(suffix):
            # Imported only when asked for, so the core install needs no heavy libraries.
            return getattr(importlib.import_module(f"{__package__}.{module}"), cls)
    return importlib.import_module(f"{__package__}.python").PythonModel


def load_model(
    name: str,
    spec: str,
    execution: str = "thread",
    *,
    setup: bool = True,
    inline: bool | None = None,
    batching: dict[str, Any] | None = None,
) -> Model:
    """Loads one model; any failure is a ModelLoadError naming the model and the cause.
    ``inline`` and ``batching`` (from a models file) override what the model declares."""
    try:
        model: Model = _kind_class(spec)(name, spec)
        model.execution = execution
        if inline is not None:
            model.inline = inline
        for knob, value in (batching or {}).items():
            setattr(model, knob, value)
        if setup:
            model.setup()
    except ModelLoadError as exc:
        raise ModelLoadError(f"model {name!r} ({spec}): {exc}") from exc
    except Exception as exc:
        raise ModelLoadError(f"model {name!r} ({spec}): {type(exc).__name__}: {exc}") from exc
    log.info(
        "loaded model %s: %s from %s (%s; runs in %s)",
        name,
        model.kind,
        spec,
        model.version,
        execution,
    )
    return model

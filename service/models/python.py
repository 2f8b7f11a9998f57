"""Python models named by an import spec 'module:attr': a function, a class or an instance."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import TypeAdapter

from ..errors import ModelLoadError
from .base import Model


def import_spec(spec: str) -> Any:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ModelLoadError(f"{spec!r} is not of the form 'module:attr'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ModelLoadError(f"module {module_name!r} has no {attr_path!r}") from None
    return target


class PythonModel(Model):
    """Calls ``obj.predict(input)`` (or ``obj(input)``), and ``obj.predict_batch`` if it has one.

    Optional attributes of ``obj``: ``input_type`` (a type or pydantic model the input must
    fit), ``output_type``, ``version``, ``setup()`` and ``teardown()``.
    """

    kind = "python"

    def __init__(self, name: str, spec: str) -> None:
        obj = import_spec(spec)
        if inspect.isclass(obj):
            try:
                obj = obj()
            except Exception as exc:
                raise ModelLoadError(f"constructor failed: {type(exc).__name__}: {exc}") from exc
        predict = getattr(obj, "predict", None)
        if callable(predict):
            self._predict: Callable[[Any], Any] = predict
        elif callable(obj):
            self._predict = obj
        else:
            raise ModelLoadError("it is neither callable nor has predict(input)")
        batch = getattr(obj, "predict_batch", None)
        self._predict_batch: Callable[[list[Any]], Sequence[Any]] | None = (
            batch if callable(batch) else None
        )
        self.obj = obj
        self._output_type = getattr(obj, "output_type", None)
        super().__init__(
            name, spec, getattr(obj, "input_type", Any), str(getattr(obj, "version", "0"))
        )

    def predict(self, value: Any) -> Any:
        return self._predict(value)

    def predict_batch(self, values: list[Any]) -> Sequence[Any] | None:
        return None if self._predict_batch is None else self._predict_batch(values)

    def output_schema(self) -> dict[str, Any]:
        if self._output_type is None:
            return {}
        return TypeAdapter(self._output_type).json_schema()

    def setup(self) -> None:
        hook = getattr(self.obj, "setup", None)
        if callable(hook):
            hook()

    def teardown(self) -> None:
        hook = getattr(self.obj, "teardown", None)
        if callable(hook):
            hook()

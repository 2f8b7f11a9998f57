"""Python models named by an import spec 'module:attr' or 'path/to/file.py:attr': a
function, a class or an instance."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from service.errors import ModelLoadError
from service.models.base import BATCHING, TASKS, Model, batching_value, chunks_of


def import_spec(spec: str) -> Any:
    module_name, sep, attr_path = spec.rpartition(":")
    if not sep or not module_name or not attr_path:
        raise ModelLoadError(f"{spec!r} is not of the form 'module:attr' or 'file.py:attr'")
    target: Any
    if module_name.endswith(".py"):
        target = _import_file(Path(module_name))
    else:
        try:
            target = importlib.import_module(module_name)
        except ImportError as exc:
            raise ModelLoadError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ModelLoadError(f"module {module_name!r} has no {attr_path!r}") from None
    return target


def _import_file(path: Path) -> Any:
    """The module in ``path`` (relative to the working directory), imported once under a
    name made from its absolute path; its folder is importable, as a script's would be."""
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"no such file: {path}")
    name = "model_file_" + "".join(c if c.isalnum() else "_" for c in str(path))
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # its own imports of files beside it
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"cannot import {path}: {type(exc).__name__}: {exc}") from exc
    return module


class PythonModel(Model):
    """Calls ``obj.predict(input)`` (or ``obj(input)``), and ``obj.predict_batch`` if it has one.

    Optional attributes of ``obj``: ``input_type`` (a type or pydantic model the input must
    fit), ``output_type``, ``version``, ``example`` (an input for the docs), ``inline``
    (True: its calls are cheap and bounded, see `Model.inline`), ``max_batch_size``,
    ``max_batch_delay_ms`` and ``concurrency`` (see `Model`), ``output_content_type``
    (the media type of the bytes it returns: they are stored as a file), ``task`` (see
    `Model.task`), ``setup()`` and ``teardown()``.
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
        self.inline = bool(getattr(obj, "inline", False))
        self.output_content_type = str(getattr(obj, "output_content_type", "") or "")
        self.task = str(getattr(obj, "task", "") or "")
        if self.task not in TASKS:
            raise ModelLoadError(f"task must be one of {', '.join(TASKS[1:])}, not {self.task!r}")
        self.streams = inspect.isgeneratorfunction(self._predict) or inspect.isasyncgenfunction(
            self._predict
        )
        for knob in BATCHING:
            setattr(self, knob, batching_value(knob, getattr(obj, knob, None)))
        declared_in, declared_out = _annotations(self._predict)
        self._output_type = getattr(obj, "output_type", declared_out)
        super().__init__(
            name,
            spec,
            getattr(obj, "input_type", declared_in),
            str(getattr(obj, "version", "0")),
        )
        fields = self.input_schema.get("properties", {})
        if self.task == "generation" and not {"prompt", "messages"} & set(fields):
            raise ModelLoadError(
                "a generation model's input is an object with a 'prompt' or 'messages' field"
            )

    def predict(self, value: Any) -> Any:
        if self.streams:  # asked for the whole output at once: every chunk, in a list
            return list(chunks_of(self._predict(value)))
        return self._predict(value)

    def open_stream(self, value: Any) -> Any:
        return self._predict(value)

    def declared_example(self) -> Any:
        return getattr(self.obj, "example", None)

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


def _annotations(predict: Callable[[Any], Any]) -> tuple[Any, Any]:
    """The input type a predict function declares by annotating its (first) parameter, and
    its output type by its return annotation (Any and None when it declares none)."""
    try:
        hints = typing.get_type_hints(predict, include_extras=True)
        parameters = list(inspect.signature(predict).parameters.values())
    except (TypeError, ValueError, NameError):
        return Any, None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    first = next((p for p in parameters if p.kind in positional), None)
    given = hints.get(first.name, Any) if first is not None else Any
    return given, hints.get("return")

"""Model loading from an import spec, the adapter every model is called through, input checks."""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from .errors import InvalidInput, ModelLoadError

log = logging.getLogger(__name__)

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True, slots=True)
class Outcome:
    """One item's result: ``payload`` is the output as JSON when ``ok``, else ``error`` says why."""

    ok: bool
    payload: bytes = b"null"
    error: str = ""


def _failure(exc: BaseException) -> Outcome:
    return Outcome(ok=False, error=f"Prediction failed: {type(exc).__name__}: {exc}")


def _import_spec(spec: str) -> Any:
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise ModelLoadError(f"model spec {spec!r} is not of the form 'module:attr'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelLoadError(f"model {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as exc:
            raise ModelLoadError(f"model {spec!r}: {module_name!r} has no {attr_path!r}") from exc
    return target


class LoadedModel:
    """A model ready to call: checks input, runs one item or a batch, serializes outputs."""

    def __init__(self, name: str, spec: str, obj: Any) -> None:
        self.name = name
        self.spec = spec
        self.obj = obj
        predict = getattr(obj, "predict", None)
        if callable(predict):
            self._predict: Callable[[Any], Any] = predict
        elif callable(obj):
            self._predict = obj
        else:
            raise ModelLoadError(f"model {spec!r} is neither callable nor has predict(input)")
        batch = getattr(obj, "predict_batch", None)
        self._predict_batch: Callable[[list[Any]], Sequence[Any]] | None = (
            batch if callable(batch) else None
        )
        self.input_type: Any = getattr(obj, "input_type", Any)
        self._adapter: TypeAdapter[Any] = TypeAdapter(self.input_type)
        self.version = str(getattr(obj, "version", "unversioned"))

    @property
    def input_schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    def validate(self, raw: Any) -> Any:
        """The input as the model's declared type; InvalidInput (422) if it does not fit."""
        try:
            return self._adapter.validate_python(raw)
        except ValidationError as exc:
            detail = [
                {"loc": ["input", *err["loc"]], "msg": err["msg"], "type": err["type"]}
                for err in exc.errors(include_url=False, include_context=False)
            ]
            raise InvalidInput("The input does not fit the model's schema.", detail) from None

    def run_one(self, value: Any) -> Outcome:
        """Blocking: predict one validated input. Runs in the executor, never on the loop."""
        try:
            return Outcome(
                ok=True, payload=orjson.dumps(self._predict(value), option=_DUMPS_OPTIONS)
            )
        except Exception as exc:
            log.warning("model %s failed on one item: %s", self.name, exc)
            return _failure(exc)

    def run_batch(self, values: list[Any]) -> list[Outcome]:
        """Blocking: predict many inputs, one call when the model batches.

        If the batch call raises (or answers the wrong count), each item is run alone so
        that only the bad item fails.
        """
        if self._predict_batch is not None and len(values) > 1:
            try:
                outputs = list(self._predict_batch(values))
                if len(outputs) != len(values):
                    raise ValueError(f"predict_batch gave {len(outputs)} outputs for {len(values)}")
                return [
                    Outcome(ok=True, payload=orjson.dumps(out, option=_DUMPS_OPTIONS))
                    for out in outputs
                ]
            except Exception as exc:
                log.warning(
                    "model %s batch of %d failed, retrying items: %s", self.name, len(values), exc
                )
        return [self.run_one(value) for value in values]


def load_model(spec: str, name: str = "default") -> LoadedModel:
    """Import ``module:attr``; a class is instantiated once, a function or instance used as is."""
    target = _import_spec(spec)
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as exc:
            raise ModelLoadError(f"model {spec!r}: constructor failed: {exc}") from exc
    model = LoadedModel(name, spec, target)
    log.info("loaded model %s from %s (version %s)", name, spec, model.version)
    return model

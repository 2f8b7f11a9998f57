"""What every loaded model offers the service: input checks, one item or a batch, JSON out."""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import mimetypes
import os
import secrets
import tempfile
from collections.abc import Generator, Sequence
from functools import cached_property
from pathlib import Path, PurePath
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from service.errors import InvalidInput, ModelLoadError
from service.job import Outcome

log = logging.getLogger(__name__)

_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def file_digest(path: Path) -> str:
    """Short content hash of a model file, part of its version string."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def failure(exc: BaseException) -> Outcome:
    return Outcome(ok=False, error=f"Prediction failed: {type(exc).__name__}: {exc}")


#: A file in a model's output is written into its JSON as a string: this mark, then "k"
#: (the model's own file, copied) or "t" (a temporary file made here from bytes, moved),
#: then its local path. The worker (`service.jobs.files`) stores each one and puts its URL
#: in its place. The token is shared with the model processes (they inherit the variable)
#: and unknown to callers, so no output string can pass for a file.
FILE_MARK = "@file:" + os.environ.setdefault("SERVICE_FILE_TOKEN", secrets.token_hex(8)) + ":"


def success(output: Any, content_type: str = "") -> Outcome:
    """The output as JSON; files in it (Paths, and bytes: of ``content_type``) as marks."""
    try:
        payload = orjson.dumps(output, option=_DUMPS_OPTIONS)
    except TypeError:
        payload = orjson.dumps(output, default=_files(content_type), option=_DUMPS_OPTIONS)
    return Outcome(ok=True, payload=payload)


def _files(content_type: str) -> Any:
    suffix = (mimetypes.guess_extension(content_type) or ".bin") if content_type else ".bin"

    def default(value: Any) -> Any:
        if isinstance(value, PurePath):
            return f"{FILE_MARK}k{Path(value).resolve()}"
        if isinstance(value, bytes | bytearray | memoryview):
            handle, name = tempfile.mkstemp(prefix="output-", suffix=suffix)
            with os.fdopen(handle, "wb") as out:
                out.write(value)
            return f"{FILE_MARK}t{name}"
        if isinstance(value, BaseModel):
            return value.model_dump()
        raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")

    return default


def file_fields(schema: dict[str, Any]) -> tuple[str, ...]:
    """The fields of an input schema that are files (annotated ``Path``: pydantic writes
    format "path"), optional ones too; ("",) when the whole input is one file."""

    def is_file(field: dict[str, Any]) -> bool:
        options = field.get("anyOf", [field])
        return any(o.get("format") == "path" and o.get("type") == "string" for o in options)

    if is_file(schema):
        return ("",)
    properties = schema.get("properties", {})
    return tuple(name for name, field in properties.items() if is_file(field))


#: The tasks a model may declare (`Model.task`); "" for none.
TASKS = ("", "embeddings", "generation")

#: The batching knobs a model (or its models-file entry) may set for itself.
BATCHING = ("max_batch_size", "max_batch_delay_ms", "concurrency")


def batching_value(knob: str, value: Any) -> Any:
    """``value`` checked for batching knob ``knob`` (None stays None); ModelLoadError if
    it is not a whole number of at least 1 (a delay: a number of at least 0)."""
    if value is None:
        return None
    if knob == "max_batch_delay_ms":
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ModelLoadError(f"{knob} must be a number of milliseconds >= 0, not {value!r}")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelLoadError(f"{knob} must be a whole number >= 1, not {value!r}")
    return value


class Model:
    """A model ready to call. Kinds subclass it and implement ``predict`` (and maybe
    ``predict_batch``); the service only ever calls ``validate``, ``run_one``, ``run_batch``.
    """

    kind = "python"
    #: "thread" (default) or "process": where the model's code runs.
    execution = "thread"
    #: The model declares its calls cheap and bounded in time (never one slow input): once
    #: its calls prove fast (INLINE_MAX_MS) they run on the event loop itself. Off unless
    #: declared: a call on the loop holds up every request of the replica while it runs.
    inline = False
    #: Its predict is a generator (or an async one): it yields its output piece by piece,
    #: and each call runs on its own (`service.execution.streams`), never in a batch.
    streams = False
    #: What the OpenAI-compatible routes (`service.http.openai`) may send it: "embeddings"
    #: (a text in, its vector out: /v1/embeddings), "generation" (a prompt, or messages,
    #: in, text out, whole or streamed: /v1/chat/completions, /v1/completions) or ""
    #: (neither: those routes refuse it).
    task = ""
    #: Batching for this model where it knows better than the replica's settings (None:
    #: the setting): most inputs per call (MAX_BATCH_SIZE), longest wait in ms for a batch
    #: to fill (MAX_BATCH_DELAY_MS), and calls at once (as many as EXECUTOR_THREADS). A
    #: model that uses every core in one call (PyTorch, say) wants concurrency 1: the next
    #: batch fills while one runs, so batches grow with the load instead of splitting it.
    max_batch_size: int | None = None
    max_batch_delay_ms: float | None = None
    concurrency: int | None = None
    #: Names pydantic puts first in an error's location for a tagged union of input forms
    #: (tabular kinds: one row or many); they are dropped from the errors users see.
    form_tags: frozenset[str] = frozenset()
    #: The media type of the bytes a model returns (they are stored as a file, the result
    #: holding its URL); "" when it returns none, or only Paths (typed by their suffix).
    output_content_type = ""

    def __init__(self, name: str, spec: str, input_type: Any, version: str) -> None:
        self.name = name
        self.spec = spec
        self.version = version
        self._adapter: TypeAdapter[Any] = TypeAdapter(input_type)

    # -- what a kind implements ------------------------------------------------------------
    def predict(self, value: Any) -> Any:
        raise NotImplementedError

    def predict_batch(self, values: list[Any]) -> Sequence[Any] | None:
        """Outputs for many inputs in one call, or None when the kind cannot batch."""
        return None

    def output_schema(self) -> dict[str, Any]:
        return {}

    def setup(self) -> None:
        """Called once after loading, in the process that will run the model."""

    def teardown(self) -> None:
        """Called once at shutdown."""

    # -- what the service calls ------------------------------------------------------------
    @property
    def input_schema(self) -> dict[str, Any]:
        return self._adapter.json_schema()

    @cached_property
    def file_fields(self) -> tuple[str, ...]:
        """The input fields that are files ("" for a whole input that is one); () if none."""
        return file_fields(self.input_schema)

    def validate(self, raw: Any) -> Any:
        """The input as the model's declared type; InvalidInput (422) if it does not fit."""
        try:
            return self._adapter.validate_python(raw)
        except ValidationError as exc:
            detail = []
            for err in exc.errors(include_url=False, include_context=False):
                loc = err["loc"]
                if loc and loc[0] in self.form_tags:
                    loc = loc[1:]
                detail.append({"loc": ["input", *loc], "msg": err["msg"], "type": err["type"]})
            raise InvalidInput(
                f"The input does not fit the schema of model {self.name!r}.", detail
            ) from None

    def _serialized(self, output: Any) -> Outcome:
        try:
            return success(output, self.output_content_type)
        except (TypeError, orjson.JSONEncodeError) as exc:
            log.warning("model %s: an output is not JSON: %s", self.name, exc)
            return failure(exc)

    def open_stream(self, value: Any) -> Any:
        """A streaming model's generator (or async generator) for one validated input."""
        raise NotImplementedError

    def run_one(self, value: Any) -> Outcome:
        """Blocking: predict one validated input. Runs in the executor, never on the loop."""
        try:
            return success(self.predict(value), self.output_content_type)
        except Exception as exc:
            log.warning("model %s failed on one item: %s", self.name, exc)
            return failure(exc)

    def run_batch(self, values: list[Any]) -> list[Outcome]:
        """Blocking: predict many inputs, one call when the model batches.

        If the batch call raises (or answers the wrong count), each item is run alone so
        that only the bad item fails.
        """
        if len(values) > 1:
            try:
                outputs = self.predict_batch(values)
                if outputs is not None:
                    outputs = list(outputs)
                    if len(outputs) != len(values):
                        raise ValueError(f"{len(outputs)} outputs for {len(values)} inputs")
                    # Each output on its own: one that cannot be written as JSON fails alone.
                    return [self._serialized(out) for out in outputs]
            except Exception as exc:
                log.warning(
                    "model %s: batch of %d failed, running items alone: %s",
                    self.name,
                    len(values),
                    exc,
                )
        return [self.run_one(value) for value in values]

    def example(self) -> Any:
        """An input this model accepts, for the docs' "Try it out" (None if none is found):
        the model's own ``example`` when it declares one, else one built from its schema."""
        declared = self.declared_example()
        candidates = [declared] if declared is not None else []
        schema = self.input_schema
        candidates.append(example_from_schema(schema, schema.get("$defs", {})))
        for candidate in candidates:
            try:
                self.validate(candidate)
            except InvalidInput:
                continue
            return candidate
        return None

    def declared_example(self) -> Any:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "spec": self.spec,
            "version": self.version,
            "execution": self.execution,
            "task": self.task or None,
            "input_schema": self.input_schema,
            "output_schema": self.output_schema(),
        }


def example_from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> Any:
    """A plain value that fits a JSON schema of the shapes pydantic writes (the first
    option of a union, the least length and the lower bound that the schema allows)."""
    if depth > 20:
        return None
    if "$ref" in schema:
        return example_from_schema(defs.get(schema["$ref"].rsplit("/", 1)[-1], {}), defs, depth + 1)
    for key in ("examples", "example", "default", "const", "enum"):
        if key in schema:
            value = schema[key]
            return value[0] if key in ("examples", "enum") and value else value
    for key in ("oneOf", "anyOf", "allOf"):
        if schema.get(key):
            return example_from_schema(schema[key][0], defs, depth + 1)
    kind = schema.get("type")
    if kind == "string":
        return "text" * max(1, -(-int(schema.get("minLength", 1)) // 4))
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
        value = max(0, low) if "maximum" not in schema else min(max(0, low), schema["maximum"])
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            value = schema["exclusiveMinimum"] + 1
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return False
    if kind == "array":
        item = example_from_schema(schema.get("items", {}), defs, depth + 1)
        return [item] * max(1, int(schema.get("minItems", 1)))
    if kind == "object":
        properties = schema.get("properties", {})
        return {
            name: example_from_schema(properties.get(name, {}), defs, depth + 1)
            for name in schema.get("required", [])
        }
    return "text"  # any input at all


def chunks_of(stream: Any) -> Generator[Any, None, None]:
    """The chunks of a generator, or of an async generator (run on a loop of its own, in
    the calling thread); closing this closes the model's generator (its finally runs)."""
    if not inspect.isasyncgen(stream):
        yield from stream
        return
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(stream.__anext__())
            except StopAsyncIteration:
                return
    finally:
        loop.run_until_complete(stream.aclose())
        loop.close()

"""What runs inside a model process (`service.execution.processes`): its models, loaded
once, the batch calls, and streaming calls, pulled one chunk at a time (so chunks cross
to the server as they are made, and the reader's pace holds the model)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from service.execution.streams import End, chunks_of, failure, serialized
from service.job import Outcome
from service.models import Model, ModelConfig, load_model

# Models of this process, loaded once by its initializer, and the number of the call it
# started last (shared with the server: a call whose process died before it started it
# never ran, and is run again on the new process).
_MODELS: dict[str, Model] = {}
_STARTED: Any = None
#: Streams open in this process, by call number: each generator, and its chunks so far.
_STREAMS: dict[int, tuple[Generator[Any, None, None], int]] = {}


def init(configs: list[ModelConfig], started: Any) -> None:
    global _STARTED
    _STARTED = started
    for config in configs:
        _MODELS[config.name] = load_model(config.name, config.spec, "process")


def run_batch(name: str, values: list[Any], number: int) -> list[Outcome]:
    _STARTED.value = number
    return _MODELS[name].run_batch(values)


def open_stream(name: str, value: Any, number: int) -> None:
    """Starts a streaming call (its generator makes nothing until asked)."""
    _STARTED.value = number
    _STREAMS[number] = (chunks_of(_MODELS[name].open_stream(value)), 0)


def next_chunk(number: int) -> bytes | End:
    """The next chunk of an open stream as JSON, or its End (then it is closed)."""
    iterator, made = _STREAMS[number]
    try:
        chunk = next(iterator)
    except StopIteration:
        return _closed(number, End())
    except Exception as exc:
        return _closed(number, failure(exc))
    data = serialized(chunk, made + 1)
    if isinstance(data, End):
        return _closed(number, data)
    _STREAMS[number] = (iterator, made + 1)
    return data


def close_stream(number: int) -> None:
    """Stops an open stream: its generator is closed (its finally runs)."""
    if number in _STREAMS:
        _closed(number, End())


def _closed(number: int, end: End) -> End:
    iterator, _ = _STREAMS.pop(number)
    iterator.close()
    return end


def noop() -> None:
    return None

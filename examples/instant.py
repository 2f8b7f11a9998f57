"""A model that does no work, for measuring the server's own overhead (scripts/bench)."""

from __future__ import annotations

from typing import Any


def echo(value: Any) -> Any:
    return value


def echo_batch(values: list[Any]) -> list[Any]:
    return values


class Instant:
    """Answers its input at once, alone or as a batch."""

    version = "1"
    # Its calls take microseconds whatever the input: let them run on the event loop.
    inline = True

    def predict(self, value: Any) -> Any:
        return value

    def predict_batch(self, values: list[Any]) -> list[Any]:
        return values

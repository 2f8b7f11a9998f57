"""Inputs of tabular models: a row of numbers, or a list of rows, and splitting outputs back."""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Len
from pydantic import Strict

#: Most rows one input may carry; larger inputs should be split by the client.
MAX_ROWS = 1000

Number = Annotated[float, Strict()]


def row_type(width: int) -> Any:
    """A row of ``width`` numbers, or a list of 1..MAX_ROWS such rows."""
    row = Annotated[list[Number], Len(width, width)]
    return row | Annotated[list[row], Len(1, MAX_ROWS)]


def is_single_row(value: list[Any]) -> bool:
    return not value or not isinstance(value[0], list)


def flatten(values: list[list[Any]]) -> tuple[list[list[float]], list[tuple[int, int, bool]]]:
    """All rows of all inputs, and for each input (start, end, was it a single row)."""
    rows: list[list[float]] = []
    spans: list[tuple[int, int, bool]] = []
    for value in values:
        single = is_single_row(value)
        start = len(rows)
        if single:
            rows.append(value)
        else:
            rows.extend(value)
        spans.append((start, len(rows), single))
    return rows, spans


def regroup(per_row: list[Any], spans: list[tuple[int, int, bool]]) -> list[Any]:
    """Per-row outputs put back per input: one output for a single row, else a list."""
    return [per_row[start] if single else per_row[start:end] for start, end, single in spans]

"""Inputs of tabular models: a row of numbers, or a list of rows, and splitting outputs back."""

from __future__ import annotations

from typing import Annotated, Any

from annotated_types import Len
from pydantic import Discriminator, Strict, Tag

#: Most rows one input may carry; larger inputs should be split by the client.
MAX_ROWS = 1000

Number = Annotated[float, Strict()]

#: The tags of `one_or_many`'s two forms (dropped from the locations of input errors).
FORM_TAGS = frozenset({"one", "many"})


def nesting(value: Any) -> int:
    """How deep the first elements of nested lists go: 0 for a scalar, 1 for a flat list."""
    depth = 0
    while isinstance(value, list) and value:
        value, depth = value[0], depth + 1
    return depth


def one_or_many(item: Any, item_depth: int) -> Any:
    """``item`` or a list of 1..MAX_ROWS items; which one is told by how deep the input
    nests, so a bad input gets the errors of the form it meant, not of both forms.
    """

    def form(value: Any) -> str:
        return "many" if nesting(value) > item_depth else "one"

    many = Annotated[list[item], Len(1, MAX_ROWS)]
    return Annotated[
        Annotated[item, Tag("one")] | Annotated[many, Tag("many")], Discriminator(form)
    ]


def row_type(width: int) -> Any:
    """A row of ``width`` numbers, or a list of 1..MAX_ROWS such rows."""
    return one_or_many(Annotated[list[Number], Len(width, width)], 1)


def flatten(
    values: list[Any], item_depth: int = 1
) -> tuple[list[Any], list[tuple[int, int, bool]]]:
    """All items of all inputs, and for each input (start, end, was it a single item)."""
    items: list[Any] = []
    spans: list[tuple[int, int, bool]] = []
    for value in values:
        single = nesting(value) <= item_depth
        start = len(items)
        if single:
            items.append(value)
        else:
            items.extend(value)
        spans.append((start, len(items), single))
    return items, spans


def regroup(per_row: list[Any], spans: list[tuple[int, int, bool]]) -> list[Any]:
    """Per-row outputs put back per input: one output for a single row, else a list."""
    return [per_row[start] if single else per_row[start:end] for start, end, single in spans]

"""docs/redis.md is the one description of what the service keeps in Redis: every key the
code can build, every word a script writes into a record or an entry, every script and
every status is there, or this fails."""

from __future__ import annotations

import inspect
import re

from service.job import Status
from service.redis.calls import NAMES
from service.redis.keys import Keys, Names, Partitions
from service.redis.lua import _FOLDER
from service.redis.words import TABLES

from .helpers import ROOT

DOC = (ROOT / "docs" / "redis.md").read_text()
#: What a method of Keys or Names is given, as the page writes it.
PLACEHOLDERS = {
    "prediction_id": "<id>",
    "key": "<key>",
    "consumer": "<consumer>",
    "replica": "<consumer>",
    "tenant": "<tenant>",
    "object_id": "<id>",
    "batch_id": "<id>",
    "bucket": "<bucket>",
}


def table(header: str) -> list[str]:
    """The rows of the table under ``header`` (a line of the page)."""
    lines = DOC[DOC.index(header) :].splitlines()[2:]
    end = next(i for i, line in enumerate(lines) if not line.startswith("|"))
    return lines[:end]


def named(rows: list[str]) -> set[str]:
    """The names in the first column of ``rows`` (between backticks)."""
    return {name for row in rows for name in re.findall(r"`([^`]+)`", row.split(" | ")[0])}


def built_keys() -> set[str]:
    """Every key name the code can build for the default names, one partition: each
    property of Keys and Names that names a key, each method given placeholders."""
    names = Names()
    partitions = Partitions.single(names)
    out = {partitions.registry}
    for owner, kind in (
        (partitions[0], Keys),
        (partitions[0].of_tenant("<tenant>"), Keys),
        (names, Names),
    ):
        for keys in (owner, *getattr(owner, "priorities", ())):
            for attr, member in inspect.getmembers(kind):
                if attr.startswith("_") or attr in ("priorities", "of_tenant", "prediction_id"):
                    continue
                if isinstance(member, property) or attr == "stream":
                    value = getattr(keys, attr)
                elif inspect.isfunction(member):
                    params = list(inspect.signature(member).parameters)[1:]
                    value = getattr(keys, attr)(*(PLACEHOLDERS[p] for p in params))
                else:
                    continue
                if (isinstance(value, str) and ":" in value) or value == keys.stream:
                    out.add(value)
    return out


def test_every_key_the_code_builds_is_on_the_page() -> None:
    documented = named(table("| key | type | holds | written by |"))
    missing = built_keys() - documented
    assert not missing, f"keys the code builds that docs/redis.md does not list: {missing}"


def test_every_script_is_on_the_page_with_its_typed_call() -> None:
    rows = table("| script | typed call")
    documented = named(rows)
    files = {p.name for p in _FOLDER.glob("*.lua")}
    assert files == {n for n in documented if n.endswith(".lua")}
    for name in NAMES:
        (row,) = [r for r in rows if r.startswith(f"| `{name}.lua`")]
        assert re.search(r"\| `\w+\.\w+` \|", row), f"{name}.lua's typed call is not named"


def test_every_word_a_script_writes_is_on_the_page() -> None:
    # The lower-case words in the scripts: record and entry fields, and the values they
    # write. Each is named somewhere on the page (between backticks).
    words = set()
    for path in _FOLDER.glob("*.lua"):
        code = "\n".join(
            line for line in path.read_text().splitlines() if not line.lstrip().startswith("--")
        )
        words |= set(re.findall(r"'([a-z][a-z_]*)'", code))
    on_page = set(re.findall(r"`([^`]+)`", DOC))
    on_page |= {w for n in on_page for w in re.findall(r"[a-z_]+", n)}
    # XINFO's reply fields are Redis' own words, not ours.
    missing = words - on_page - {"name"}
    assert not missing, f"words the scripts write that docs/redis.md does not name: {missing}"


def test_every_status_and_the_final_ones_are_on_the_page() -> None:
    (status,) = [r for r in table("| field | value |") if r.startswith("| `status` |")]
    assert set(re.findall(r"`(\w+)`", status.split(" | ")[1])) == {s.value for s in Status}
    final = re.search(r"A record that is final \(([^)]*)\)", DOC)
    assert final is not None
    assert set(re.findall(r"`(\w+)`", final.group(1))) == {s.value for s in Status if s.final}
    for name in TABLES:
        assert f"`{name}`" in DOC, f"the Lua table {name} is not named"

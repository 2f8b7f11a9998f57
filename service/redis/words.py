"""The words the Redis scripts and the Python side share: statuses (`service.job.Status`),
and the scripts' answers. The Lua side reads the same values from tables of the same
names, which `service.redis.lua` writes at the top of every script from these enums: a
word is spelled once, here."""

from __future__ import annotations

from enum import StrEnum

from service.job import Status


class Submitted(StrEnum):
    """submit.lua's answer for one job."""

    OK = "ok"
    #: An Idempotency-Key used before for the same body: its earlier id follows the word.
    DUP = "dup:"
    FULL = "full"
    CONFLICT = "conflict"


class Marked(StrEnum):
    """What mark.lua did to a job that cannot run (else it answers the job's status)."""

    EXPIRED = "expired"
    DEAD = "dead"
    ABORTED = "aborted"
    #: The record is gone (expired).
    GONE = ""


class Ending(StrEnum):
    """How finish.lua is told a job ended: the first letter of its outcome."""

    DONE = "R"
    FAILED = "E"
    CANCELED = "C"


class Replayed(StrEnum):
    """replay.lua's answer for one dead letter."""

    REPLAYED = "replayed"
    GONE = "gone"
    STALE = "stale"
    NO = "no"


class Appended(StrEnum):
    """append.lua's answer for one streaming job: go on, or stop (its record asks it to,
    or it is no longer running)."""

    GO = "go"
    STOP = "stop"


class Told(StrEnum):
    """What a message on a replica's own channel tells of the jobs it names (its first
    letter; the record keys follow, comma-separated): they ended, they started, or they
    have new chunks."""

    ENDED = "e"
    STARTED = "s"
    OUTPUT = "o"


#: The tables every script sees, by their Lua name.
TABLES: dict[str, type[StrEnum]] = {
    "STATUS": Status,
    "SUBMITTED": Submitted,
    "MARKED": Marked,
    "ENDING": Ending,
    "REPLAYED": Replayed,
    "APPENDED": Appended,
    "TOLD": Told,
}


def lua_tables() -> str:
    """The Lua lines that define `TABLES` (`local STATUS = {QUEUED = 'queued', ...}`)."""
    lines = []
    for name, words in TABLES.items():
        pairs = ", ".join(f"{w.name} = '{w.value}'" for w in words)
        lines.append(f"local {name} = {{{pairs}}}")
    return "\n".join(lines) + "\n"

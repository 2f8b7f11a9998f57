"""Each Redis script called directly on a real Redis, branch by branch (tables of cases),
with what it must never do: rewrite a final record, ack an entry it was not given, or
touch a key it was not given. Python mutation tools cannot reach these scripts."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.asyncio import Redis

from service.redis import lua
from service.redis.keys import Names

from .helpers import GROUP, KEYS, STREAM

DEAD, HOOKS, RETRY = KEYS.dead_letters, KEYS.webhooks, KEYS.webhook_retries
TO = KEYS.to_replica("")  # the prefix of every replica's channel
BACKLOG = KEYS.backlog
HIGH, LOW = KEYS.priorities[0].stream, KEYS.priorities[2].stream
DECOYS = {"decoy:string": "x", KEYS.record("decoy"): "y"}


def rec(i: int | str) -> str:
    return KEYS.record(str(i))


@pytest.fixture
async def r(rds: Redis) -> AsyncIterator[Redis]:
    for key, value in DECOYS.items():  # keys no script is given: they must stay as they are
        await rds.set(key, value)
    await rds.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
    yield rds


async def version(r: Redis) -> tuple[int, ...]:
    return tuple(int(p) for p in (await r.info("server"))["redis_version"].split(".")[:2])


async def snapshot(r: Redis) -> dict[bytes, Any]:
    """Every key with its serialized value."""
    return {key: await r.dump(key) async for key in r.scan_iter()}


async def call(r: Redis, name: str, keys: list[str], args: list[Any]) -> Any:
    """Runs script ``name``; fails if it changed or created any key not in ``keys``."""
    before = await snapshot(r)
    script = lua.register(r, name, await version(r))
    reply = await script(keys=keys, args=args)
    after = await snapshot(r)
    declared = {k.encode() for k in keys}
    for key in set(before) | set(after):
        if key not in declared:
            assert before.get(key) == after.get(key), f"{name} touched undeclared key {key!r}"
    return reply


async def record(r: Redis, i: int | str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in (await r.hgetall(rec(i))).items()}


async def add_job(r: Redis, i: int | str, status: str = "queued", **fields: Any) -> bytes:
    """A job as submit.lua leaves it (with the given status and fields), and its entry."""
    await r.hset(
        rec(i),
        mapping={
            "status": status,
            "model": "m",
            "input": '"x"',
            "created_at": 100,
            "attempts": 0,
            **fields,
        },
    )
    await r.hincrby(BACKLOG, "m", 1)
    return await r.xadd(STREAM, {"id": str(i), "model": "m", "input": '"x"', "rid": "", "at": 100})


def submit_args(
    jobs: list[tuple[str, str]],
    *,
    limit: int = 0,
    whole: bool = False,
    lane: bool = False,
    priority: str = "",
    tenant: str = "",
) -> list[Any]:
    """ARGV of submit.lua for jobs given as (id, extras)."""
    args: list[Any] = [60, limit, "1" if whole else "0", "100.5", priority, tenant]
    for job_id, extras in jobs:
        args += [job_id, "m", f'"{job_id}"', "rid", extras]
    if lane:
        args += [GROUP, "me-lane", TO, "PUBLISH"]
    return args


# -- submit ----------------------------------------------------------------------------------


async def test_submit_writes_a_queued_record_its_entry_and_idempotency_key(r: Redis) -> None:
    extras = json.dumps([6, "digest", "http://h/x", "done"])
    reply = await call(
        r,
        "submit",
        [STREAM, HIGH, LOW, rec("a"), rec("b"), KEYS.idempotency("k"), BACKLOG],
        submit_args([("a", ""), ("b", extras)]),
    )
    assert reply == 2
    assert await record(r, "a") == {
        "status": "queued",
        "model": "m",
        "input": '"a"',
        "created_at": "100.5",
        "attempts": "0",
        "request_id": "rid",
    }
    assert (await record(r, "b"))["webhook"] == "http://h/x"
    assert (await record(r, "b"))["webhook_events"] == "done"
    assert await r.hget(BACKLOG, "m") == b"2"
    assert 0 < await r.ttl(rec("a")) <= 60
    assert await r.get(KEYS.idempotency("k")) == b"b|digest"
    assert "cancel_at" not in await record(r, "a")
    entries = await r.xrange(STREAM)
    assert [e[1][b"id"] for e in entries] == [b"a", b"b"]
    assert entries[0][1] == {
        b"id": b"a",
        b"model": b"m",
        b"input": b'"a"',
        b"rid": b"rid",
        b"at": b"100.5",
    }


@pytest.mark.parametrize(
    ("setup", "extras", "limit", "expected"),
    [
        ("record exists", "", 0, 1),  # a retry of a call that landed: 'ok', all of them
        ("key known, same body", "same", 0, b"dup:first"),
        ("key known, other body", "other", 0, b"conflict"),
        ("queue full", "", 1, b"full"),
    ],
)
async def test_submit_writes_nothing_for_a_job_it_does_not_accept(
    r: Redis, setup: str, extras: str, limit: int, expected: Any
) -> None:
    await r.set(KEYS.idempotency("k"), "first|same")
    await add_job(r, "other-job")
    if setup == "record exists":
        await r.hset(rec("a"), mapping={"status": "done", "result": "1"})
    keys = [STREAM, HIGH, LOW, rec("a")]
    if extras:
        keys.append(KEYS.idempotency("k"))
        extras = json.dumps([5, extras, "", ""])
    keys.append(BACKLOG)
    before = await snapshot(r)
    reply = await call(r, "submit", keys, submit_args([("a", extras)], limit=limit))
    assert reply == (expected if isinstance(expected, int) else [expected])
    assert await snapshot(r) == before, "nothing written"


async def test_a_retried_call_writes_only_the_jobs_it_did_not_write_before(r: Redis) -> None:
    # The record of the second job of the call exists (only it landed, say): the first is
    # written and queued, the second left as it is; a call that checked only its first
    # job for a retry would queue the second twice.
    await r.hset(rec("b"), mapping={"status": "processing", "model": "m"})
    keys = [STREAM, HIGH, LOW, rec("a"), rec("b"), BACKLOG]
    assert await call(r, "submit", keys, submit_args([("a", ""), ("b", "")])) == 2
    assert (await record(r, "a"))["status"] == "queued"
    assert await record(r, "b") == {"status": "processing", "model": "m"}
    assert [e[1][b"id"] for e in await r.xrange(STREAM)] == [b"a"]
    assert await r.hget(BACKLOG, "m") == b"1"


async def test_a_bulk_submit_is_all_or_none(r: Redis) -> None:
    await add_job(r, "waiting")
    keys = [STREAM, HIGH, LOW, rec("a"), rec("b"), BACKLOG]
    before = await snapshot(r)
    assert await call(
        r, "submit", keys, submit_args([("a", ""), ("b", "")], limit=2, whole=True)
    ) == [b"full", b"full"]
    assert await snapshot(r) == before
    # A repeated bulk submit: one key known means none is written, and the others answer
    # 'conflict' unless they match too.
    await r.set(KEYS.idempotency("k#0"), "first|d")
    keys[-1:] = [KEYS.idempotency("k#0"), KEYS.idempotency("k#1"), BACKLOG]
    jobs = [("a", json.dumps([6, "d", "", ""])), ("b", json.dumps([7, "d", "", ""]))]
    before = await snapshot(r)
    assert await call(r, "submit", keys, submit_args(jobs, whole=True)) == [
        b"dup:first",
        b"conflict",
    ]
    assert await snapshot(r) == before


async def test_the_lane_starts_and_delivers_when_nothing_waits_undelivered(r: Redis) -> None:
    reply = await call(
        r, "submit", [STREAM, HIGH, LOW, rec("a"), BACKLOG], submit_args([("a", "")], lane=True)
    )
    count, entry_ids = reply
    assert count == 1 and len(entry_ids) == 1
    record_a = await record(r, "a")
    assert (record_a["status"], record_a["attempts"], record_a["started_at"]) == (
        "processing",
        "1",
        "100.5",
    )
    pending = await r.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry_ids[0], b"me-lane")]


async def test_the_lane_keeps_queue_order_behind_a_backlog(r: Redis) -> None:
    await add_job(r, "older")  # undelivered
    reply = await call(
        r, "submit", [STREAM, HIGH, LOW, rec("a"), BACKLOG], submit_args([("a", "")], lane=True)
    )
    assert reply == 1, "queued as usual"
    assert (await record(r, "a"))["status"] == "queued"
    assert (await r.xpending(STREAM, GROUP))["pending"] == 0


async def test_the_lane_waits_behind_a_backlog_of_another_priority(r: Redis) -> None:
    await r.xgroup_create(HIGH, GROUP, id="0", mkstream=True)
    await r.xadd(HIGH, {"id": "urgent", "model": "m", "input": '"x"', "rid": "", "at": 1})
    reply = await call(
        r, "submit", [STREAM, HIGH, LOW, rec("a"), BACKLOG], submit_args([("a", "")], lane=True)
    )
    assert reply == 1, "queued as usual, behind the high job"
    assert (await r.xpending(STREAM, GROUP))["pending"] == 0


async def test_submit_keeps_the_time_a_cancel_after_passes(r: Redis) -> None:
    extras = json.dumps([0, "", "", "", "160.5"])
    keys = [STREAM, HIGH, LOW, rec("a"), BACKLOG]
    assert await call(r, "submit", keys, submit_args([("a", extras)])) == 1
    assert (await record(r, "a"))["cancel_at"] == "160.5"


async def test_submit_at_a_priority_writes_its_stream_and_counts_every_stream(r: Redis) -> None:
    keys = [HIGH, STREAM, LOW, rec("a"), BACKLOG]
    assert await call(r, "submit", keys, submit_args([("a", "")], priority="high")) == 1
    assert [f[b"id"] for _, f in await r.xrange(HIGH)] == [b"a"]
    assert await r.xlen(STREAM) == 0
    assert (await record(r, "a"))["priority"] == "high"
    # The limit is of the three streams together.
    low_keys = [LOW, HIGH, STREAM, rec("b"), BACKLOG]
    reply = await call(r, "submit", low_keys, submit_args([("b", "")], limit=1, priority="low"))
    assert reply == [b"full"] and not await r.exists(LOW)
    # Jobs of one call count too: one place left, two jobs, the second is 'full'.
    keys = [STREAM, HIGH, LOW, rec("c"), rec("d"), BACKLOG]
    reply = await call(r, "submit", keys, submit_args([("c", ""), ("d", "")], limit=2))
    assert reply == [b"ok", b"full"] and await r.xlen(STREAM) == 1


async def test_submit_of_a_tenant_keeps_its_owner_and_counts_only_its_streams(r: Redis) -> None:
    mine = [f"{STREAM}:t:acme", f"{STREAM}:t:acme:high", f"{STREAM}:t:acme:low"]
    # Another tenant's backlog (the default one's streams) does not count against acme.
    await r.xadd(STREAM, {"id": "other"})
    keys = [*mine, rec("a"), BACKLOG]
    assert await call(r, "submit", keys, submit_args([("a", "")], limit=1, tenant="acme")) == 1
    assert (await record(r, "a"))["tenant"] == "acme"
    assert [f[b"id"] for _, f in await r.xrange(mine[0])] == [b"a"]
    # Its own queued job does: the limit is the tenant's.
    keys = [*mine, rec("b"), BACKLOG]
    reply = await call(r, "submit", keys, submit_args([("b", "")], limit=1, tenant="acme"))
    assert reply == [b"full"]
    # The default tenant's record has no owner field.
    keys = [STREAM, HIGH, LOW, rec("c"), BACKLOG]
    assert await call(r, "submit", keys, submit_args([("c", "")])) == 1
    assert "tenant" not in await record(r, "c")


# -- take ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("waiting", "count", "expected"),
    [
        ({}, 4, [[], [], []]),
        ({HIGH: 2, STREAM: 3, LOW: 1}, 4, [["h0", "h1"], ["n0", "n1"], []]),
        ({STREAM: 3, LOW: 5}, 4, [[], ["n0", "n1", "n2"], ["l0"]]),
        ({HIGH: 6, LOW: 1}, 4, [["h0", "h1", "h2", "h3"], [], []]),
    ],
)
async def test_take_fills_a_batch_from_the_streams_in_the_order_given(
    r: Redis, waiting: dict[str, int], count: int, expected: list[list[str]]
) -> None:
    for stream in (HIGH, LOW):
        await r.xgroup_create(stream, GROUP, id="0", mkstream=True)
    prefix = {HIGH: "h", STREAM: "n", LOW: "l"}
    for stream, n in waiting.items():
        for i in range(n):
            await r.xadd(stream, {"id": f"{prefix[stream]}{i}"})
    reply = await call(r, "take", [HIGH, STREAM, LOW], [GROUP, "me", count])
    got = [[dict(zip(f[::2], f[1::2], strict=True))[b"id"].decode() for _, f in s] for s in reply]
    assert got == expected
    for stream, answered in zip((HIGH, STREAM, LOW), expected, strict=True):
        # Exactly what it answered is now pending, delivered to "me"; the rest waits.
        pending = await r.xpending_range(stream, GROUP, "-", "+", 10)
        assert [p["consumer"] for p in pending] == [b"me"] * len(answered)


# -- mark ------------------------------------------------------------------------------------


def mark_args(entry_ids: list[bytes], *, now: float = 200, timeout: float = 0) -> list[Any]:
    return [now, 60, 3, timeout, TO, "PUBLISH", *entry_ids]


@pytest.mark.parametrize(
    ("status", "fields", "job_timeout", "answer", "after"),
    [
        (
            "queued",
            {},
            0,
            b"queued",
            {"status": "processing", "attempts": "1", "started_at": "200"},
        ),
        (
            "processing",
            {"attempts": 1},
            0,
            b"processing",
            {"status": "processing", "attempts": "2"},
        ),
        (
            "queued",
            {},
            50,
            b"expired",
            {
                "status": "failed",
                "finished_at": "200",
                "error": "timed out: not finished within 50 s of submission",
            },
        ),
        (
            "processing",
            {"attempts": 3},
            0,
            b"dead",
            {"status": "failed", "error": "gave up after 3 deliveries"},
        ),
        (
            "queued",
            {"cancel_at": "199.5"},  # its Cancel-After passed: never started
            50,
            b"aborted",
            {"status": "aborted", "finished_at": "200", "attempts": "0", "started_at": None},
        ),
        (
            "queued",
            {"cancel_at": "200.5"},  # not yet: it starts
            0,
            b"queued",
            {"status": "processing", "attempts": "1", "started_at": "200"},
        ),
    ],
)
async def test_mark_moves_a_job_on(
    r: Redis,
    status: str,
    fields: dict[str, Any],
    job_timeout: float,
    answer: bytes,
    after: dict[str, str],
) -> None:
    entry = await add_job(r, 1, status, **fields)
    reply = await call(r, "mark", [DEAD, HOOKS, rec(1)], mark_args([entry], timeout=job_timeout))
    assert reply == [answer]
    got = await record(r, 1)
    assert {k: got.get(k) for k in after} == after
    dead = await r.xrange(DEAD)
    if answer == b"dead":
        assert dead[0][1][b"key"] == rec(1).encode() and dead[0][1][b"entry"] == entry
        assert got["dead_entry"] == dead[0][0].decode(), "the record knows its dead letter"
    else:
        assert dead == []


@pytest.mark.parametrize(
    ("events", "posted"), [("done,failed", True), ("failed", True), ("done", False), (None, False)]
)
@pytest.mark.parametrize("attempts", [0, 3])  # ended for its deadline, or dead-lettered
async def test_mark_queues_the_webhook_of_a_job_it_ends_when_its_events_say_failed(
    r: Redis, events: str | None, posted: bool, attempts: int
) -> None:
    hook = {"webhook": "http://h/x", "webhook_events": events} if events else {}
    entry = await add_job(r, 1, "queued", attempts=attempts, **hook)
    timeout = 50 if attempts == 0 else 0
    reply = await call(r, "mark", [DEAD, HOOKS, rec(1)], mark_args([entry], timeout=timeout))
    assert reply == [b"expired" if attempts == 0 else b"dead"]
    deliveries = [fields for _, fields in await r.xrange(HOOKS)]
    assert deliveries == ([{b"key": rec(1).encode()}] if posted else [])


@pytest.mark.parametrize(
    ("events", "posted"),
    [("done,failed", True), ("aborted", True), ("failed", True), ("done", False), (None, False)],
)
async def test_mark_queues_the_webhook_of_a_job_it_aborts_when_its_events_say_so(
    r: Redis, events: str | None, posted: bool
) -> None:
    hook = {"webhook": "http://h/x", "webhook_events": events} if events else {}
    entry = await add_job(r, 1, "queued", cancel_at="150", **hook)
    assert await call(r, "mark", [DEAD, HOOKS, rec(1)], mark_args([entry])) == [b"aborted"]
    deliveries = [fields for _, fields in await r.xrange(HOOKS)]
    assert deliveries == ([{b"key": rec(1).encode()}] if posted else [])


@pytest.mark.parametrize(("requeued_at", "answer"), [(None, b"expired"), ("190", b"queued")])
async def test_mark_counts_the_time_limit_from_a_replay(
    r: Redis, requeued_at: str | None, answer: bytes
) -> None:
    fields = {"requeued_at": requeued_at} if requeued_at else {}
    entry = await add_job(r, 1, "queued", **fields)  # created at 100; now is 200
    reply = await call(r, "mark", [DEAD, HOOKS, rec(1)], mark_args([entry], timeout=50))
    assert reply == [answer]


@pytest.mark.parametrize("final", ["done", "failed", "canceled"])
async def test_mark_never_touches_a_final_record(r: Redis, final: str) -> None:
    entry = await add_job(r, 1, final, result="7", attempts=3)
    before = await record(r, 1)
    assert await call(r, "mark", [DEAD, HOOKS, rec(1)], mark_args([entry], timeout=1)) == [
        final.encode()
    ]
    assert await record(r, 1) == before


async def test_mark_of_a_record_that_is_gone_answers_empty_and_recreates_nothing(r: Redis) -> None:
    assert await call(r, "mark", [DEAD, HOOKS, rec("gone")], mark_args([b"1-1"])) == [b""]
    assert not await r.exists(rec("gone"))


# -- finish ----------------------------------------------------------------------------------


def finish_args(outcomes: list[str], entry_ids: list[bytes], want: str = "") -> list[Any]:
    pairs = [part for entry_id in entry_ids for part in (entry_id, "m")]  # id, model
    return [GROUP, "300", 60, TO, "PUBLISH", want, *outcomes, *pairs]


async def read_as(r: Redis, consumer: str) -> list[bytes]:
    reply = await r.xreadgroup(GROUP, consumer, {STREAM: ">"})
    return [entry_id for entry_id, _ in reply[0][1]] if reply else []


async def test_finish_writes_each_final_record_once_and_acks_only_what_it_is_given(
    r: Redis,
) -> None:
    done_entry = await add_job(r, 1, "processing", attempts=1)
    failed_entry = await add_job(r, 2, "processing", attempts=1)
    other_entry = await add_job(r, 3, "processing")
    assert await read_as(r, "w") == [done_entry, failed_entry, other_entry]
    reply = await call(
        r,
        "finish",
        [STREAM, HOOKS, BACKLOG, rec(1), rec(2)],
        finish_args(['R{"a":1}', "Eit broke"], [done_entry, failed_entry]),
    )
    assert reply == 2
    assert await r.hget(BACKLOG, "m") == b"1", "two of three left the backlog"
    assert (await record(r, 1))["status"] == "done" and (await record(r, 1))["result"] == '{"a":1}'
    assert (await record(r, 2))["error"] == "it broke" and (await record(r, 2))["result"] == "null"
    pending = await r.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert [p["message_id"] for p in pending] == [other_entry], "only its own entries acked"
    assert [e[0] for e in await r.xrange(STREAM)] == [other_entry], "and deleted"
    # A late second finish of the same job changes nothing and acks nothing else.
    before = await record(r, 1)
    await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(1)], finish_args(["Elate"], [done_entry]))
    assert await record(r, 1) == before
    assert await r.hget(BACKLOG, "m") == b"1", "an entry leaves the backlog once"
    assert [p["message_id"] for p in await r.xpending_range(STREAM, GROUP, "-", "+", 10)] == [
        other_entry
    ]
    await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(3)], finish_args(["Eend"], [other_entry]))
    assert await r.hgetall(BACKLOG) == {}, "a model with nothing queued leaves the hash"


async def test_finish_takes_from_the_backlog_only_the_entries_it_acked(r: Redis) -> None:
    # Of one model's batch, one entry was acked already (by a replica that reclaimed it):
    # the backlog loses the other only.
    first, second = await add_job(r, 1, "processing"), await add_job(r, 2, "processing")
    await add_job(r, 3, "queued")
    await read_as(r, "w")
    await r.xack(STREAM, GROUP, first)
    await call(
        r,
        "finish",
        [STREAM, HOOKS, BACKLOG, rec(1), rec(2)],
        finish_args(["R1", "R2"], [first, second]),
    )
    assert await r.hget(BACKLOG, "m") == b"2", "three queued, one acked here"


async def test_finish_of_a_batch_of_several_models_counts_each_model(r: Redis) -> None:
    entries = [await add_job(r, i, "processing") for i in range(3)]
    await r.hset(BACKLOG, mapping={"m": 3, "n": 2})  # 3 of m, 2 of n (one acked below)
    await read_as(r, "w")
    await r.xack(STREAM, GROUP, entries[2])
    args = [GROUP, "300", 60, TO, "PUBLISH", "", "R1", "R2", "R3"]
    args += [entries[0], "m", entries[1], "n", entries[2], "n"]
    await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(0), rec(1), rec(2)], args)
    assert await r.hgetall(BACKLOG) == {b"m": b"2", b"n": b"1"}


@pytest.mark.parametrize(
    ("events", "outcome", "delivered"),
    [
        ("done,failed", "R1", True),
        ("done", "R1", True),
        ("failed", "R1", False),
        ("done", "Ex", False),
        ("failed", "Ex", True),
        ("canceled", "Cran past", True),
        ("failed", "Cran past", True),
        ("done", "Cran past", False),
    ],
)
async def test_finish_queues_a_webhook_only_for_its_events(
    r: Redis, events: str, outcome: str, delivered: bool
) -> None:
    entry = await add_job(r, 1, "processing", webhook="http://h/", webhook_events=events)
    await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(1)], finish_args([outcome], [entry]))
    hooks = await r.xrange(HOOKS)
    assert [h[1][b"key"] for h in hooks] == ([rec(1).encode()] if delivered else [])


async def test_finish_writes_canceled_for_a_job_past_its_cancel_after(r: Redis) -> None:
    entry = await add_job(r, 1, "processing", started_at=250)
    await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(1)], finish_args(["Cwhy"], [entry]))
    got = await record(r, 1)
    assert (got["status"], got["result"], got["finished_at"]) == ("canceled", "null", "300")
    assert "error" not in got and await r.xlen(STREAM) == 0


async def test_finish_answers_the_records_asked_for(r: Redis) -> None:
    entry = await add_job(r, 1, "processing", attempts=1, started_at=150)
    await r.hset(rec(2), mapping={"status": "done", "result": "9", "model": "m"})
    reply = await call(
        r,
        "finish",
        [STREAM, HOOKS, BACKLOG, rec(1), rec(2), rec(3)],
        finish_args(["R1", "R2", "R3"], [entry], want="111"),
    )
    assert reply[0] == [b"=", b"150", b"1", b"100", None]  # written by this call
    assert dict(zip(reply[1][::2], reply[1][1::2], strict=True)) == {
        b"status": b"done",
        b"result": b"9",
        b"model": b"m",
    }
    assert reply[2] == [], "gone, and not recreated"
    assert not await r.exists(rec(3))


# -- cancel, read ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer", "after"),
    [
        ("queued", b"queued", "canceled"),
        ("processing", b"processing", "processing"),
        ("done", b"done", "done"),
        ("canceled", b"canceled", "canceled"),
    ],
)
async def test_cancel_cancels_only_a_queued_job(
    r: Redis, status: str, answer: bytes, after: str
) -> None:
    await add_job(r, 1, status)
    before, flat, stopping = await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", ""])
    assert (before, stopping) == (answer, 0)
    assert dict(zip(flat[::2], flat[1::2], strict=True))[b"status"] == after.encode()
    assert (await record(r, 1))["status"] == after
    assert "stop" not in await record(r, 1)


@pytest.mark.parametrize(
    ("status", "streaming", "stopping"),
    [
        ("processing", ["m"], 1),  # its model streams: asked to stop
        ("processing", ["other", "m"], 1),
        ("processing", ["other"], 0),  # another model streams: left as it is (409)
        ("processing", [], 0),
        ("done", ["m"], 0),  # final: never touched
        ("canceled", ["m"], 0),
    ],
)
async def test_cancel_asks_a_running_job_of_a_streaming_model_to_stop(
    r: Redis, status: str, streaming: list[str], stopping: int
) -> None:
    await add_job(r, 1, status)
    before, _, asked = await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", "", *streaming])
    assert (before, asked) == (status.encode(), stopping)
    fields = await record(r, 1)
    assert fields["status"] == status, "the worker ends it, not cancel"
    assert fields.get("stop") == ("1" if stopping else None)


async def test_cancel_leaves_another_tenants_job_and_answers_it_as_gone(r: Redis) -> None:
    await add_job(r, 1, tenant="acme")
    gone = [b"", [], 0]
    assert await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", "other"]) == gone
    assert await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", ""]) == gone
    assert (await record(r, 1))["status"] == "queued"
    before, _, _ = await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", "acme"])
    assert before == b"queued" and (await record(r, 1))["status"] == "canceled"
    await add_job(r, 2, "processing", tenant="acme")
    stop = ["300", TO, "PUBLISH", "other", "m"]
    assert await call(r, "cancel", [rec(2)], stop) == gone, "nor asks another's to stop"
    assert "stop" not in await record(r, 2)


async def test_cancel_and_read_of_a_record_that_is_gone(r: Redis) -> None:
    gone = [b"", [], 0]
    assert await call(r, "cancel", [rec("gone")], ["300", TO, "PUBLISH", ""]) == gone
    assert not await r.exists(rec("gone"))
    await add_job(r, 1)
    reply = await call(r, "read", [rec(1), rec("gone")], [])
    assert (
        dict(zip(reply[0][::2], reply[0][1::2], strict=True))[b"status"] == b"queued"
        and reply[1] == []
    )


# -- watchers: only the replicas that wait for a job are told of it --------------------------


@contextlib.asynccontextmanager
async def listening(r: Redis) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Every message published while inside, as (the replica told, data)."""
    pubsub = r.pubsub()
    await pubsub.psubscribe("*")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation
    heard: list[tuple[str, bytes]] = []
    yield heard
    while (message := await pubsub.get_message(timeout=0.2)) is not None:
        heard.append((message["channel"].decode().removeprefix(TO), message["data"]))
    await pubsub.aclose()


async def test_finish_tells_each_watcher_of_what_ended_once_and_no_one_else(r: Redis) -> None:
    first = await add_job(r, 1, "processing", watchers="a,b")
    second = await add_job(r, 2, "processing", watchers="b")
    third = await add_job(r, 3, "processing")  # no one waits for it
    async with listening(r) as heard:
        await call(
            r,
            "finish",
            [STREAM, HOOKS, BACKLOG, rec(1), rec(2), rec(3)],
            finish_args(["R1", "R2", "R3"], [first, second, third]),
        )
    assert sorted(heard) == [
        ("a", b"e" + rec(1).encode()),
        ("b", b"e" + f"{rec(1)},{rec(2)}".encode()),
    ]
    assert [await r.hget(rec(i), "watchers") for i in (1, 2)] == [None, None], "told: left"
    async with listening(r) as heard:  # a late second finish ends nothing: tells nothing
        await call(r, "finish", [STREAM, HOOKS, BACKLOG, rec(1)], finish_args(["R9"], [first]))
    assert heard == []


async def test_mark_tells_the_watchers_what_it_started_and_what_it_ended(r: Redis) -> None:
    started = await add_job(r, 1, "queued", watchers="a")
    ended = await add_job(r, 2, "queued", watchers="a,b", cancel_at="150")
    unwatched = await add_job(r, 3, "queued")
    async with listening(r) as heard:
        reply = await call(
            r, "mark", [DEAD, HOOKS, rec(1), rec(2), rec(3)], mark_args([started, ended, unwatched])
        )
    assert reply == [b"queued", b"aborted", b"queued"]
    assert sorted(heard) == [
        ("a", b"e" + rec(2).encode()),
        ("a", b"s" + rec(1).encode()),
        ("b", b"e" + rec(2).encode()),
    ]
    assert await r.hget(rec(1), "watchers") == b"a", "a job that started keeps its watchers"
    assert await r.hget(rec(2), "watchers") is None, "one that ended leaves none"


async def test_cancel_tells_only_the_watchers_of_the_job(r: Redis) -> None:
    await add_job(r, 1, "queued", watchers="a")
    await add_job(r, 2, "queued")
    async with listening(r) as heard:
        await call(r, "cancel", [rec(1)], ["300", TO, "PUBLISH", ""])
        await call(r, "cancel", [rec(2)], ["300", TO, "PUBLISH", ""])
    assert heard == [("a", b"e" + rec(1).encode())]
    assert await r.hget(rec(1), "watchers") is None


async def test_a_read_for_a_wait_joins_the_watchers_of_a_job_not_ended_once(r: Redis) -> None:
    await add_job(r, 1, "queued")
    await add_job(r, 2, "processing", watchers="b")
    await add_job(r, 3, "done")
    keys = [rec(1), rec(2), rec(3), rec("gone"), rec(4)]
    await add_job(r, 4, "queued")
    for _ in range(2):  # a second read for a wait adds nothing
        await call(r, "read", keys, ["a", "11110"])
    watchers = [await r.hget(rec(i), "watchers") for i in (1, 2, 3, 4)]
    assert watchers == [b"a", b"b,a", None, None], "not an ended job, nor one not flagged"
    assert not await r.exists(rec("gone"))


async def test_a_submit_keeps_its_waiter_and_the_lane_tells_it_the_job_started(
    r: Redis,
) -> None:
    waited = json.dumps([0, "", "", "", "", "", "", "me"])
    async with listening(r) as heard:
        await call(
            r,
            "submit",
            [STREAM, HIGH, LOW, rec("a"), rec("b"), BACKLOG],
            submit_args([("a", waited), ("b", "")], lane=True),
        )
    assert (await record(r, "a"))["watchers"] == "me"
    assert "watchers" not in await record(r, "b")
    assert heard == [("me", b"s" + rec("a").encode())], "only the waited job, to its waiter"


# -- webhook retries -------------------------------------------------------------------------


async def test_release_due_moves_only_due_retries_back_and_tells_the_next(r: Redis) -> None:
    await r.zadd(RETRY, {f"{rec(1)}|2|100.0": 150, f"{rec(2)}|3|90.0": 500})
    reply = await call(r, "release_due", [RETRY, HOOKS], [200, 10])
    assert float(reply) == 500
    hooks = await r.xrange(HOOKS)
    assert [h[1] for h in hooks] == [
        {b"key": rec(1).encode(), b"attempt": b"2", b"since": b"100.0"}
    ]
    assert await r.zrange(RETRY, 0, -1) == [f"{rec(2)}|3|90.0".encode()]
    assert await call(r, "release_due", [RETRY, HOOKS], [600, 10]) == b""


# -- hand_back -------------------------------------------------------------------------------


async def test_hand_back_requeues_only_what_this_consumer_holds_unfinished(r: Redis) -> None:
    running = await add_job(r, 1, "processing", attempts=1)
    other = await add_job(r, 2, "processing", attempts=1)
    final = await add_job(r, 3, "done", attempts=1)
    assert await read_as(r, "me") == [running, other, final]
    await r.xclaim(STREAM, GROUP, "someone-else", 0, [other])  # not ours any more
    reply = await call(
        r, "hand_back", [STREAM, rec(1), rec(2), rec(3)], [GROUP, "me", running, other, final]
    )
    assert reply == 1
    assert (await record(r, 1))["status"] == "queued"
    assert (await record(r, 1))["attempts"] == "1", "the abandoned run stays counted"
    assert (await record(r, 2))["status"] == "processing" and (await record(r, 3))[
        "status"
    ] == "done"
    entries = await r.xrange(STREAM)
    assert [e[0] for e in entries][:2] == [other, final], "the others stay where they were"
    copy_id, fields = entries[-1]
    assert copy_id not in (running, other, final)
    assert fields == {b"id": b"1", b"model": b"m", b"input": b'"x"', b"rid": b"", b"at": b"100"}
    pending = await r.xpending_range(STREAM, GROUP, "-", "+", 10)
    assert sorted((p["message_id"], p["consumer"]) for p in pending) == sorted(
        [(other, b"someone-else"), (final, b"me")]
    )
    assert await read_as(r, "next") == [copy_id], "undelivered: the next read takes it"
    assert await r.hget(BACKLOG, "m") == b"3", "one entry out, one in"


async def test_hand_back_of_a_gone_record_or_a_deleted_entry_changes_nothing(r: Redis) -> None:
    gone = await add_job(r, 1, "processing")
    deleted = await add_job(r, 2, "processing")
    assert await read_as(r, "me") == [gone, deleted]
    await r.delete(rec(1))
    await r.xdel(STREAM, deleted)
    before = await snapshot(r)
    assert await call(r, "hand_back", [STREAM, rec(1), rec(2)], [GROUP, "me", gone, deleted]) == 0
    assert await snapshot(r) == before


# -- retire ----------------------------------------------------------------------------------


async def test_retire_deletes_only_consumers_that_hold_nothing(r: Redis) -> None:
    held = await add_job(r, 1, "processing")
    assert await read_as(r, "busy") == [held]
    await r.xgroup_createconsumer(STREAM, GROUP, "idle")
    reply = await call(r, "retire", [STREAM], [GROUP, "idle", "busy", "never-seen"])
    assert reply == 1
    consumers = {c["name"] for c in await r.xinfo_consumers(STREAM, GROUP)}
    assert consumers == {b"busy"}, "a consumer holding work stays, with its pending entry"
    assert [p["message_id"] for p in await r.xpending_range(STREAM, GROUP, "-", "+", 10)] == [held]


async def test_retire_on_a_missing_stream_does_nothing(r: Redis) -> None:
    await r.delete(STREAM)
    assert await call(r, "retire", [STREAM], [GROUP, "x"]) == 0
    assert not await r.exists(STREAM)


async def dead_job(r: Redis, i: int) -> bytes:
    """A job mark.lua gave up on: its record failed, its letter in the dead stream."""
    entry = await add_job(r, i, "processing", attempts=3)
    await call(r, "mark", [DEAD, HOOKS, rec(i)], mark_args([entry]))
    await r.xack(STREAM, GROUP, entry)
    await r.xdel(STREAM, entry)
    await r.hincrby(BACKLOG, "m", -1)
    return (await r.xrange(DEAD))[-1][0]


def replay_keys(*jobs: int) -> list[str]:
    return [STREAM, DEAD, BACKLOG, HIGH, LOW, *(rec(i) for i in jobs)]


async def test_replay_queues_a_dead_job_again_once_under_its_id(r: Redis) -> None:
    letter = await dead_job(r, 1)
    await r.hset(rec(1), "cancel_at", "150")
    args = [300, 60, letter, "1"]
    assert await call(r, "replay", replay_keys(1), args) == [b"replayed"]
    got = await record(r, 1)
    assert got["status"] == "queued" and got["attempts"] == "0" and got["requeued_at"] == "300"
    for gone in ("error", "result", "finished_at", "started_at", "dead_entry", "cancel_at"):
        assert gone not in got
    assert got["created_at"] == "100", "the submission time stays"
    ((_, fields),) = await r.xrange(STREAM)
    assert fields == {b"id": b"1", b"model": b"m", b"input": b'"x"', b"rid": b"", b"at": b"300"}
    assert await r.hget(BACKLOG, "m") == b"1"
    assert await r.xlen(DEAD) == 0
    # The same letter again (a repeated call, or a second operator at once): nothing.
    assert await call(r, "replay", replay_keys(1), args) == [b"no"]
    assert await r.xlen(STREAM) == 1 and await r.hget(BACKLOG, "m") == b"1"
    assert (await record(r, 1))["status"] == "queued"


async def test_replay_queues_a_job_on_the_stream_of_its_priority(r: Redis) -> None:
    letter = await dead_job(r, 1)
    await r.hset(rec(1), "priority", "low")
    assert await call(r, "replay", replay_keys(1), [300, 60, letter, "1"]) == [b"replayed"]
    assert [f[b"id"] for _, f in await r.xrange(LOW)] == [b"1"]
    assert await r.xlen(STREAM) == 0 and await r.xlen(HIGH) == 0


async def test_replay_keeps_the_jobs_traceparent_on_its_new_entry(r: Redis) -> None:
    letter = await dead_job(r, 1)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await r.hset(rec(1), "traceparent", traceparent)
    assert await call(r, "replay", replay_keys(1), [300, 60, letter, "1"]) == [b"replayed"]
    ((_, fields),) = await r.xrange(STREAM)
    assert fields[b"tp"] == traceparent.encode(), "the run shows in the request's trace"
    assert (await record(r, 1))["traceparent"] == traceparent


async def test_replay_drops_the_letter_of_a_gone_or_no_longer_failed_record(r: Redis) -> None:
    gone, moved = await dead_job(r, 1), await dead_job(r, 2)
    await r.delete(rec(1))
    await r.hset(rec(2), "status", "done")
    before = await record(r, 2)
    reply = await call(r, "replay", replay_keys(1, 2), [300, 60, gone, "1", moved, "2"])
    assert reply == [b"gone", b"stale"]
    assert await r.xlen(DEAD) == 0 and await r.xlen(STREAM) == 0
    assert not await r.exists(rec(1)), "not recreated"
    assert await record(r, 2) == before, "a final record is not rewritten"


# -- limit -----------------------------------------------------------------------------------


async def test_limit_lets_a_burst_through_then_refills_at_the_rate(r: Redis) -> None:
    bucket = Names().rate_bucket("a")
    assert [await call(r, "limit", [bucket], ["0.5", "2"]) for _ in range(2)] == [0, 0]
    wait_ms = await call(r, "limit", [bucket], ["0.5", "2"])
    assert 1000 < wait_ms <= 2000, "one token comes back in 2 s at 0.5/s"
    assert float((await r.hgetall(bucket))[b"tokens"]) < 1, "a refusal takes nothing"
    assert 0 < await r.pttl(bucket) <= 5000
    # Three seconds later (the bucket's clock moved back): one token again, not more.
    at = float(await r.hget(bucket, "at"))
    await r.hset(bucket, "at", repr(at - 3))
    assert await call(r, "limit", [bucket], ["0.5", "2"]) == 0
    assert await call(r, "limit", [bucket], ["0.5", "2"]) > 0
    # A long pause refills to the burst, never beyond.
    await r.hset(bucket, mapping={"at": repr(at - 3600), "tokens": "0"})
    assert [await call(r, "limit", [bucket], ["0.5", "2"]) for _ in range(3)][2] > 0


# -- append --------------------------------------------------------------------------------


def append_args(
    *jobs: tuple[int, list[str]], now: str = "100", interval: str = "0.5", by: str = "worker"
) -> list[Any]:
    """ARGV of append.lua for jobs given as (first number, chunks), appended by ``by``."""
    args: list[Any] = [now, 60, "PUBLISH", KEYS.to_replica(""), interval, by]
    for first, chunks in jobs:
        args += [first, len(chunks), *chunks]
    return args


def append_keys(*ids: int) -> list[str]:
    names = [HOOKS]
    for i in ids:
        names += [rec(i), KEYS.chunks(str(i))]
    return names


async def chunks_of(r: Redis, i: int) -> list[tuple[bytes, bytes]]:
    return [(entry_id, f[b"c"]) for entry_id, f in await r.xrange(KEYS.chunks(str(i)))]


async def test_append_keeps_chunks_numbered_and_tells_the_watchers(r: Redis) -> None:
    await add_job(r, 1, "processing")
    await add_job(r, 2, "processing")
    await r.hset(rec(1), "watchers", "replica-a,replica-b,worker")
    pubsub = r.pubsub()
    channels = [KEYS.to_replica(who) for who in ("replica-a", "replica-b", "worker")]
    await pubsub.subscribe(*channels)
    for _ in channels:
        await pubsub.get_message(timeout=1)
    reply = await call(
        r, "append", append_keys(1, 2), append_args((1, ['"a"', '"b"']), (1, ['"x"']))
    )
    assert reply == [b"go", b"go"]
    assert await chunks_of(r, 1) == [(b"0-1", b'"a"'), (b"0-2", b'"b"')]
    assert await chunks_of(r, 2) == [(b"0-1", b'"x"')]
    assert 0 < await r.ttl(KEYS.chunks("1")) <= 60
    told = []
    for _ in range(2):
        message = await pubsub.get_message(timeout=1)
        assert message is not None
        told.append((message["channel"], message["data"]))
    assert sorted(told) == sorted(
        (KEYS.to_replica(who).encode(), b"o" + rec(1).encode())
        for who in ("replica-a", "replica-b")
    ), "each watcher of job 1 once; job 2 has none"
    # The appending replica ("worker") tells its own followers itself: never on its channel.
    assert await pubsub.get_message(timeout=0.2) is None
    await pubsub.aclose()
    # The next chunks follow the first ones; a rerun (a first chunk numbered 1) starts over.
    await call(r, "append", append_keys(1), append_args((3, ['"c"'])))
    assert [n for n, _ in await chunks_of(r, 1)] == [b"0-1", b"0-2", b"0-3"]
    await call(r, "append", append_keys(1), append_args((1, ['"again"'])))
    assert await chunks_of(r, 1) == [(b"0-1", b'"again"')]


@pytest.mark.parametrize(
    ("status", "fields"),
    [("processing", {"stop": "1"}), ("canceled", {}), ("done", {}), ("queued", {})],
    ids=["asked to stop", "canceled", "done", "queued"],
)
async def test_append_answers_stop_and_keeps_nothing_for_a_job_not_to_go_on(
    r: Redis, status: str, fields: dict[str, str]
) -> None:
    await add_job(r, 1, status, **fields)
    assert await call(r, "append", append_keys(1), append_args((1, ['"a"']))) == [b"stop"]
    assert not await r.exists(KEYS.chunks("1"))
    assert (await record(r, 1))["status"] == status


async def test_append_of_a_gone_record_stops_and_recreates_nothing(r: Redis) -> None:
    assert await call(r, "append", append_keys(7), append_args((1, ['"a"']))) == [b"stop"]
    assert not await r.exists(rec(7)) and not await r.exists(KEYS.chunks("7"))


async def test_append_queues_an_output_webhook_at_most_every_interval(r: Redis) -> None:
    hook = {"webhook": "http://h/x", "webhook_events": "output,done"}
    await add_job(r, 1, "processing", **hook)
    await add_job(r, 2, "processing", webhook="http://h/x", webhook_events="done")
    both = append_keys(1, 2)
    await call(r, "append", both, append_args((1, ['"a"']), (1, ['"x"']), now="100"))
    await call(r, "append", both, append_args((2, ['"b"']), (2, ['"y"']), now="100.2"))
    await call(r, "append", both, append_args((3, ['"c"']), (3, ['"z"']), now="100.6"))
    entries = await r.xrange(HOOKS)
    assert [(f[b"key"], f[b"event"]) for _, f in entries] == [(rec(1).encode(), b"output")] * 2
    assert (await record(r, 1))["output_at"] == "100.6"

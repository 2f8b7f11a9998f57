"""Fast models are called on the event loop; one slow call sends them back to threads.
And the sync path's timeouts: one timer for many requests."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest

from service.execution.inline import FIRST_STREAK, InlinePolicy, own_time, usage
from service.execution.timers import Deadlines
from service.http import state

from .helpers import ClientFactory
from .models import where

needs_thread_usage = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="per-thread CPU time and switches: Linux"
)


@contextmanager
def crowded_core() -> Iterator[None]:
    """Pins this thread to one core and keeps three processes busy on that core: the
    kernel then preempts this thread every few ms, as a container's CPU quota or a noisy
    neighbour would."""
    saved = os.sched_getaffinity(0)
    core = min(saved)
    os.sched_setaffinity(0, {core})
    spin = f"import os\nos.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(3)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        os.sched_setaffinity(0, saved)


async def test_a_fast_model_moves_onto_the_loop_and_back_after_a_slow_call(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:where", inline_max_ms=10)
    batcher = client.server.app[state.BATCHERS]["default"]
    loop_thread = threading.current_thread().name

    async def thread_of(value: str) -> str:
        outcome = await batcher.run_one(value)
        assert outcome.ok
        return outcome.payload.decode()

    first = [await thread_of("x") for _ in range(FIRST_STREAK)]
    assert loop_thread not in "".join(first), "threads until the model has proven fast"
    assert loop_thread in await thread_of("x")
    assert loop_thread in await thread_of("slow"), "the slow call itself ran inline"
    assert loop_thread not in await thread_of("x"), "and sent the model back to threads"


async def test_a_model_that_does_not_declare_itself_cheap_never_runs_on_the_loop(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:varying", inline_max_ms=10, workers=0)
    batcher = client.server.app[state.BATCHERS]["default"]
    loop_thread = threading.current_thread().name
    for _ in range(FIRST_STREAK * 2):  # fast, again and again
        assert loop_thread not in (await batcher.run_one("quick")).payload.decode()
    slow = asyncio.ensure_future(batcher.run_one(1.5))  # then one input that takes 1.5 s
    began = time.monotonic()
    resp = await client.get("/health/live")
    answered = time.monotonic() - began
    assert resp.status == 200
    assert answered < 0.5, f"liveness took {answered:.2f} s while the model ran"
    assert not slow.done()
    assert (await slow).ok


async def test_a_slow_call_of_a_cheap_declared_model_is_a_warning(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(model="tests.models:where", inline_max_ms=10)
    batcher = client.server.app[state.BATCHERS]["default"]
    for _ in range(FIRST_STREAK):
        await batcher.run_one("x")
    with caplog.at_level(logging.WARNING, logger="service.execution.inline"):
        await batcher.run_one("slow")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "on the event loop" in caplog.records[0].getMessage()


async def test_a_models_file_can_declare_a_model_cheap(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    (tmp_path / "models.toml").write_text(
        '[models.plain]\nspec = "tests.models:varying"\n'
        '[models.cheap]\nspec = "tests.models:varying"\ninline = true\n'
    )
    client = await make_client(models_file=tmp_path / "models.toml", inline_max_ms=10)
    registry = client.server.app[state.MODELS]
    assert (registry.get("plain").inline, registry.get("cheap").inline) == (False, True)


async def test_inline_calling_can_be_turned_off(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:where", inline_max_ms=0)
    batcher = client.server.app[state.BATCHERS]["default"]
    for _ in range(FIRST_STREAK + 5):
        outcome = await batcher.run_one("x")
        assert threading.current_thread().name not in outcome.payload.decode()


@needs_thread_usage
def test_a_calls_own_time_leaves_out_preemption_but_not_blocking() -> None:
    with crowded_core():
        deadline = time.monotonic() + 20
        while True:  # until a call of 3 ms of CPU is preempted to twice that
            began, before = time.perf_counter(), usage()
            where(["cpu", 3])
            wall = time.perf_counter() - began
            own = own_time(wall, before, usage())
            if wall > 0.006:
                break
            assert time.monotonic() < deadline, "the crowded core never preempted the call"
    assert 0.003 <= own < 0.0045, f"{own * 1000:.2f} ms of its own in {wall * 1000:.2f} ms"
    began, before = time.perf_counter(), usage()
    where("slow")  # waits 30 ms, using next to no CPU: all of it is the call's own
    wall = time.perf_counter() - began
    assert own_time(wall, before, usage()) == wall >= 0.03


@needs_thread_usage
async def test_a_cheap_model_preempted_mid_call_stays_on_the_loop(
    make_client: ClientFactory,
) -> None:
    """A call that takes longer only because the machine ran something else meanwhile
    does not send the model back to threads (they would not have made it faster)."""
    client = await make_client(model="tests.models:where", inline_max_ms=5)
    batcher = client.server.app[state.BATCHERS]["default"]
    loop_thread = threading.current_thread().name
    for _ in range(FIRST_STREAK):
        await batcher.run_one("x")
    with crowded_core():
        deadline = time.monotonic() + 20
        while True:  # until a call of 2 ms of CPU is preempted past the 5 ms limit
            outcome = await batcher.run_one(["cpu", 2])
            answer = orjson.loads(outcome.payload)
            assert answer["thread"] == loop_thread, "sent back to threads by a preempted call"
            if answer["wall_ms"] > 5:
                break
            assert time.monotonic() < deadline, "the crowded core never preempted the call"
    answer = orjson.loads((await batcher.run_one("x")).payload)
    assert answer["thread"] == loop_thread, "sent back to threads by a preempted call"
    outcome = await batcher.run_one(["cpu", 20])  # 20 ms of CPU: slow by its own doing
    assert orjson.loads(outcome.payload)["thread"] == loop_thread
    answer = orjson.loads((await batcher.run_one("x")).payload)
    assert answer["thread"] != loop_thread, "a call slow by its own CPU time sends it back"


def test_each_demotion_doubles_the_fast_streak_needed() -> None:
    policy = InlinePolicy("m", 0.001)
    needed = FIRST_STREAK
    for _ in range(3):
        for _ in range(needed - 1):
            policy.observe(0.0001)
        assert not policy.inline
        policy.observe(0.0001)
        assert policy.inline
        policy.observe(0.5)  # slow
        assert not policy.inline
        needed *= 2


async def test_deadlines_fail_only_what_is_still_pending() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    late, settled = loop.create_future(), loop.create_future()
    began = loop.time()
    deadlines.expire_after(loop, late, 0.05)
    deadlines.expire_after(loop, settled, 0.05)
    settled.set_result("in time")
    done, _ = await asyncio.wait([late], timeout=5)  # bounded, and no TimeoutError of its own
    assert done == {late} and isinstance(late.exception(), TimeoutError)
    assert 0.04 <= loop.time() - began < 1.0
    assert settled.result() == "in time"
    assert len(deadlines) == 0


async def test_deadlines_settle_as_told() -> None:
    # Waiters (Prefer: wait, ?wait=) are answered None when time is up, not failed.
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(lambda f: f.done() or f.set_result(None))
    first, later = loop.create_future(), loop.create_future()
    deadlines.expire_after(loop, first, 30)
    deadlines.expire_after(loop, later, 0.01)  # out of order: a timer of its own
    assert await asyncio.wait_for(later, 5) is None
    assert not first.done()
    first.cancel()


async def test_deadlines_hold_memory_for_what_is_pending_not_what_went_before() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    slow = loop.create_future()
    deadlines.expire_after(loop, slow, 60)  # one slow call at the head
    scheduled = len(getattr(loop, "_scheduled", ()))
    for seconds in (60, 1):  # settled ones behind it: in order, then out of order
        for _ in range(50_000):
            quick = loop.create_future()
            deadlines.expire_after(loop, quick, seconds)
            quick.set_result(None)
        assert len(deadlines) <= 2 * 1024 + 2, len(deadlines)
    # No timer per request either.
    assert len(getattr(loop, "_scheduled", ())) <= scheduled + 1
    assert not slow.done()
    slow.cancel()


async def test_an_out_of_order_deadline_fires_on_time_and_the_later_one_still_waits() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines()
    slow, quick = loop.create_future(), loop.create_future()
    deadlines.expire_after(loop, slow, 30)
    began = loop.time()
    deadlines.expire_after(loop, quick, 0.05)
    done, _ = await asyncio.wait([quick], timeout=5)
    assert done == {quick}, "the earlier deadline fired"
    assert isinstance(quick.exception(), TimeoutError)
    assert loop.time() - began < 1.0
    assert not slow.done()
    slow.cancel()


async def test_sync_requests_behind_one_slow_call_leave_no_trace(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model="tests.models:varying", workers=0, max_batch_size=1)
    batcher = client.server.app[state.BATCHERS]["default"]
    held = asyncio.ensure_future(client.post("/predict", json={"input": 8}))  # an 8 s call
    for _ in range(10):  # 3,000 quick requests answered while it runs
        answers = await asyncio.gather(
            *(client.post("/predict", json={"input": "x"}) for _ in range(300))
        )
        assert {r.status for r in answers} == {200}
    assert not held.done()
    assert len(batcher._deadlines) <= 2 * 1024 + 1, "settled requests are not kept"
    assert (await held).status == 200

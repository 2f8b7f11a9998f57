"""Models that stream: chunks over server-sent events, sync and queued; a queued job's
stream resumed on another replica with Last-Event-ID, while it runs and after it ended;
a running stream stopped (DELETE, Cancel-After, a sync client that leaves); the chunk cap;
a slow reader holding the model, not memory; tenants; the Python client. The events are
read with httpx-sse, a maintained parser, over real connections."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from httpx_sse import aconnect_sse

from service.client import AsyncClient, PredictionFailedError
from service.http import state

from . import models
from .helpers import GROUP, KEYS, STREAM, poll, worker_for

MODES = pytest.mark.modes("single", "cluster")
ASYNC = {"Async-Mode": "true"}
EVENTS = {"Accept": "text/event-stream"}


async def events(
    base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> list[tuple[str, str, Any]]:
    """Every event of a stream, to its end: (event, id, data as JSON)."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        aconnect_sse(http, method, path, json=body, headers=dict(headers or {})) as source,
    ):
        assert source.response.status_code == 200, await source.response.aread()
        return [(e.event, e.id, json.loads(e.data)) async for e in source.aiter_sse()]


def outputs(seen: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
    return [(int(i), data) for kind, i, data in seen if kind == "output"]


async def submit(base: str, value: Any, headers: dict[str, str] | None = None) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        resp = await http.post(
            "/predict", json={"input": value}, headers={**ASYNC, **(headers or {})}
        )
        assert resp.status_code == 202, resp.text
        return resp.json()["prediction_id"]  # type: ignore[no-any-return]


# -- sync ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["counting", "counting_async"])
async def test_a_sync_stream_sends_each_chunk_then_the_final_record(
    make_served: Any, model: str
) -> None:
    _, base = await make_served(model=f"tests.models:{model}", workers=0)
    seen = await events(base, "POST", "/predict", {"input": {"n": 3}}, EVENTS)
    assert outputs(seen) == [(1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
    kind, _, done = seen[-1]
    assert kind == "done" and done["status"] == "done"
    assert done["output"] == {"input": {"n": 3}, "result": [{"n": 0}, {"n": 1}, {"n": 2}]}
    # Without the Accept header: the usual answer, its result the list of chunks.
    async with httpx.AsyncClient(base_url=base) as http:
        resp = await http.post("/predict", json={"input": {"n": 2}})
    assert resp.json() == {"input": {"n": 2}, "result": [{"n": 0}, {"n": 1}]}


async def test_the_first_chunk_arrives_while_the_model_still_runs(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:held_stream", workers=0)
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        aconnect_sse(http, "POST", "/predict", json={"input": 1}, headers=EVENTS) as src,
    ):
        stream = src.aiter_sse()
        first = await anext(stream)
        assert (first.event, first.id, first.data) == ("output", "1", '"first"')
        assert not models.closed, "the model is still running"
        models.release()
        rest = [e.event async for e in stream]
    assert rest == ["output", "done"]


@pytest.mark.parametrize("execution", ["thread", "process"])
async def test_chunks_cross_as_they_are_yielded_not_at_the_end(
    make_served: Any, execution: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    _, base = await make_served(
        model="tests.models:counting", execution=execution, process_workers=1, workers=0
    )
    body = {"input": {"n": 4, "every": 0.3, "tag": "cross"}}
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        aconnect_sse(http, "POST", "/predict", json=body, headers=EVENTS) as src,
    ):
        stream = src.aiter_sse()
        first = await anext(stream)
        assert (first.event, json.loads(first.data)) == ("output", {"n": 0})
        assert "yield 3 cross" not in journal.read_text(), "the model had not ended yet"
        rest = [e.event async for e in stream]
    assert rest == ["output", "output", "output", "done"]


@pytest.mark.parametrize("model", ["Counter_", "counting_async"])
async def test_generator_methods_and_async_generators_stream_in_a_process_too(
    make_served: Any, model: str
) -> None:
    _, base = await make_served(
        model=f"tests.models:{model}", execution="process", process_workers=1, workers=0
    )
    value = "three little words" if model == "Counter_" else {"n": 3}
    seen = await events(base, "POST", "/predict", {"input": value}, EVENTS)
    want = ["three", "little", "words"] if model == "Counter_" else [{"n": i} for i in range(3)]
    assert [data for _, data in outputs(seen)] == want
    assert seen[-1][2]["output"]["result"] == want


async def test_a_model_that_does_not_stream_sends_one_output_then_done(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:echo", workers=0)
    seen = await events(base, "POST", "/predict", {"input": "hi"}, EVENTS)
    assert [kind for kind, _, _ in seen] == ["output", "done"]
    assert seen[0][1] == "1"
    assert seen[0][2] == {"echo": "hi"}


@pytest.mark.parametrize(
    ("value", "error"), [("raise", "the stream broke"), ("set", "chunk 3 is not JSON: a set")]
)
async def test_a_stream_that_fails_midway_keeps_what_it_sent(
    make_served: Any, value: str, error: str
) -> None:
    _, base = await make_served(model="tests.models:bad_stream", workers=0)
    seen = await events(base, "POST", "/predict", {"input": value}, EVENTS)
    assert outputs(seen) == [(1, 1), (2, 2)]
    assert seen[-1][0] == "error" and error in seen[-1][2]["error"]


async def test_a_sync_stream_whose_client_leaves_stops_the_model(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting", workers=0)
    body = {"input": {"n": 1000, "every": 0.01, "tag": "left"}}
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        aconnect_sse(http, "POST", "/predict", json=body, headers=EVENTS) as src,
    ):
        async for event in src.aiter_sse():
            if event.id == "3":
                break  # the client goes away

    async def stopped() -> bool:
        return "left" in models.closed

    await poll(stopped)
    assert len(models.made) < 1000, "the generator was closed before its end"


async def test_a_slow_reader_holds_the_model_not_memory(make_served: Any) -> None:
    # 100 KB chunks, a reader that takes one and stops reading: the model waits once the
    # channel (16 chunks) and the socket's buffers are full, instead of running ahead.
    _, base = await make_served(model="tests.models:counting", workers=0)
    body = {"input": {"n": 2000, "pad": 100_000, "tag": "slow"}}
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        http.stream("POST", "/predict", json=body, headers=EVENTS) as resp,
    ):
        await anext(resp.aiter_raw())

        async def settled() -> bool:
            before = len(models.made)
            await asyncio.sleep(0.3)
            return len(models.made) == before

        await poll(settled)
        assert len(models.made) < 400, len(models.made)


async def test_the_chunk_cap_stops_the_model_and_says_so(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting", workers=0, max_stream_chunks=5)
    seen = await events(base, "POST", "/predict", {"input": {"n": 50, "tag": "cap"}}, EVENTS)
    assert [n for n, _ in outputs(seen)] == [1, 2, 3, 4, 5]
    assert "MAX_STREAM_CHUNKS (5)" in seen[-1][2]["error"]

    async def closed() -> bool:  # its finally runs in the model's thread, maybe just after
        return "cap" in models.closed

    await poll(closed)
    seen = await events(base, "POST", "/predict", {"input": {"n": 5}}, EVENTS)
    assert seen[-1][0] == "done", "exactly the cap is fine"


# -- queued ------------------------------------------------------------------------------


@MODES
async def test_a_queued_stream_resumes_on_another_replica_with_every_chunk_once(
    make_served: Any, rds: Any
) -> None:
    _, api = await make_served(model="tests.models:counting", workers=0)
    _, other = await make_served(model="tests.models:counting", workers=0, consumer_name="other")
    prediction_id = await submit(api, {"n": 8, "every": 0.1})
    await make_served(model="tests.models:counting", consumer_name="worker")
    got: list[tuple[int, Any]] = []
    async with (
        httpx.AsyncClient(base_url=api, timeout=30) as http,
        aconnect_sse(http, "GET", f"/predict/{prediction_id}/events") as src,
    ):
        async for event in src.aiter_sse():
            if event.event == "output":
                got.append((int(event.id), json.loads(event.data)))
                if len(got) == 3:
                    break  # dropped
    rest = await events(
        other, "GET", f"/predict/{prediction_id}/events", None, {"Last-Event-ID": "3"}
    )
    got += outputs(rest)
    assert got == [(i + 1, {"n": i}) for i in range(8)], "all, in order, once"
    assert rest[-1][0] == "status" and rest[-1][2]["status"] == "done"
    assert rest[-1][2]["output"]["result"] == [{"n": i} for i in range(8)]
    # After the end, from the start or after any id, on either replica.
    for base, after, want in ((api, "", 8), (other, "6", 2), (api, "8", 0)):
        headers = {"Last-Event-ID": after} if after else None
        seen = await events(base, "GET", f"/predict/{prediction_id}/events", None, headers)
        assert [n for n, _ in outputs(seen)] == list(range(9 - want, 9)), (after, seen)
        assert seen[-1][2]["status"] == "done"
    by_query = await events(other, "GET", f"/predict/{prediction_id}/events?last_event_id=7")
    assert [n for n, _ in outputs(by_query)] == [8]


@MODES
async def test_a_follower_on_the_running_replica_gets_a_burst_in_order_and_resumes_there(
    make_served: Any,
) -> None:
    # The replica that runs the job hands its followers there the chunks from memory: a
    # burst (many chunks in each append call) in order, and a resume with Last-Event-ID
    # mid-run, on that replica, with nothing twice and nothing missed.
    _, base = await make_served(model="tests.models:counting")
    value = {"n": 200, "fast": 150, "every": 0.05, "gated": True, "tag": "burst"}
    prediction_id = await submit(base, value)
    got: list[tuple[int, Any]] = []
    async with (
        httpx.AsyncClient(base_url=base, timeout=30) as http,
        aconnect_sse(http, "GET", f"/predict/{prediction_id}/events") as src,
    ):
        async for event in src.aiter_sse():
            if event.event == "status" and not got:
                models.release()  # following: now the model may run
            if event.event == "output":
                got.append((int(event.id), json.loads(event.data)))
                if len(got) == 152:
                    break  # dropped mid-run, past the burst
    rest = await events(
        base, "GET", f"/predict/{prediction_id}/events", None, {"Last-Event-ID": "152"}
    )
    got += outputs(rest)
    assert got == [(i + 1, {"n": i}) for i in range(200)], "all, in order, once"
    assert rest[-1][2]["status"] == "done"


async def test_a_malformed_last_event_id_is_a_400(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting", workers=0)
    prediction_id = await submit(base, {"n": 1})
    async with httpx.AsyncClient(base_url=base) as http:
        for bad in ("x", "-1", "1.5", "1e3", "9" * 12):
            resp = await http.get(
                f"/predict/{prediction_id}/events", headers={"Last-Event-ID": bad}
            )
            assert resp.status_code == 400, bad
            assert "Last-Event-ID" in resp.json()["error"]


async def test_an_async_submit_asking_for_events_is_queued_as_usual(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting", workers=0)
    async with httpx.AsyncClient(base_url=base) as http:
        resp = await http.post("/predict", json={"input": {"n": 1}}, headers={**ASYNC, **EVENTS})
    assert resp.status_code == 202 and "prediction_id" in resp.json()


@MODES
async def test_a_queued_stream_that_fails_keeps_its_chunks(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:bad_stream")
    prediction_id = await submit(base, "set")
    seen = await events(base, "GET", f"/predict/{prediction_id}/events")
    assert outputs(seen) == [(1, 1), (2, 2)]
    final = seen[-1][2]
    assert final["status"] == "failed" and "chunk 3 is not JSON: a set" in final["error"]


@pytest.mark.parametrize("execution", ["thread", "process"])
async def test_a_delete_stops_a_running_stream_which_ends_canceled_keeping_its_chunks(
    make_served: Any, execution: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    app, base = await make_served(
        model="tests.models:counting", execution=execution, process_workers=1
    )
    prediction_id = await submit(base, {"n": 1000, "every": 0.05, "tag": "stopped"})

    async def three_made() -> bool:
        return journal.exists() and "yield 2 stopped" in journal.read_text()

    await poll(three_made)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        resp = await http.delete(f"/predict/{prediction_id}")
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "canceled"

    async def closed() -> bool:  # at once, or as its current chunk is made
        return "closed stopped" in journal.read_text()

    await poll(closed)
    lines = journal.read_text().splitlines()
    made = sum(line.startswith("yield") for line in lines)
    assert made < 1000
    seen = await events(base, "GET", f"/predict/{prediction_id}/events")
    assert len(outputs(seen)) >= 3, "the chunks so far stay"
    assert seen[-1][2]["status"] == "canceled"
    if execution == "process":
        (pid,) = {line.split()[-1] for line in lines}
        processes = app[state.EXECUTOR].processes
        assert int(pid) in processes.pids(), "the process was not killed: it closed the stream"


@MODES
async def test_a_cancel_after_stops_a_running_stream(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting")
    prediction_id = await submit(
        base, {"n": 1000, "every": 0.02, "tag": "late"}, {"Cancel-After": "500ms"}
    )
    seen = await events(base, "GET", f"/predict/{prediction_id}/events")
    assert seen[-1][2]["status"] == "canceled"
    assert 0 < len(outputs(seen)) < 1000

    async def closed() -> bool:
        return "late" in models.closed

    await poll(closed)


@MODES
async def test_a_queued_stream_over_the_cap_fails_saying_so(make_served: Any, rds: Any) -> None:
    _, base = await make_served(model="tests.models:counting", max_stream_chunks=3)
    prediction_id = await submit(base, {"n": 10})
    seen = await events(base, "GET", f"/predict/{prediction_id}/events")
    assert [n for n, _ in outputs(seen)] == [1, 2, 3]
    assert "MAX_STREAM_CHUNKS (3)" in seen[-1][2]["error"]
    assert seen[-1][2]["status"] == "failed"


async def test_another_tenant_cannot_follow_a_stream(make_served: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    import hashlib

    lines = []
    for name in ("acme", "umbrella"):
        digest = hashlib.sha256(f"{name}-key".encode()).hexdigest()
        lines += [f"[tenants.{name}]", f'keys = ["{digest}"]']
    keys.write_text("\n".join(lines) + "\n")
    _, base = await make_served(model="tests.models:counting", api_keys_file=str(keys))
    prediction_id = await submit(base, {"n": 2}, {"Authorization": "Bearer acme-key"})
    async with httpx.AsyncClient(base_url=base) as http:
        other = await http.get(
            f"/predict/{prediction_id}/events", headers={"Authorization": "Bearer umbrella-key"}
        )
    assert other.status_code == 404
    seen = await events(
        base, "GET", f"/predict/{prediction_id}/events", None, {"Authorization": "Bearer acme-key"}
    )
    assert [n for n, _ in outputs(seen)] == [1, 2]


# -- the Python client --------------------------------------------------------------------


async def test_the_client_streams_sync_and_queued(make_served: Any) -> None:
    _, base = await make_served(model="tests.models:counting")
    async with AsyncClient(base) as client:
        direct = [c async for c in client.stream({"n": 3}, queued=False)]
        queued = [c async for c in client.stream({"n": 3, "every": 0.05})]
    assert direct == queued == [{"n": 0}, {"n": 1}, {"n": 2}]


async def test_the_client_raises_for_a_stream_that_fails_after_its_chunks(
    make_served: Any,
) -> None:
    _, broken = await make_served(model="tests.models:bad_stream")
    async with AsyncClient(broken) as client:
        got: list[Any] = []
        with pytest.raises(PredictionFailedError, match="the stream broke"):
            async for chunk in client.stream("raise", queued=False):
                got.append(chunk)
        assert got == [1, 2]
        got = []
        with pytest.raises(PredictionFailedError, match="the stream broke"):
            async for chunk in client.stream("raise"):
                got.append(chunk)
        assert got == [1, 2]


async def test_the_client_resumes_a_dropped_stream_on_another_replica(
    make_served: Any, aiohttp_server: Any
) -> None:
    # A proxy in front of two replicas: the first connection is cut after three chunks;
    # the client connects again, and the proxy sends it to the other replica.
    _, first = await make_served(model="tests.models:counting", workers=0)
    _, second = await make_served(model="tests.models:counting", workers=0, consumer_name="b")
    await make_served(model="tests.models:counting", consumer_name="worker")
    asked: list[str] = []

    async def proxy(request: web.Request) -> web.StreamResponse:
        follow = request.path.endswith("/events")
        if follow:
            asked.append(request.headers.get("Last-Event-ID", ""))
        target = first if len(asked) <= 1 else second
        async with aiohttp.ClientSession() as session:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            async with session.request(
                request.method, target + request.path_qs, headers=headers, data=await request.read()
            ) as upstream:
                response = web.StreamResponse(
                    status=upstream.status, headers={"Content-Type": upstream.content_type}
                )
                await response.prepare(request)
                ids = 0
                async for line in upstream.content:
                    await response.write(line)
                    if line.startswith(b"id:"):
                        ids += 1
                    if follow and len(asked) == 1 and ids == 3 and line == b"\n":
                        assert request.transport is not None
                        request.transport.abort()  # the connection drops mid-stream
                        return response
                return response

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", proxy)
    front = await aiohttp_server(app)
    async with AsyncClient(str(front.make_url("")).rstrip("/")) as client:
        chunks = [c async for c in client.stream({"n": 8, "every": 0.05})]
    assert chunks == [{"n": i} for i in range(8)], "every chunk once, in order"
    assert asked == ["", "3"], asked  # the first follow, then the resume after chunk 3


# -- queued streams run beside the reads ----------------------------------------------------


def noted(journal: Path, line: str) -> bool:
    """Whether the test models' journal has ``line`` (see models.counting)."""
    return journal.exists() and line in journal.read_text()


async def status_of(base: str, prediction_id: str) -> str:
    async with httpx.AsyncClient(base_url=base) as http:
        return (await http.get(f"/predict/{prediction_id}")).json()["status"]  # type: ignore[no-any-return]


async def stop(base: str, prediction_id: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.delete(f"/predict/{prediction_id}")).status_code in (200, 202)


async def test_a_short_stream_queued_behind_a_long_one_ends_first(
    make_served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker: it starts the long stream and goes back to reading, so the short one
    # runs (and ends, its record written) while the long one still streams.
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    _, base = await make_served(model="tests.models:counting", workers=1)
    long = await submit(base, {"n": 1000, "every": 0.05, "tag": "long"})
    await poll(lambda: asyncio.to_thread(noted, journal, "yield 0 long"))
    short = await submit(base, {"n": 2, "tag": "short"})

    async def short_done() -> bool:
        return await status_of(base, short) == "done"

    await poll(short_done)
    assert await status_of(base, long) == "processing"
    await stop(base, long)


async def test_a_replica_runs_at_most_stream_threads_queued_streams_at_once(
    make_served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    _, base = await make_served(model="tests.models:counting", workers=2, stream_threads=1)
    jobs = {
        tag: await submit(base, {"n": 1000, "every": 0.02, "tag": tag})
        for tag in ("first", "second")
    }

    def one_runs() -> str:
        # Two workers read one job each: whichever takes the one slot first runs.
        return next((t for t in jobs if noted(journal, f"yield 5 {t}")), "")

    running = await poll(lambda: asyncio.to_thread(one_runs))
    waiting = "second" if running == "first" else "first"
    # Five chunks later, the other still waits in the queue for the only slot.
    assert await status_of(base, jobs[waiting]) == "queued"
    assert waiting not in journal.read_text()
    await stop(base, jobs[running])

    await poll(lambda: asyncio.to_thread(noted, journal, f"yield 0 {waiting}"))
    await stop(base, jobs[waiting])


async def test_a_worker_reading_its_own_pending_entries_never_starts_a_running_stream_again(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rds: Any
) -> None:
    # After a failed step a worker reads its own pending entries first: a streaming job it
    # still runs is one of them, and must not be started a second time.
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    client = await make_client(workers=0, model="tests.models:counting")
    resp = await client.post(
        "/predict", json={"input": {"n": 1000, "every": 0.02, "tag": "once"}}, headers=ASYNC
    )
    prediction_id = (await resp.json())["prediction_id"]
    worker = worker_for(client, "own")
    assert await worker.step() == 0  # own pending: none yet
    assert await worker.step() == 1  # started, beside the reads
    await poll(lambda: asyncio.to_thread(noted, journal, "yield 2 once"))
    worker.consumer.restart()
    assert await worker.step() == 0, "its own pending entry runs already"
    assert journal.read_text().count("yield 0 once") == 1
    assert (await client.delete(f"/predict/{prediction_id}")).status in (200, 202)
    worker.stop()
    await worker.run()  # ends once the stopped stream has ended
    assert await rds.hget(KEYS.record(prediction_id), "status") == b"canceled"


async def test_a_stopping_replica_hands_a_running_stream_back_to_the_queue(
    make_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rds: Any
) -> None:
    # Past the grace period a running stream is stopped and its job goes back on the queue
    # for another replica: not ended 'done' with the chunks so far.
    journal = tmp_path / "journal"
    monkeypatch.setenv("TEST_JOURNAL", str(journal))
    stopping = await make_client(model="tests.models:counting", shutdown_grace_seconds=0.2)
    resp = await stopping.post(
        "/predict", json={"input": {"n": 1000, "every": 0.02, "tag": "cut"}}, headers=ASYNC
    )
    prediction_id = (await resp.json())["prediction_id"]
    await poll(lambda: asyncio.to_thread(noted, journal, "yield 2 cut"))
    await stopping.close()
    assert await rds.hget(KEYS.record(prediction_id), "status") == b"queued"
    assert (await rds.xpending(STREAM, GROUP))["pending"] == 0, "nothing left held"
    assert [f[b"id"].decode() for _, f in await rds.xrange(STREAM)] == [prediction_id]
    await poll(lambda: asyncio.to_thread(noted, journal, "closed cut"))

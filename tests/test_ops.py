"""Operating it: health, metrics, request ids, logs, and a worker-only replica."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.execution.memory import YOUNG_GENERATION_THRESHOLD
from service.job import new_request_id
from service.observability.logs import JsonFormatter, TextFormatter
from service.redis.embedded import free_port

from .helpers import (
    GROUP,
    STREAM,
    ClientFactory,
    figure,
    partitions_of,
    pending,
    poll,
    scrape,
    scrape_until,
    submit,
    wait_final,
    worker_for,
)

ROOT = Path(__file__).resolve().parent.parent


async def test_liveness_and_readiness(make_client: ClientFactory, rds: Redis) -> None:
    client = await make_client(workers=0)  # no worker that would recreate the group
    live = await client.get("/health/live")
    assert live.status == 200 and (await live.json())["status"] == "ok"
    ready = await client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 200, body
    assert body["checks"] == {
        "models": "ok",
        "shutting_down": "no",
        "redis": "ok",
        "writes": "ok",
        "consumer_group": "ok",
    }

    await rds.xgroup_destroy(STREAM, GROUP)
    ready = await client.get("/health/ready")
    body = await ready.json()
    assert ready.status == 503
    assert body["status"] == "unavailable"
    assert "missing" in body["checks"]["consumer_group"]


async def test_queue_figures_cost_the_same_for_any_backlog_and_scrapes_share_them(
    make_client: ClientFactory, rds: Redis
) -> None:
    api = await make_client(workers=0, max_bulk=5000)
    inputs = [f"job {i}" for i in range(5000)]
    assert (await api.post("/predict/batch", json={"inputs": inputs})).status == 202
    await rds.xreadgroup(GROUP, "elsewhere", {STREAM: ">"}, count=7)
    await rds.config_resetstat()
    before = (await rds.info("stats"))["total_net_output_bytes"]
    texts = await asyncio.gather(*(scrape(api) for _ in range(8)))
    sent = (await rds.info("stats"))["total_net_output_bytes"] - before
    assert sent < 20_000, f"Redis sent {sent} bytes for the figures: a copy of the backlog"
    for text in texts:
        assert figure(text, "queue_group_lag") == 4993
        assert figure(text, "queue_pending") == 7
        assert figure(text, "queue_stream_length") == 5000
        assert figure(text, "queue_backlog") == 5000
    stats = await rds.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in stats.items()}
    # One read of each priority's stream (three), whatever the number of scrapes.
    assert calls.get("xinfo|groups", calls.get("xinfo")) == 3, "eight concurrent scrapes, one read"
    # The oldest entry is read with COUNT 1 (the age gauge), never the backlog itself.
    assert calls.get("xrange") == 3
    assert "xrevrange" not in calls and "xreadgroup" not in calls


async def test_queue_figures_move_as_jobs_are_queued_and_done(
    make_client: ClientFactory, rds: Redis
) -> None:
    api = await make_client(workers=0, model="tests.models:echo")
    ids = [await submit(api, i) for i in range(3)]
    text = await scrape(api)
    assert figure(text, "queue_stream_length") == 3
    assert figure(text, "queue_group_lag") == 3
    assert figure(text, "queue_pending") == 0
    assert figure(text, "queue_dead_letters") == 0

    await rds.xreadgroup(GROUP, "slow-consumer", {STREAM: ">"}, count=2)
    await scrape_until(api, queue_group_lag=1, queue_pending=2, queue_stream_length=3)

    worker = await make_client(model="tests.models:echo", visibility_timeout_seconds=0.05)
    for prediction_id in ids:
        assert (await wait_final(api, prediction_id))["status"] == "done"
    text = await scrape_until(api, queue_group_lag=0, queue_pending=0, queue_stream_length=0)
    worker_text = await scrape(worker)
    assert (
        figure(worker_text, "predictions_total", model="default", mode="async", status="done") == 3
    )
    assert figure(worker_text, "model_batch_size_count", model="default") >= 1
    http = figure(text, "http_requests_total", route="/predict", method="POST", status="202")
    assert http == 3


async def test_sync_predictions_and_errors_are_counted(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:Fragile")
    await client.post("/predict", json={"input": "fine"})
    await client.post("/predict", json={"input": "boom"})
    await client.get("/nowhere")
    text = await scrape(client)
    assert figure(text, "predictions_total", model="default", mode="sync", status="done") == 1
    assert figure(text, "predictions_total", model="default", mode="sync", status="failed") == 1
    assert figure(text, "http_requests_total", route="unmatched", method="GET", status="404") == 1
    assert figure(text, "model_batch_duration_seconds_count", model="default") == 2


async def test_every_route_answers_with_a_request_id_and_is_counted(
    make_client: ClientFactory,
) -> None:
    # The wrapper is put on each registered handler, aiohttp-swagger3's own routes too (the
    # page, its spec, its static files): none may answer without an id or a metric.
    client = await make_client(model="tests.models:echo")
    page = await client.get("/docs/")
    assert page.status == 200 and page.headers["X-Request-ID"]
    spec = await client.get("/docs/swagger.json")
    assert spec.status == 200 and spec.headers["X-Request-ID"]
    statics = [
        r.resource.canonical
        for r in client.server.app.router.routes()
        if r.resource is not None and r.resource.canonical.endswith("_static")
    ]
    assert statics
    # (aiohttp finds a static file missing only as it sends it: that 404 is not JSON.)
    missing = await client.get(statics[0] + "/no-such-file.js")
    assert missing.status == 404 and missing.headers["X-Request-ID"]
    wrong = await client.put("/health/live")
    assert wrong.status == 405 and wrong.headers["Allow"] == "GET"
    assert "error" in await wrong.json() and wrong.headers["X-Request-ID"]
    text = await scrape(client)
    assert figure(text, "http_requests_total", route="/docs/", method="GET", status="200") == 1
    json_spec = figure(
        text, "http_requests_total", route="/docs/swagger.json", method="GET", status="200"
    )
    assert json_spec == 1
    assert figure(text, "http_requests_total", route="unmatched", method="PUT", status="405") == 1


async def test_request_id_is_taken_or_made_and_carried_into_the_job(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(model="tests.models:echo")
    made = await client.get("/health/live")
    assert uuid.UUID(made.headers["X-Request-ID"])
    bad = await client.get("/health/live", headers={"X-Request-ID": "no spaces allowed"})
    assert bad.headers["X-Request-ID"] != "no spaces allowed"

    caplog.set_level(logging.INFO)
    resp = await client.post(
        "/predict", json={"input": 1}, headers={"Async-Mode": "true", "X-Request-ID": "req-42"}
    )
    assert resp.headers["X-Request-ID"] == "req-42"
    record = await wait_final(client, (await resp.json())["prediction_id"])
    assert record["request_id"] == "req-42"

    def job_line_logged() -> bool:
        return any(
            getattr(r, "request_id", None) == "req-42" and getattr(r, "outcome", None) == "done"
            for r in caplog.records
        )

    async def logged() -> bool:
        return job_line_logged()

    await poll(logged)
    access = [r for r in caplog.records if r.name == "service.access" and r.request_id == "req-42"]
    assert access and access[0].status == 202 and access[0].path == "/predict"


async def test_each_job_logs_one_line_failures_at_warning_the_rest_at_info(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(workers=0, model="tests.models:Fragile")
    worker = worker_for(client, "w")

    async def run(*ids: str) -> list[dict[str, Any]]:
        async def final() -> list[dict[str, Any]] | None:
            await worker.step()
            records = [await (await client.get(f"/predict/{i}")).json() for i in ids]
            return records if all(r["status"] in ("done", "failed") for r in records) else None

        return await poll(final)  # type: ignore[no-any-return]

    def lines(prediction_id: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "prediction_id", "") == prediction_id]

    # At WARNING (a quiet log) only the failure is written, with the fields to find it by.
    caplog.set_level(logging.WARNING, logger="service.jobs.worker")
    fine, boom = await submit(client, "fine"), await submit(client, "boom")
    done, failed = await run(fine, boom)
    assert (done["status"], failed["status"]) == ("done", "failed")
    assert lines(fine) == []
    (line,) = lines(boom)
    message = f"job {boom} failed: {failed['error']}"
    assert (line.levelno, line.getMessage()) == (logging.WARNING, message)
    assert (line.outcome, line.model, line.consumer) == ("failed", "default", "w")
    # At INFO a job that went well has its line too.
    caplog.set_level(logging.INFO, logger="service.jobs.worker")
    more = await submit(client, "more")
    await run(more)
    (line,) = lines(more)
    assert (line.levelno, line.getMessage()) == (logging.INFO, f"job {more} done")
    assert (line.outcome, line.model, line.consumer) == ("done", "default", "w")


def test_made_request_ids_are_distinct_uuids_and_differ_between_processes() -> None:
    ids = [new_request_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert {uuid.UUID(i).version for i in ids} == {4}
    elsewhere = subprocess.run(
        [sys.executable, "-c", "from service.job import new_request_id; print(new_request_id())"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert uuid.UUID(elsewhere).version == 4
    assert elsewhere[:24] != ids[0][:24]  # another replica: another prefix


def test_after_start_up_young_collections_are_rarer_and_the_rest_untouched() -> None:
    code = (
        "import gc, json; before = gc.get_threshold()\n"
        "from service.execution.memory import release_freed_memory; release_freed_memory()\n"
        "print(json.dumps([before, gc.get_threshold(), gc.get_freeze_count() > 0]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    before, after, frozen = json.loads(out)
    # The young generation's threshold is ours; the older ones stay as this Python has them.
    assert after == [YOUNG_GENERATION_THRESHOLD, *before[1:]]
    assert frozen


def test_json_log_lines_carry_the_fields() -> None:
    record = logging.LogRecord(
        "service.access", logging.INFO, __file__, 1, "POST /predict", (), None
    )
    record.request_id = "abc"
    record.status = 200
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "POST /predict"
    assert line["request_id"] == "abc" and line["status"] == 200 and line["level"] == "INFO"
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", line["time"])


async def test_a_worker_only_replica_processes_jobs_without_a_port(
    make_client: ClientFactory, redis_url: str
) -> None:
    api = await make_client(workers=0)
    prediction_id = await submit(api, "Workers without a web server work fine")
    port = free_port()  # what it would listen on, if it served HTTP
    env = {**os.environ, "REDIS_URL": redis_url, "SERVE_HTTP": "false", "PORT": str(port)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "service", cwd=ROOT, env=env)
    try:
        record = await wait_final(api, prediction_id)
        assert record["status"] == "done"
        # It did the work, and nothing listens on its port.
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert proc.returncode is None, "still running"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0


def test_text_log_lines_cannot_be_forged_through_a_request_path() -> None:
    record = logging.LogRecord(
        "service.access",
        logging.INFO,
        __file__,
        1,
        "%s %s %d",
        ("GET", "/predict/x\n2026-01-01 00:00:00 ERROR service: forged\r\u2028", 404),
        None,
    )
    line = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert "\n" not in line and "\r" not in line and "\u2028" not in line
    assert line == (
        "INFO service.access: GET /predict/x\\n2026-01-01 00:00:00 ERROR service: forged"
        "\\r\\u2028 404"
    )
    # A traceback keeps its lines.
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert "\nValueError: boom" in TextFormatter().format(record)


@pytest.mark.modes("single", "cluster")
async def test_scaling_signals_count_the_backlog_by_model_and_partition(
    make_client: ClientFactory, rds: Redis
) -> None:
    """queue_backlog (waiting + pending, a total), queue_backlog_by_model{model,partition}
    and queue_oldest_job_age_seconds: what an autoscaler reads."""
    api = await make_client(
        workers=0, model="tests.models:echo", models="other=tests.models:echo", queue_partitions=2
    )
    headers = {"Async-Mode": "true"}
    for i in range(5):
        assert (await api.post("/predict", json={"input": i}, headers=headers)).status == 202
    for i in range(3):
        resp = await api.post("/models/other/predict", json={"input": i}, headers=headers)
        assert resp.status == 202
    text = await scrape(api)
    assert figure(text, "queue_backlog") == 8
    by_model: dict[str, float] = {}
    for partition in ("0", "1"):
        for model in ("default", "other"):
            try:
                value = figure(text, "queue_backlog_by_model", model=model, partition=partition)
            except AssertionError:
                continue  # no job of that model landed in that partition
            by_model[model] = by_model.get(model, 0) + value
    assert by_model == {"default": 5, "other": 3}
    assert figure(text, "queue_oldest_job_age_seconds") >= 0

    # Delivered but not acked still counts (KEDA's pendingEntriesCount alone misses the
    # rest, lag alone misses these).
    for keys in partitions_of(api).all:
        await rds.xreadgroup(keys.group, "slow", {keys.stream: ">"}, count=1)
    delivered = await pending(rds, api)
    assert delivered >= 1
    await scrape_until(api, queue_backlog=8, queue_pending=delivered)

    async def aged() -> bool:
        return figure(await scrape(api), "queue_oldest_job_age_seconds") >= 1

    await poll(aged)

    await make_client(
        model="tests.models:echo",
        models="other=tests.models:echo",
        queue_partitions=2,
        visibility_timeout_seconds=0.05,
    )
    text = await scrape_until(api, queue_backlog=0, queue_oldest_job_age_seconds=0)
    assert "queue_backlog_by_model{" not in text, "a drained model leaves the figures"

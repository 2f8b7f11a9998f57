"""Webhooks against a real local HTTP receiver: signed, filtered, retried, SSRF-guarded,
and still delivered after the replica that finished the job stops."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import pytest
from aiohttp import web
from redis.asyncio import Redis

from service.client import AsyncClient
from service.job import stream_entries
from service.jobs.webhooks import PublicResolver, non_public, sign, verify

from .helpers import KEYS, STREAM, ClientFactory, poll, wait_final

SECRET = "webhook-secret"


class Receiver:
    """A real HTTP server on loopback that records what it is sent."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], bytes]] = []
        self.times: list[float] = []
        self.answers: list[int] = []  # statuses to answer, in order; then `otherwise`
        self.otherwise = 200
        self.held = 0  # POSTs to /slow being held until `release` is set
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((dict(request.headers), await request.read()))
        self.times.append(time.time())
        status = self.answers.pop(0) if self.answers else self.otherwise
        return web.json_response({"ok": status == 200}, status=status)

    async def slow(self, request: web.Request) -> web.Response:
        self.held += 1
        await self.release.wait()
        return web.json_response({"ok": True})

    async def redirect(self, request: web.Request) -> web.Response:
        self.times.append(time.time())
        raise web.HTTPTemporaryRedirect("/hook")


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[Receiver, str]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    app.router.add_post("/moved", rec.redirect)
    app.router.add_post("/slow", rec.slow)
    server = await aiohttp_server(app)
    return rec, str(server.make_url("/hook"))


def hook_settings(**more: Any) -> dict[str, Any]:
    return {
        "model": "tests.models:echo",
        "webhook_secret": SECRET,
        "webhook_allow_private": True,  # the receiver is on loopback
        "webhook_retry_seconds": 0.2,
        **more,
    }


async def settled(rds: Redis) -> None:
    """Waits until no delivery is left anywhere: acked and deleted from the stream, none
    pending in the dispatchers' group, none waiting for a retry."""

    async def nothing_left() -> bool:
        groups = await rds.xinfo_groups(KEYS.webhooks) if await rds.exists(KEYS.webhooks) else []
        if not groups:  # no dispatcher has started reading yet
            return False
        left = await rds.xlen(KEYS.webhooks)
        pending = (await rds.xpending(KEYS.webhooks, "webhooks"))["pending"]
        retries = await rds.zcard(KEYS.webhook_retries)
        return (left, pending, retries) == (0, 0, 0)

    await poll(nothing_left)


async def finished_undelivered(make_client: ClientFactory, url: str) -> str:
    """A job done by a replica that sends no webhooks itself: its delivery waits in Redis."""
    first = await make_client(**hook_settings(webhook_deliveries=0))
    prediction_id = await submit_with_hook(first, url)
    assert (await wait_final(first, prediction_id))["status"] == "done"
    return prediction_id


async def submit_with_hook(client: Any, url: str, **extra: Any) -> str:
    resp = await client.post(
        "/predict", json={"input": 7, "webhook": url, **extra}, headers={"Async-Mode": "true"}
    )
    assert resp.status == 202, await resp.text()
    return (await resp.json())["prediction_id"]  # type: ignore[no-any-return]


async def test_the_final_record_is_posted_signed(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    client = await make_client(**hook_settings())
    prediction_id = await submit_with_hook(client, url)

    async def delivered() -> bool:
        return bool(rec.calls)

    await poll(delivered)
    await settled(rds)  # a 2xx delivery is acked and deleted
    assert len(rec.calls) == 1
    headers, body = rec.calls[0]
    timestamp, signature = headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"]
    assert signature == sign(SECRET, timestamp, body)
    assert verify(SECRET, timestamp, signature, body)
    assert not verify(SECRET, timestamp, signature, body + b" ")
    assert not verify("another secret", timestamp, signature, body)
    old = str(int(timestamp) - 3600)
    assert not verify(SECRET, old, sign(SECRET, old, body), body), "an old delivery replayed"
    assert not verify(SECRET, "soon", sign(SECRET, "soon", body), body), "a malformed timestamp"
    # The window is five minutes: 298 s (and a fraction) old passes, 300 s and a fraction not.
    for age, fresh in ((298, True), (300, False)):
        then = str(int(time.time()) - age)
        assert verify(SECRET, then, sign(SECRET, then, body), body) is fresh, age
    assert headers["X-Prediction-ID"] == prediction_id
    record = json.loads(body)
    assert record["status"] == "done" and record["output"]["result"] == {"echo": 7}
    # The record says what became of its post (the dashboard's timeline shows it).
    job = await (await client.get(f"/dashboard/api/jobs/{prediction_id}")).json()
    assert (job["webhook_status"], job["webhook"]) == ("delivered", url)
    assert job["timeline"][-1]["event"] == "webhook delivered (attempt 1)"


async def test_a_job_that_times_out_before_running_is_posted_as_failed(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    # mark.lua ends it, not finish.lua: its webhook is sent all the same.
    rec, url = receiver
    client = await make_client(**hook_settings(workers=0, job_timeout_seconds=5))
    prediction_id = await submit_with_hook(client, url)
    await rds.hset(KEYS.record(prediction_id), "created_at", "1000.0")  # long ago
    await make_client(**hook_settings(job_timeout_seconds=5))  # a replica that works

    async def delivered() -> bool:
        return bool(rec.calls)

    await poll(delivered)
    record = json.loads(rec.calls[0][1])
    assert record["status"] == "failed" and record["error"].startswith("timed out")
    assert record["prediction_id"] == prediction_id


async def test_a_failed_delivery_is_retried_until_it_lands(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.answers = [500, 300]  # a 3xx is not a delivery either (redirects are not followed)
    client = await make_client(**hook_settings())
    await submit_with_hook(client, url)

    async def landed() -> bool:
        return len(rec.calls) >= 3

    await poll(landed)
    await settled(rds)  # landed: nothing left to send or to retry
    assert len(rec.calls) == 3, "two failures, then one delivery, and no more"
    assert len({body for _, body in rec.calls}) == 1, "the same record each time"


async def test_a_slow_receiver_does_not_hold_back_the_next_deliveries(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    client = await make_client(**hook_settings(webhook_deliveries=4))
    await submit_with_hook(client, url.replace("/hook", "/slow"))

    async def held() -> bool:
        return rec.held == 1

    await poll(held)
    fast = [await submit_with_hook(client, url) for _ in range(3)]

    async def delivered() -> bool:
        return len(rec.calls) == 3

    await poll(delivered)  # while the first POST is still held
    assert rec.held == 1 and not rec.release.is_set()
    assert {headers["X-Prediction-ID"] for headers, _ in rec.calls} == set(fast)
    rec.release.set()


async def test_a_receiver_at_an_ipv6_address_is_posted_to(
    make_client: ClientFactory, aiohttp_server: Any
) -> None:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    server = await aiohttp_server(app, host="::1")
    url = f"http://[::1]:{server.port}/hook"
    client = await make_client(**hook_settings(webhook_allowed_hosts="[::1]"))
    prediction_id = await submit_with_hook(client, url)

    async def delivered() -> bool:
        return bool(rec.calls)

    await poll(delivered)
    assert rec.calls[0][0]["X-Prediction-ID"] == prediction_id


async def test_events_filter_which_outcomes_are_posted(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    _, url = receiver
    # No dispatcher here, so the deliveries the finish script queues stay in the stream.
    client = await make_client(**hook_settings(webhook_deliveries=0))
    skipped = await submit_with_hook(client, url, webhook_events=["failed"])
    assert (await wait_final(client, skipped))["status"] == "done"
    assert await rds.xlen(KEYS.webhooks) == 0, "done is not among its events"
    posted = await submit_with_hook(client, url, webhook_events=["done"])
    assert (await wait_final(client, posted))["status"] == "done"
    entries = await rds.xrange(KEYS.webhooks)
    assert [f[b"key"] for _, f in entries] == [KEYS.record(posted).encode()]


async def test_a_delivery_survives_the_replica_that_finished_the_job(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.answers = [503]
    first = await make_client(**hook_settings(consumer_name="first"))
    await submit_with_hook(first, url)

    async def tried() -> bool:
        return bool(rec.calls)

    await poll(tried)
    await first.close()  # gone, with its delivery unacknowledged in Redis
    assert len(rec.calls) == 1
    await make_client(**hook_settings(consumer_name="second"))

    async def delivered() -> bool:
        return len(rec.calls) == 2

    await poll(delivered)
    assert json.loads(rec.calls[1][1])["status"] == "done"
    await settled(rds)


async def test_deliveries_with_nothing_to_send_are_dropped(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    # An entry this service did not write, and one whose record expired before it was
    # sent: both are acked and deleted, nothing is posted for them, and deliveries go on.
    rec, url = receiver
    client = await make_client(**hook_settings())

    async def delivered(count: int) -> bool:
        return len(rec.calls) == count

    await submit_with_hook(client, url)
    await poll(lambda: delivered(1))  # the dispatcher's group is there
    await rds.xadd(KEYS.webhooks, {"note": "not a delivery"})
    gone = KEYS.record("00000000-0000-4000-8000-000000000000")
    await rds.xadd(KEYS.webhooks, {"key": gone, "attempt": 1})
    await settled(rds)
    await submit_with_hook(client, url)
    await poll(lambda: delivered(2))
    await settled(rds)
    assert len(rec.calls) == 2


def test_only_globally_routable_addresses_count_as_public() -> None:
    public = ("8.8.8.8", "2001:4860:4860::8888", "2002:808:808::1", "::ffff:8.8.8.8")
    for address in (*public, "64:ff9b::808:808"):  # the last: 8.8.8.8 behind NAT64
        assert not non_public(address), address


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1:9/hook", "non-public address"),
        ("http://localhost/hook", "non-public address"),
        ("http://169.254.169.254/latest/meta-data", "non-public address"),
        ("http://[::1]:9/hook", "non-public address"),
        ("http://[fe80::1]/hook", "non-public address"),
        ("http://[::ffff:127.0.0.1]/hook", "non-public address"),
        ("http://100.100.100.200/latest/meta-data", "non-public address"),  # carrier-grade NAT
        ("http://100.64.0.1/hook", "non-public address"),
        ("http://198.18.0.1/hook", "non-public address"),  # benchmarking
        ("http://192.0.2.10/hook", "non-public address"),  # documentation
        ("http://[2002:7f00:1::1]/hook", "non-public address"),  # 6to4 of 127.0.0.1
        ("http://[2002:a9fe:a9fe::1]/hook", "non-public address"),  # 6to4 of 169.254.169.254
        ("http://[64:ff9b::a9fe:a9fe]/hook", "non-public address"),  # NAT64 of the same
        ("http://[fec0::1]/hook", "non-public address"),  # site-local
        ("http://[ff02::1]/hook", "non-public address"),  # multicast
        ("http://224.0.0.1/hook", "non-public address"),
        ("http://[1:2:3:4:5:6:7:8:9]/hook", "string_pattern_mismatch"),
        ("ftp://example.com/hook", "string_pattern_mismatch"),
        ("http://no-such-host.invalid/hook", "does not resolve"),
    ],
)
async def test_private_and_non_http_urls_are_refused(
    make_client: ClientFactory, rds: Redis, url: str, why: str
) -> None:
    client = await make_client(workers=0)
    resp = await client.post(
        "/predict", json={"input": "x", "webhook": url}, headers={"Async-Mode": "true"}
    )
    assert resp.status == 422
    body = await resp.json()
    assert body["detail"][0]["loc"][0] == "webhook"
    assert why in json.dumps(body)
    if why != "string_pattern_mismatch":  # the schema passed it; the URL check refused it
        assert body["error"] == "The webhook URL is not accepted."
    assert await rds.xlen(STREAM) == 0


async def test_a_sync_request_with_a_webhook_is_answered_and_posted(
    make_client: ClientFactory, receiver: tuple[Receiver, str], rds: Redis
) -> None:
    rec, url = receiver
    client = await make_client(**hook_settings(workers=0))
    resp = await client.post("/predict", json={"input": "now", "webhook": url})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["result"] == {"echo": "now"}
    prediction_id = answer["prediction_id"]
    await poll(lambda: _delivered(rec, 1))
    headers, body = rec.calls[0]
    assert headers["X-Prediction-ID"] == prediction_id
    assert verify(SECRET, headers["X-Webhook-Timestamp"], headers["X-Webhook-Signature"], body)
    posted = json.loads(body)
    assert (posted["status"], posted["output"]) == (
        "done",
        {"input": "now", "result": answer["result"]},
    )
    kept = await (await client.get(f"/predict/{prediction_id}")).json()
    assert kept == posted
    # Only the events it names: a done job with events [failed] is not posted.
    quiet = await client.post(
        "/predict", json={"input": "x", "webhook": url, "webhook_events": ["failed"]}
    )
    assert quiet.status == 200
    await settled(rds)
    assert len(rec.calls) == 1


async def test_a_running_stream_posts_its_chunks_so_far_then_its_final_record(
    make_client: ClientFactory, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    client = await make_client(
        **hook_settings(model="tests.models:counting", stream_webhook_interval_seconds=0.1)
    )
    body = {
        "input": {"n": 8, "every": 0.05},
        "webhook": url,
        "webhook_events": ["output", "done"],
    }
    resp = await client.post("/predict", json=body, headers={"Async-Mode": "true"})
    prediction_id = (await resp.json())["prediction_id"]
    assert (await wait_final(client, prediction_id))["status"] == "done"

    async def final_posted() -> bool:
        return any(json.loads(b)["status"] == "done" for _, b in rec.calls)

    await poll(final_posted)
    posts = [json.loads(body) for _, body in rec.calls]
    interim = [p for p in posts if p["status"] == "processing"]
    assert 1 <= len(interim) <= 5, "at most one post every 0.1 s of a 0.4 s stream"
    for post in interim:  # the chunks so far: a beginning of the whole output, in order
        made = post["output"]["result"]
        assert made == [{"n": i} for i in range(len(made))]
    assert posts[-1]["output"]["result"] == [{"n": i} for i in range(8)]
    assert all(h["X-Prediction-ID"] == prediction_id for h, _ in rec.calls)


async def _delivered(rec: Receiver, count: int) -> bool:
    return len(rec.calls) >= count


async def test_a_webhook_needs_an_allowed_host(make_client: ClientFactory) -> None:
    client = await make_client(workers=0, webhook_allowed_hosts="hooks.example.com")
    sync = await client.post(
        "/predict", json={"input": "x", "webhook": "http://elsewhere.example.com/h"}
    )
    assert sync.status == 422
    other = await client.post(
        "/predict",
        json={"input": "x", "webhook": "http://elsewhere.example.com/h"},
        headers={"Async-Mode": "true"},
    )
    assert other.status == 422
    answer = await other.json()
    assert answer["error"] == "The webhook URL is not accepted."
    assert "WEBHOOK_ALLOWED_HOSTS" in json.dumps(answer)
    # A list of hosts: each one in it is allowed.
    anywhere = await make_client(
        workers=0, webhook_allow_private=True, webhook_allowed_hosts="hooks.example.com, 127.0.0.1"
    )
    for scheme in ("https", "http"):
        resp = await anywhere.post(
            "/predict",
            json={"input": "x", "webhook": f"{scheme}://127.0.0.1:9/h"},
            headers={"Async-Mode": "true"},
        )
        assert resp.status == 202, scheme


async def test_a_delivery_refused_by_policy_at_delivery_is_dropped_not_retried(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    # The job was submitted while its webhook's host was allowed; the replica that delivers
    # allows only another host (settings changed): the delivery is dropped, not retried.
    rec, url = receiver
    await finished_undelivered(make_client, url)
    await make_client(**hook_settings(consumer_name="strict", webhook_allowed_hosts="x.example"))
    await settled(rds)
    assert rec.calls == []


async def test_an_idempotency_key_reused_with_another_webhook_is_a_conflict(
    make_client: ClientFactory,
) -> None:
    client = await make_client(**hook_settings(workers=0, webhook_deliveries=0))
    key = {"Async-Mode": "true", "Idempotency-Key": "order-18"}

    async def post(body: dict[str, Any]) -> Any:
        return await client.post("/predict", json={"input": 7, **body}, headers=key)

    first = await post({"webhook": "http://127.0.0.1:9/a"})
    assert first.status == 202
    same = await post({"webhook": "http://127.0.0.1:9/a"})
    assert (await same.json())["prediction_id"] == (await first.json())["prediction_id"]
    for other in (
        {"webhook": "http://127.0.0.1:9/b"},
        {"webhook": "http://127.0.0.1:9/a", "webhook_events": ["failed"]},
        {"input": 8, "webhook": "http://127.0.0.1:9/a"},  # the same webhook, another input
        {},
    ):
        resp = await post(other)
        assert resp.status == 409, other


async def retry_delay(rds: Redis, attempt: int, rec: Receiver) -> float:
    """How long after the failed POST before ``attempt`` it is scheduled (read from Redis)."""

    async def scheduled() -> list[tuple[bytes, float]]:
        found = await rds.zrange(KEYS.webhook_retries, 0, -1, withscores=True)
        return [(m, score) for m, score in found if b"|%d|" % attempt in m]

    (_, due), *_ = await poll(scheduled)
    return due - rec.times[-1]


async def test_retries_back_off_and_are_kept_in_redis(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.answers = [500, 500, 500]
    client = await make_client(**hook_settings(webhook_retry_seconds=0.5))
    await submit_with_hook(client, url)
    second = await retry_delay(rds, 2, rec)
    third = await retry_delay(rds, 3, rec)
    fourth = await retry_delay(rds, 4, rec)
    assert 0.4 < second < 0.6
    assert 1.8 < third / second < 2.2 and 1.8 < fourth / third < 2.2

    async def landed() -> bool:
        return len(rec.calls) == 4

    await poll(landed)


async def test_a_delivery_is_given_up_after_the_max_age(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    rec.otherwise = 500  # never succeeds
    client = await make_client(
        **hook_settings(webhook_retry_seconds=0.1, webhook_max_age_seconds=1.0)
    )
    prediction_id = await submit_with_hook(client, url)

    async def retrying() -> Any:
        fields = await rds.hmget(KEYS.record(prediction_id), "webhook_status", "webhook_attempts")
        return fields if fields[0] == b"retrying" else None

    assert (await poll(retrying))[1] in (b"1", b"2")

    async def given_up() -> bool:
        pending = await rds.zcard(KEYS.webhook_retries) + await rds.xlen(KEYS.webhooks)
        return len(rec.calls) >= 2 and pending == 0

    await poll(given_up)
    # Tries at about 0, 0.1, 0.3 and 0.7 s; the next (1.5 s) would be past the max age.
    assert 3 <= len(rec.calls) <= 4
    assert rec.times[-1] - rec.times[0] < 1.0
    status, attempts = await rds.hmget(
        KEYS.record(prediction_id), "webhook_status", "webhook_attempts"
    )
    assert (status, int(attempts)) == (b"given up", len(rec.calls))


async def test_redirects_are_not_followed(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    client = await make_client(**hook_settings())
    await submit_with_hook(client, url.replace("/hook", "/moved"))
    await retry_delay(rds, 2, rec)  # a 307 is not a delivery: it is retried
    assert rec.calls == [], "the redirect target was never posted to"


async def test_the_client_submits_a_webhook(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    server = await make_client(**hook_settings())
    async with AsyncClient(str(server.make_url(""))) as client:
        job = await client.submit(3, webhook=url, webhook_events=["done"])
        assert await job.result(timeout=10) == {"echo": 3}

    async def delivered() -> bool:
        return bool(rec.calls)

    await poll(delivered)
    assert rec.calls[0][0]["X-Prediction-ID"] == job.prediction_id
    await settled(rds)


async def test_delivery_connections_refuse_names_of_private_addresses() -> None:
    resolver = PublicResolver()
    try:
        with pytest.raises(OSError, match="'localhost' resolves to a non-public"):
            await resolver.resolve("localhost", 80, socket.AF_INET)
        # A public address passes as it was asked for: its host, port and family (numeric
        # hosts, so no DNS query leaves the machine).
        for host, family in (("93.184.216.34", socket.AF_INET), ("2606:4700::1", socket.AF_INET6)):
            found = await resolver.resolve(host, 443, family)
            assert [(r["host"], r["port"], r["family"]) for r in found] == [(host, 443, family)]
    finally:
        await resolver.close()


async def test_a_delivery_left_mid_post_is_taken_over(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    prediction_id = await finished_undelivered(make_client, url)
    # A dispatcher that read the delivery and died before it posted or acked it.
    await rds.xgroup_create(KEYS.webhooks, "webhooks", id="0", mkstream=True)
    taken = await rds.xreadgroup("webhooks", "gone", {KEYS.webhooks: ">"}, count=10)
    assert len(stream_entries(taken)) == 1
    await make_client(**hook_settings(consumer_name="second", webhook_timeout_seconds=0.1))

    async def delivered() -> bool:
        return bool(rec.calls)

    await poll(delivered)
    assert rec.calls[0][0]["X-Prediction-ID"] == prediction_id
    await settled(rds)


async def test_a_bulk_submit_webhook_covers_every_job(
    make_client: ClientFactory, rds: Redis, receiver: tuple[Receiver, str]
) -> None:
    rec, url = receiver
    client = await make_client(**hook_settings())
    resp = await client.post("/predict/batch", json={"inputs": [1, 2], "webhook": url})
    assert resp.status == 202, await resp.text()
    ids = (await resp.json())["prediction_ids"]

    async def both() -> bool:
        return len(rec.calls) == 2

    await poll(both)
    assert sorted(h["X-Prediction-ID"] for h, _ in rec.calls) == sorted(ids)
    await settled(rds)
    refused = await client.post("/predict/batch", json={"inputs": [1], "webhook": "ftp://x/y"})
    assert refused.status == 422
    assert (await refused.json())["detail"][0]["loc"] == ["webhook"]
    private = await (await make_client(workers=0)).post(
        "/predict/batch", json={"inputs": [1], "webhook": "http://127.0.0.1:9/h"}
    )
    assert private.status == 422, "the host policy applies to bulk submits too"
    assert len(await rds.keys(KEYS.record("*"))) == 2, "nothing refused was recorded"


async def test_a_host_that_does_not_resolve_at_delivery_is_retried_not_dropped(
    make_client: ClientFactory, rds: Redis
) -> None:
    # Accepted at submit (a replica that allows any host), then delivered by a replica that
    # checks DNS, which fails: a passing DNS fault must not drop the delivery for good.
    submitter = await make_client(**hook_settings(webhook_deliveries=0, consumer_name="a"))
    prediction_id = await submit_with_hook(submitter, "http://no-such-host.invalid/hook")
    assert (await wait_final(submitter, prediction_id))["status"] == "done"
    await make_client(**hook_settings(webhook_allow_private=False, consumer_name="b"))

    async def waiting_for_retry() -> bool:
        return bool(await rds.zrange(KEYS.webhook_retries, 0, -1))

    await poll(waiting_for_retry)
    member = (await rds.zrange(KEYS.webhook_retries, 0, -1))[0]
    assert member.startswith(f"{KEYS.record(prediction_id)}|2|".encode())

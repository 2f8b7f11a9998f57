"""Webhook delivery: a dispatcher task per replica posts final records, retrying with backoff.

A delivery is a stream entry (`<stream>:webhooks`, one per partition) written by the same
script that writes a job's final record, so none is lost between the two. Dispatchers read
each partition's stream through their own consumer group. A delivery answered 2xx is acked
and deleted. A failed one is moved, in one script call, to a sorted set scored by when to
try again (the wait doubles from WEBHOOK_RETRY_SECONDS up to `MAX_BACKOFF` seconds), and
each dispatcher moves due entries back into the stream; after WEBHOOK_MAX_AGE_SECONDS it
is given up. An entry whose dispatcher stopped mid-POST is claimed by another one after
`STUCK_FACTOR` HTTP timeouts. Delivery is therefore at least once: receivers should
deduplicate on X-Prediction-ID.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from service.errors import InvalidInput
from service.job import prediction_view, stream_entries
from service.jobs.store import ResultStore
from service.jobs.webhooks import Policy, PublicResolver, Unresolved, check_url, sign
from service.observability.tracing import Tracing
from service.redis.calls import Scripts
from service.redis.calls.outputs import read as read_chunks
from service.redis.calls.webhooks import release_due, settle
from service.redis.connection import REDIS_FAILURES, stream_gone
from service.redis.keys import Keys, Partitions

log = logging.getLogger(__name__)

GROUP = "webhooks"
MAX_BACKOFF = 600.0
STUCK_FACTOR = 3
MAX_BLOCK = 0.5


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    """A dispatcher's settings: its consumer ``name`` in the deliveries' groups, ``at_once``
    POSTs at most (WEBHOOK_DELIVERIES), the ``secret`` that signs them (WEBHOOK_SECRET),
    how long one may take (``timeout``), the first wait before a retry (doubling each
    time), when one is given up (``max_age``, from its first try), and where they may go."""

    name: str
    at_once: int = 16
    secret: str | None = None
    timeout: float = 10.0
    retry: float = 5.0
    max_age: float = 3600.0
    policy: Policy = field(default_factory=Policy)


class Dispatcher:
    """Posts due deliveries, at most WEBHOOK_DELIVERIES at a time; a slot that frees up is
    filled at once (a slow receiver holds its own slot, not the next deliveries)."""

    def __init__(
        self,
        redis: Redis,
        scripts: Scripts,
        partitions: Partitions,
        results: ResultStore,
        settings: DeliverySettings,
        tracing: Tracing | None = None,
    ) -> None:
        self._redis = redis
        self._scripts = scripts
        self._tracing = tracing
        self._partitions = partitions
        self._results = results
        self._settings = settings
        self._consumer = settings.name
        self._stopping = asyncio.Event()
        self._warned_unsigned = False
        self._next_reclaim: dict[int, float] = {}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        timeout = self._settings.timeout
        connector = aiohttp.TCPConnector(
            resolver=None if self._settings.policy.allow_private else PublicResolver()
        )
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as http:
            sending: set[asyncio.Task[None]] = set()
            try:
                # One loop per partition, sharing the slots of WEBHOOK_DELIVERIES.
                await asyncio.gather(
                    *(self._dispatch(keys, http, sending) for keys in self._partitions.all)
                )
                # Stopping: the deliveries under way may finish (within the app's grace).
                await asyncio.gather(*sending, return_exceptions=True)
            finally:
                for task in sending:
                    task.cancel()
                await asyncio.gather(*sending, return_exceptions=True)

    async def _dispatch(
        self, keys: Keys, http: aiohttp.ClientSession, sending: set[asyncio.Task[None]]
    ) -> None:
        while not self._stopping.is_set():
            free = self._settings.at_once - len(sending)
            if free <= 0:
                await asyncio.wait(sending, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                entries = await self._next_entries(keys, free, busy=bool(sending))
            except REDIS_FAILURES as exc:
                log.warning("webhook dispatcher: %s; trying again in 1 s", exc)
                await asyncio.sleep(1)
                continue
            except Exception:  # a bug must not end deliveries for good
                log.exception("webhook dispatcher failed; trying again in 1 s")
                await asyncio.sleep(1)
                continue
            for entry_id, fields in entries:
                task = asyncio.create_task(self._send(http, keys, entry_id, fields))
                sending.add(task)
                task.add_done_callback(sending.discard)

    async def _send(
        self, http: aiohttp.ClientSession, keys: Keys, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        """One delivery in its own task; an error leaves the entry pending, and another
        dispatcher (or this one) claims it once it has been idle for the stuck time."""
        try:
            await self._deliver(http, keys, entry_id, fields)
        except REDIS_FAILURES as exc:
            log.warning("webhook delivery %s: %s; left pending", entry_id.decode(), exc)
        except Exception:
            log.exception("webhook delivery %s failed; left pending", entry_id.decode())

    async def _next_entries(
        self, keys: Keys, count: int, busy: bool = False
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        """Up to ``count`` deliveries: stuck ones first, else new ones (waiting up to
        MAX_BLOCK, or until the next retry is due). While deliveries are ``busy`` it waits
        no longer than the first retry's wait: a retry one of them schedules meanwhile is
        never due before this wait ends, so it is released on time."""
        now = time.time()
        next_due = await release_due(self._scripts, keys, now, self._settings.at_once)
        # Wake for the next retry on time, or after at most half a second.
        block = MAX_BLOCK if next_due is None else min(MAX_BLOCK, max(0.01, next_due - now))
        if busy:
            block = min(block, self._settings.retry)
        stuck = self._settings.timeout * STUCK_FACTOR
        try:
            if now >= self._next_reclaim.get(keys.index, 0.0):  # a dispatcher died mid-POST
                claimed = await self._redis.xautoclaim(
                    keys.webhooks, GROUP, self._consumer, int(stuck * 1000), count=count
                )
                entries = [(i, f) for i, f in claimed[1] if f]
                if entries:
                    return entries
                self._next_reclaim[keys.index] = now + stuck / 2
            reply = await self._redis.xreadgroup(
                GROUP, self._consumer, {keys.webhooks: ">"}, count, block=int(block * 1000)
            )
        except ResponseError as exc:
            if not stream_gone(exc):
                raise
            await self._create_group(keys)
            return []
        return [(i, f) for i, f in stream_entries(reply) if f]

    async def _create_group(self, keys: Keys) -> None:
        try:
            await self._redis.xgroup_create(keys.webhooks, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _deliver(
        self, http: aiohttp.ClientSession, keys: Keys, entry_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        key = fields.get(b"key")
        if key is None:  # not a delivery this service wrote
            await self._ack(keys, entry_id)
            return
        prediction_id = keys.prediction_id(key)
        attempt = int(fields.get(b"attempt", b"1"))
        since = float(fields.get(b"since") or int(entry_id.split(b"-")[0]) / 1000)
        record = await self._results.get(prediction_id)
        if record is None or not record.webhook:  # expired meanwhile: nothing to send
            await self._ack(keys, entry_id)
            return
        interim = fields.get(b"event") == b"output"
        if interim and record.status.final:  # the final post is due anyway: this one is not
            await self._ack(keys, entry_id)
            return
        view = prediction_view(record)
        if interim:  # the record with its chunks so far, while it runs
            view["output"]["result"] = [
                orjson.Fragment(c) for c in await self._chunks(keys, prediction_id)
            ]
        body = orjson.dumps(view)
        if self._tracing is not None and record.traceparent:
            headers: dict[str, Any] = {}
            with self._tracing.webhook(record.traceparent, record.webhook, headers):
                delivered = await self._post(http, prediction_id, record.webhook, body, headers)
        else:
            delivered = await self._post(http, prediction_id, record.webhook, body)
        if interim:  # an interim post that failed is not tried again
            await self._ack(keys, entry_id)
            return
        now = time.time()
        if delivered:
            note = (key, "delivered", attempt, now)
            await settle(self._scripts, keys, GROUP, entry_id, note=note)
            return
        wait = min(self._settings.retry * 2 ** (attempt - 1), MAX_BACKOFF)
        if now + wait - since > self._settings.max_age:
            log.warning("webhook for %s given up after %d attempts", prediction_id, attempt)
            note = (key, "given up", attempt, now)
            await settle(self._scripts, keys, GROUP, entry_id, note=note)
            return
        member = b"%s|%d|%.3f" % (key, attempt + 1, since)
        retry = (member, now + wait)
        note = (key, "retrying", attempt, now)
        await settle(self._scripts, keys, GROUP, entry_id, retry, note)

    async def _chunks(self, keys: Keys, prediction_id: str) -> list[bytes]:
        """A running job's chunks so far."""
        out: list[bytes] = []
        while page := await read_chunks(self._redis, keys, prediction_id, len(out), 1000):
            out += [chunk for _, chunk in page]
        return out

    async def _ack(self, keys: Keys, entry_id: bytes) -> None:
        await settle(self._scripts, keys, GROUP, entry_id)

    async def _post(
        self,
        http: aiohttp.ClientSession,
        prediction_id: str,
        url: str,
        body: bytes,
        more_headers: dict[str, Any] | None = None,
    ) -> bool:
        """True when delivered (2xx) or never deliverable; False to try again later.
        ``more_headers``: the trace's, when traced."""
        try:
            await check_url(url, self._settings.policy)  # again: DNS may have changed
        except Unresolved as exc:  # perhaps a passing DNS fault: like any failed POST
            log.info("webhook for %s: %s; will retry", prediction_id, exc.detail[0]["msg"])
            return False
        except InvalidInput as exc:  # refused by policy: never deliverable
            log.warning("webhook for %s refused: %s", prediction_id, exc.detail[0]["msg"])
            return True
        timestamp = str(int(time.time()))
        headers: dict[str, Any] = {
            "Content-Type": "application/json",
            "X-Prediction-ID": prediction_id,
            "X-Webhook-Timestamp": timestamp,
            **(more_headers or {}),
        }
        if self._settings.secret:
            headers["X-Webhook-Signature"] = sign(self._settings.secret, timestamp, body)
        elif not self._warned_unsigned:
            log.warning("WEBHOOK_SECRET is not set: webhook deliveries go out unsigned")
            self._warned_unsigned = True
        try:
            async with http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                if 200 <= resp.status < 300:
                    return True
                log.info("webhook for %s answered %d; will retry", prediction_id, resp.status)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.info("webhook for %s failed (%s); will retry", prediction_id, exc)
        return False

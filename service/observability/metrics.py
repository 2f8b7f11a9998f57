"""Prometheus figures: HTTP traffic, predictions, model latency, batch sizes, the queue."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from redis.asyncio import Redis

from service.observability.activity import Activity
from service.observability.queue_figures import partition_figures
from service.redis.keys import Partitions

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # Counted per request in plain dicts (no locks, no label lookups: the event loop is
        # the only writer) and turned into metric families at scrape time by collect().
        self._requests: dict[tuple[str, str, int], int] = {}
        # Per (route, method): a count per latency bucket, then +Inf, then the sum.
        self._timings: dict[tuple[str, str], list[Any]] = {}
        self._predictions: dict[tuple[str, str, str], int] = {}
        # Per model, the same layout: call durations, and inputs per call.
        self._batch_times: dict[str, list[Any]] = {}
        self._batch_sizes: dict[str, list[Any]] = {}
        # Per (tenant, status): requests of the tenants of the keys file (their number
        # bounds the labels).
        self._tenant_requests: dict[tuple[str, int], int] = {}
        #: What the dashboard draws, written to Redis by each replica a few times a minute.
        self.activity = Activity()
        r.register(self)
        # Queue figures: totals (what to scale and alert on), and per partition.
        self.stream_length = Gauge("queue_stream_length", "Entries in the job streams.", registry=r)
        self.group_lag = Gauge(
            "queue_group_lag",
            "Entries not yet delivered to any consumer: what an autoscaler should scale on.",
            registry=r,
        )
        self.pending = Gauge(
            "queue_pending",
            "Entries delivered to a consumer and not yet acknowledged.",
            registry=r,
        )
        self.dead_letters = Gauge(
            "queue_dead_letters", "Entries in the dead-letter streams.", registry=r
        )
        self.backlog = Gauge(
            "queue_backlog",
            "Jobs not finished: entries not yet delivered plus entries pending, over every "
            "partition. A global figure (every replica reports the same): scale on one "
            "replica's value, never on a sum over replicas.",
            registry=r,
        )
        self.oldest_age = Gauge(
            "queue_oldest_job_age_seconds",
            "Age of the oldest job waiting or running, over every partition (0: none).",
            registry=r,
        )
        self.model_backlog = Gauge(
            "queue_backlog_by_model",
            "Jobs queued or running, by model and partition (from counters the job scripts keep).",
            ["model", "partition"],
            registry=r,
        )
        label = ["partition"]
        self.partition_length = Gauge(
            "queue_partition_stream_length", "Entries in one partition's stream.", label, registry=r
        )
        self.partition_lag = Gauge(
            "queue_partition_group_lag", "Undelivered entries of one partition.", label, registry=r
        )
        self.partition_pending = Gauge(
            "queue_partition_pending", "Unacknowledged entries of one partition.", label, registry=r
        )
        self.partition_dead = Gauge(
            "queue_partition_dead_letters", "Dead letters of one partition.", label, registry=r
        )
        self.tenant_queued = Gauge(
            "tenant_queued_jobs",
            "Jobs queued or running, by tenant (the default tenant is 'default'): what its "
            "max_queued bounds.",
            ["tenant"],
            registry=r,
        )
        self.files_stored = Counter(
            "files_stored",
            "Files put in the blob store by this replica: inputs (uploads, URLs, data URIs) "
            "and outputs (files a model returned).",
            ["kind"],
            registry=r,
        )
        self.files_stored_bytes = Counter(
            "files_stored_bytes",
            "Bytes of the files counted by files_stored.",
            ["kind"],
            registry=r,
        )
        self.uploads_refused = Counter(
            "uploads_refused",
            "File inputs refused, by reason: too_large (MAX_FILE_BYTES), url (a URL not "
            "allowed or that could not be fetched), malformed (a bad multipart body or data URI).",
            ["reason"],
            registry=r,
        )
        self._queue_read: asyncio.Future[None] | None = None
        self._queue_read_at = 0.0

    def count_file(self, kind: str, size: int) -> None:
        """One file stored: ``kind`` input or output, ``size`` bytes."""
        self.files_stored.labels(kind).inc()
        self.files_stored_bytes.labels(kind).inc(size)

    def count_prediction(
        self,
        model: str,
        mode: str,
        ok: bool | str,
        tenant: str = "",
        *,
        prediction_id: str = "",
        error: str = "",
        waited: float | None = None,
        ran: float | None = None,
    ) -> None:
        """One finished prediction: ``ok`` True (done), False (failed), or the final status
        of a job that ended otherwise ('aborted', 'canceled'); counted for the dashboard too
        (a sync one as submitted as well), with its job's id, error, queue wait and run time
        where known."""
        status = ok if isinstance(ok, str) else "done" if ok else "failed"
        key = (model, mode, status)
        self._predictions[key] = self._predictions.get(key, 0) + 1
        activity = self.activity
        if mode == "sync":
            activity.submitted(tenant)
        activity.ended(
            prediction_id, model, tenant, status, mode=mode, error=error, waited=waited, ran=ran
        )

    def observe_batch(self, model: str, size: int, seconds: float) -> None:
        """One model call: how long it took and how many inputs it had."""
        _observe(self._batch_times, model, _LATENCY_BUCKETS, seconds)
        _observe(self._batch_sizes, model, _BATCH_BUCKETS, size)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Counts one answered request and its latency."""
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        _observe(self._timings, (route, method), _LATENCY_BUCKETS, seconds)

    def observe_tenant(self, tenant: str, status: int) -> None:
        """Counts one answered request of a tenant of the keys file."""
        key = (tenant, status)
        self._tenant_requests[key] = self._tenant_requests.get(key, 0) + 1

    def collect(self) -> Iterator[Metric]:
        """The figures counted in plain dicts, for the registry at scrape time."""
        predictions = CounterMetricFamily(
            "predictions",
            "Predictions finished, by model, mode (sync/async) and status (done, failed; "
            "aborted and canceled: their Cancel-After passed before or while they ran).",
            labels=["model", "mode", "status"],
        )
        for key, count in self._predictions.items():
            predictions.add_metric(list(key), count)
        yield predictions
        requests = CounterMetricFamily(
            "http_requests", "HTTP requests answered.", labels=["route", "method", "status"]
        )
        for (route, method, status), count in self._requests.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests
        if self._tenant_requests:
            tenants = CounterMetricFamily(
                "tenant_requests",
                "HTTP requests answered, by tenant (of the keys file) and status; 429s are "
                "requests over the tenant's rate or queue quota.",
                labels=["tenant", "status"],
            )
            for (tenant, status), count in self._tenant_requests.items():
                tenants.add_metric([tenant, str(status)], count)
            yield tenants
        yield _histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "method"],
            self._timings,
            _LATENCY_BUCKETS,
        )
        yield _histogram(
            "model_batch_duration_seconds",
            "Time of one model call (a batch).",
            ["model"],
            self._batch_times,
            _LATENCY_BUCKETS,
        )
        yield _histogram(
            "model_batch_size",
            "Inputs per model call.",
            ["model"],
            self._batch_sizes,
            _BATCH_BUCKETS,
        )

    async def queue_figures(self, redis: Redis, partitions: Partitions, max_age: float) -> None:
        """Refreshes the queue figures unless they are younger than ``max_age`` seconds;
        concurrent scrapes share one read."""
        read = self._queue_read
        if read is None or (read.done() and time.monotonic() - self._queue_read_at > max_age):
            self._queue_read_at = time.monotonic()
            read = self._queue_read = asyncio.ensure_future(self.refresh_queue(redis, partitions))
        await asyncio.shield(read)

    async def refresh_queue(self, redis: Redis, partitions: Partitions) -> None:
        """Reads the queue figures of every partition from Redis: per partition one
        pipelined round trip of O(1) calls (three per stream, and two), whatever the
        backlog, all at once."""
        figures = await asyncio.gather(
            *(partition_figures(redis, partitions, keys) for keys in partitions.all)
        )
        totals = [0, 0, 0, 0]
        oldest = 0.0
        self.model_backlog.clear()
        queued: dict[str, int] = {}
        for keys, (values, by_model, age, by_tenant) in zip(partitions.all, figures, strict=True):
            for tenant, count in by_tenant.items():
                queued[tenant] = queued.get(tenant, 0) + count
            name = str(keys.index)
            for gauge, value in zip(
                (
                    self.partition_length,
                    self.partition_lag,
                    self.partition_pending,
                    self.partition_dead,
                ),
                values,
                strict=True,
            ):
                gauge.labels(name).set(value)
            totals = [a + b for a, b in zip(totals, values, strict=True)]
            for model, count in by_model.items():
                self.model_backlog.labels(model, name).set(count)
            oldest = max(oldest, age)
        for gauge, value in zip(
            (self.stream_length, self.group_lag, self.pending, self.dead_letters),
            totals,
            strict=True,
        ):
            gauge.set(value)
        self.backlog.set(totals[1] + totals[2])
        self.oldest_age.set(oldest)
        if partitions.tenanted:
            for tenant, count in queued.items():
                self.tenant_queued.labels(tenant or "default").set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _observe(
    table: dict[Any, list[Any]], key: Any, bounds: tuple[float, ...], value: float
) -> None:
    """Counts ``value`` in its bucket of ``table[key]``: a count per bucket, then +Inf,
    then the sum."""
    counts = table.get(key)
    if counts is None:
        counts = table[key] = [0] * (len(bounds) + 1) + [0.0]
    counts[bisect_left(bounds, value)] += 1
    counts[-1] += value


def _histogram(
    name: str,
    documentation: str,
    labels: list[str],
    table: dict[Any, list[Any]],
    bounds: tuple[float, ...],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for key, counts in table.items():
        cumulative, buckets = 0, []
        for bound, count in zip((*bounds, float("inf")), counts[:-1], strict=True):
            cumulative += int(count)
            buckets.append((floatToGoString(bound), cumulative))
        family.add_metric(list(key) if isinstance(key, tuple) else [key], buckets, counts[-1])
    return family

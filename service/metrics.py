"""Prometheus figures: HTTP traffic, predictions, model latency, batch sizes, the queue."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from redis.asyncio import Redis

from .keys import Keys

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """One registry per app (tests build many apps in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests", "HTTP requests answered.", ["route", "method", "status"], registry=r
        )
        self.http_latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "predictions",
            "Predictions finished, by model, mode (sync/async) and status.",
            ["model", "mode", "status"],
            registry=r,
        )
        self.model_latency = Histogram(
            "model_batch_duration_seconds",
            "Time of one model call (a batch).",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "model_batch_size",
            "Inputs per model call.",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.stream_length = Gauge("queue_stream_length", "Entries in the job stream.", registry=r)
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
            "queue_dead_letters", "Entries in the dead-letter stream.", registry=r
        )

    async def refresh_queue(self, redis: Redis, keys: Keys) -> None:
        """Reads the queue figures from Redis (at scrape time; four small calls)."""
        pipe = redis.pipeline(transaction=False)
        pipe.xlen(keys.stream)
        pipe.xinfo_groups(keys.stream)
        pipe.xlen(keys.dead_letters)
        length, groups, dead = await pipe.execute()
        group = next((g for g in groups if _text(g["name"]) == keys.group), None)
        self.stream_length.set(length)
        self.dead_letters.set(dead)
        if group is None:
            self.group_lag.set(length)
            self.pending.set(0)
            return
        self.pending.set(group["pending"])
        lag = group.get("lag")
        if lag is None:  # Redis 6.2 has no lag field: count what lies past the group's cursor
            undelivered = await redis.xrange(
                keys.stream, min=f"({_text(group['last-delivered-id'])}", count=100_000
            )
            lag = len(undelivered or [])
        self.group_lag.set(lag)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

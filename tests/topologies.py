"""Real Redis topologies the suite builds on loopback: a Redis Cluster of three primaries
with a replica each, and a Sentinel set (a primary, a replica, three sentinels). They need
Redis 7 (redis-server and redis-cli from PATH); without it their tests are skipped, unless
REQUIRE_CLUSTER is set, which turns that into a failure.

They are built by scripts/redis_local.py, which `scripts/redis-local` runs for people who
want to try them by hand; this module adds the skip (or failure) when Redis 7 is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts import redis_local
from scripts.redis_local import Cluster, Redis7Missing, SentinelSet, find_redis7, until

__all__ = ["Cluster", "SentinelSet", "redis7", "start_cluster", "start_sentinels", "until"]


def redis7() -> tuple[str, str]:
    """redis-server and redis-cli of Redis 7 or later, or skip (fail with REQUIRE_CLUSTER)."""
    try:
        return find_redis7()
    except Redis7Missing:
        why = "needs redis-server and redis-cli of Redis 7 or later on PATH"
        if os.environ.get("REQUIRE_CLUSTER"):
            pytest.fail(f"REQUIRE_CLUSTER is set, but this machine {why}")
        pytest.skip(why)


def start_cluster(folder: Path) -> Cluster:
    return redis_local.start_cluster(folder, *redis7())


def start_sentinels(folder: Path) -> SentinelSet:
    binary, _ = redis7()
    return redis_local.start_sentinels(folder, binary)

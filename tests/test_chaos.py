"""Small runs of scripts/chaos in the suite: three replicas, kill -9 one mid-drain, and
disrupt Redis (one node: a restart; a cluster: a primary's failover while jobs flow)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from .topologies import redis7

ROOT = Path(__file__).resolve().parent.parent


def chaos() -> Any:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_nothing_lost(result: dict[str, Any], jobs: int) -> None:
    assert result["accepted"] == jobs
    assert result["lost"] == 0
    assert result["duplicate_final_writes"] == 0
    assert result["pending_left"] == 0
    assert result["done"] == jobs and result["failed"] == 0
    calls = {int(k): v for k, v in result["model_calls_per_id"].items()}
    assert set(calls) <= {1, 2}, calls  # twice only for jobs reclaimed from the killed replica
    return None


@pytest.mark.timeout(180)
async def test_the_fault_drill_loses_nothing_and_writes_each_result_once() -> None:
    result = await chaos().drill(jobs=300, replicas=3, visibility=3.0, deadline_s=90)
    assert_nothing_lost(result, 300)
    calls = {int(k): v for k, v in result["model_calls_per_id"].items()}
    assert calls.get(1, 0) >= 300 - 2 * 8 * 2, calls  # at most its in-flight batches ran again


@pytest.mark.topology
@pytest.mark.timeout(240)
async def test_on_a_cluster_a_killed_replica_and_a_primary_failover_lose_nothing() -> None:
    redis7()  # skipped without Redis 7 (a failure with REQUIRE_CLUSTER)
    result = await chaos().drill(jobs=300, replicas=3, visibility=3.0, deadline_s=120, cluster=True)
    assert_nothing_lost(result, 300)

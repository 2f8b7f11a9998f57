"""A small run of scripts/chaos in the suite: three replicas, kill -9 one, restart Redis."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(180)
async def test_the_fault_drill_loses_nothing_and_writes_each_result_once() -> None:
    spec = importlib.util.spec_from_file_location("chaos", ROOT / "scripts" / "chaos.py")
    assert spec is not None and spec.loader is not None
    chaos = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(chaos)
    result = await chaos.drill(jobs=300, replicas=3, visibility=3.0, deadline_s=90)
    assert result["accepted"] == 300
    assert result["lost"] == 0
    assert result["duplicate_final_writes"] == 0
    assert result["pending_left"] == 0
    assert result["done"] == 300 and result["failed"] == 0
    calls = {int(k): v for k, v in result["model_calls_per_id"].items()}
    assert set(calls) <= {1, 2}, calls  # twice only for jobs reclaimed from the killed replica
    assert calls.get(1, 0) >= 300 - 2 * 8 * 2, calls  # at most its in-flight batches ran again

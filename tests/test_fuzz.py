"""Schemathesis against the live OpenAPI spec: no 5xx, and every answer as documented."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import running_service


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(redis_url: str) -> None:
    with running_service(REDIS_URL=redis_url, LOG_LEVEL="ERROR") as base:
        st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
        out = subprocess.run(
            [
                st,
                "run",
                f"{base}/docs/swagger.json",
                "--checks",
                "all",
                "--max-examples",
                "40",
                "--seed",
                "20261126",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert out.returncode == 0, out.stdout[-6000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.split("SUMMARY")[-1]

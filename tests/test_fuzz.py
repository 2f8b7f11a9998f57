"""Schemathesis against the live OpenAPI spec: no 5xx, and every answer as documented."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from service.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent


def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(redis_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "LOG_LEVEL": "ERROR",
    }
    server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
    spec = f"http://127.0.0.1:{port}/docs/swagger.json"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(spec, timeout=2).close()
                break
            except (urllib.error.URLError, OSError):
                assert time.monotonic() < deadline, "server never answered"
                time.sleep(0.1)
        st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
        out = subprocess.run(
            [
                st,
                "run",
                spec,
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
    finally:
        server.terminate()
        server.wait(30)

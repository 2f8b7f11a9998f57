"""The private redis-server, and `python -m service` run as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from service.embedded import RedisServer, find_redis_server, free_port

ROOT = Path(__file__).resolve().parent.parent


def test_find_redis_server_gives_a_runnable_binary() -> None:
    out = subprocess.run([find_redis_server(), "--version"], capture_output=True, check=True)
    assert out.stdout.startswith(b"Redis server v=")


def test_aof_keeps_data_across_a_restart(tmp_path: Path) -> None:
    first = RedisServer(tmp_path)
    with redis.Redis.from_url(first.start()) as client:
        client.set("kept", "yes")
    first.stop()
    second = RedisServer(tmp_path)
    try:
        with redis.Redis.from_url(second.start()) as client:
            assert client.get("kept") == b"yes"
    finally:
        second.stop()
    assert (tmp_path / "redis.log").exists()


def _call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait(predicate: Any, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (OSError, urllib.error.URLError):
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not met within {timeout}s")


def _serve(port: int, data_dir: Path, redis_port: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        EMBEDDED_REDIS_PORT=str(redis_port),
        LOG_LEVEL="WARNING",
    )
    return subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)


def test_python_m_service_starts_and_stops_its_own_redis(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    proc = _serve(port, tmp_path, redis_port)
    try:
        _wait(lambda: _call(port, "GET", "/predict/x")[0] == 404)
        status, body = _call(
            port, "POST", "/predict", {"input": "What a lovely day"}, {"Async-Mode": "true"}
        )
        assert status == 202
        prediction_id = body["prediction_id"]
        done = _wait(
            lambda: (
                (r := _call(port, "GET", f"/predict/{prediction_id}")[1])["status"] == "done" and r
            )
        )
        assert done["output"]["result"]["label"] == "positive"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    # Redis 6.2 writes appendonly.aof; 7.x a multi-part AOF in appendonlydir/.
    assert (tmp_path / "appendonly.aof").exists() or (tmp_path / "appendonlydir").is_dir()
    with pytest.raises(redis.ConnectionError):  # the private server went with the service
        redis.Redis(port=redis_port, socket_connect_timeout=1).ping()

    # A restart on the same data folder still knows the job.
    proc = _serve(port, tmp_path, redis_port)
    try:
        record = _wait(
            lambda: (r := _call(port, "GET", f"/predict/{prediction_id}"))[0] == 200 and r[1]
        )
        assert record == done
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0

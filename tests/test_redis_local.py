"""scripts/redis-local as a person runs it: it starts a Redis Cluster or a Sentinel set,
prints a REDIS_URL the service accepts, and on SIGTERM or Ctrl+C stops every server it
started; without Redis 7 it says how to install it."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from redis.cluster import ClusterNode
from redis.sentinel import Sentinel

from service.redis.url import parse

from .helpers import ROOT
from .topologies import redis7, until

SCRIPT = ROOT / "scripts" / "redis-local"


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (which may hold spaces), or None
    once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _children(pid: int) -> dict[int, str]:
    """The children of ``pid``, each with its start time (told apart from a later process
    that gets the same pid)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                found[int(entry.name)] = fields[19]
    return found


def _running(pid: int, started: str) -> bool:
    fields = _stat_fields(pid)
    return fields is not None and fields[19] == started and fields[0] != "Z"


def _listening(port: int) -> bool:
    # A bare connect: redis-py would retry a refused connection with backoff.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _first_line(proc: subprocess.Popen[str], stderr: Path, within: float = 45.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while not selector.select(timeout=0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no URL printed; stderr: {stderr.read_text()[-2000:]}")
    return proc.stdout.readline().strip()


@contextmanager
def running(tmp_path: Path, *args: str) -> Iterator[tuple[subprocess.Popen[str], str, Path]]:
    """The script started with ``args``, its URL and its stderr; stopped if the test
    leaves it running (and SIGKILLed if that hangs: its servers then die with it)."""
    stderr = tmp_path / "stderr.txt"
    with stderr.open("w") as err:
        proc = subprocess.Popen([str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        yield proc, _first_line(proc, stderr), stderr
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _ends_everything(
    proc: subprocess.Popen[str], signum: int, servers: dict[int, str], ports: list[int]
) -> None:
    proc.send_signal(signum)
    assert proc.wait(30) == 0
    still = [pid for pid, started in servers.items() if _running(pid, started)]
    assert not still, f"servers left running: {still}"
    until(lambda: not any(_listening(p) for p in ports), 10, "no port is listened on any more")


@pytest.mark.topology
def test_the_cluster_it_starts_serves_and_is_gone_after_sigterm(tmp_path: Path) -> None:
    redis7()
    with running(tmp_path, "cluster") as (proc, url, stderr):
        target = parse(url)
        assert target.mode == "cluster"
        nodes = [ClusterNode(host, port) for host, port in target.nodes]
        with redis.RedisCluster(startup_nodes=nodes) as client:
            client.set("tried", "yes")
            assert client.get("tried") == b"yes"
        with redis.Redis(port=target.nodes[0][1]) as node:
            # "127.0.0.1:port@bus" for every node, replicas too (the client knows primaries)
            ports = [int(a.split("@")[0].rsplit(":", 1)[1]) for a in node.cluster("nodes")]
        assert len(set(ports)) == 6, ports
        for port in ports:
            with redis.Redis(port=port) as node:
                assert node.cluster("info")["cluster_state"] == "ok"
        servers = _children(proc.pid)
        assert len(servers) == 6, servers
        said = stderr.read_text()
        assert f"REDIS_URL={url} scripts/run" in said
        folder = Path(said.split("data and logs in ", 1)[1].split(" (removed on exit)")[0])
        assert folder.is_dir()
        _ends_everything(proc, signal.SIGTERM, servers, ports)
        assert not folder.exists(), "the temporary folder is removed"


@pytest.mark.topology
def test_the_sentinel_set_it_starts_serves_and_is_gone_after_ctrl_c(tmp_path: Path) -> None:
    redis7()
    folder = tmp_path / "kept"
    with running(tmp_path, "sentinel", "--folder", str(folder)) as (proc, url, _):
        target = parse(url)
        assert target.mode == "sentinel" and target.master == "mymaster"
        sentinel_ports = [port for _, port in target.nodes]
        with redis.Redis(port=sentinel_ports[0]) as sentinel:
            _, primary_port = sentinel.sentinel_get_master_addr_by_name("mymaster")
            (replica,) = sentinel.sentinel_slaves("mymaster")
        watched = Sentinel(list(target.nodes), socket_timeout=2)
        try:
            with watched.master_for("mymaster") as primary:
                primary.set("tried", "yes")
                assert primary.get("tried") == b"yes"
        finally:
            for each in watched.sentinels:
                each.close()
        servers = _children(proc.pid)
        assert len(servers) == 5, servers
        ports = [*sentinel_ports, int(primary_port), int(replica["port"])]
        _ends_everything(proc, signal.SIGINT, servers, ports)
    assert (folder / "sentinel-0.conf").is_file(), "a folder given is kept"
    assert (folder / "primary" / "redis.log").is_file()


def test_without_redis_on_path_it_says_how_to_install_it(tmp_path: Path) -> None:
    # The Python part directly: the wrapper itself needs the usual tools from PATH.
    run = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "redis_local.py"), "cluster"],
        env={**os.environ, "PATH": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert line.startswith("error: redis-local needs Redis 7 or later"), line
    assert "found no redis-server and redis-cli on PATH" in line
    assert "apt-get install redis-server" in line


def test_with_redis_6_it_refuses_with_one_line(tmp_path: Path) -> None:
    for name in ("redis-server", "redis-cli"):
        fake = tmp_path / name
        fake.write_text("#!/bin/sh\necho 'Redis server v=6.2.6 sha=00000000:0 bits=64'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    run = subprocess.run(
        [str(SCRIPT), "sentinel"],
        env={**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert run.returncode == 1
    assert run.stdout == ""
    line = run.stderr.splitlines()[-1]  # after the install's lines, if it had to install
    assert run.stderr.count("error:") == 1, run.stderr
    assert f"{tmp_path / 'redis-server'} is Redis 6.2.6" in line, line
    assert "apt-get install redis-server" in line

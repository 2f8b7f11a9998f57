"""Real Redis topologies the suite builds on loopback: a Redis Cluster of three primaries
with a replica each, and a Sentinel set (a primary, a replica, three sentinels). They need
Redis 7 (redis-server and redis-cli from PATH); without it their tests are skipped, unless
REQUIRE_CLUSTER is set, which turns that into a failure."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from service.embedded import RedisServer, free_port, redis_version


def redis7() -> tuple[str, str]:
    """redis-server and redis-cli of Redis 7 or later, or skip (fail with REQUIRE_CLUSTER)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server and cli and redis_version(server) >= (7, 0, 0):
        return server, cli
    why = "needs redis-server and redis-cli of Redis 7 or later on PATH"
    if os.environ.get("REQUIRE_CLUSTER"):
        pytest.fail(f"REQUIRE_CLUSTER is set, but this machine {why}")
    pytest.skip(why)


def until(check: Callable[[], Any], within: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + within
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        time.sleep(0.1)


def _port_below(highest: int) -> int:
    """A free port no higher than ``highest`` whose cluster bus port (10,000 higher) is
    free too; both below the kernel's range of ports for outgoing connections when there
    is room, so that no connection takes one between this choice and the server's bind
    (a node then exits 1 at start)."""
    try:
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = 0
    if first_ephemeral - 10_001 > 20_100:
        highest = min(highest, first_ephemeral - 10_001)
    for _ in range(1000):
        port = random.randint(20_000, highest)
        with socket.socket() as sock, socket.socket() as bus:
            try:
                sock.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found")


@dataclass
class Cluster:
    """Three primaries and three replicas on loopback."""

    servers: list[RedisServer]
    cli: str

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers[:2])

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.servers[0].port)

    def primaries(self) -> list[RedisServer]:
        """The servers that are primaries now (a failover changes which)."""
        out = []
        for server in self.servers:
            try:
                with redis.Redis(port=server.port, socket_timeout=2) as node:
                    if node.info("replication")["role"] == "master":
                        out.append(server)
            except redis.RedisError:
                continue
        return out

    def flush(self) -> None:
        for server in self.primaries():
            with redis.Redis(port=server.port) as node:
                node.flushall()

    def healthy(self) -> bool:
        for server in self.servers:
            with redis.Redis(port=server.port, socket_timeout=2) as node:
                if node.cluster("info")["cluster_state"] != "ok":
                    return False
        return len(self.primaries()) == 3

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def start_cluster(folder: Path) -> Cluster:
    binary, cli = redis7()
    extra = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        "2000",
        "--appendonly",
        "no",
    ]
    servers = []
    for _ in range(6):
        for attempt in range(3):  # a port taken after all since it was chosen: another one
            port = _port_below(55_535)  # Redis 7.0 refuses higher ones for cluster nodes
            server = RedisServer(folder / str(port), port, binary, extra)
            try:
                server.start()
                break
            except RuntimeError:
                if attempt == 2:
                    for started in servers:  # none is left running behind the error
                        started.stop()
                    raise
        servers.append(server)
    addresses = [f"127.0.0.1:{s.port}" for s in servers]
    subprocess.run(
        [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    cluster = Cluster(servers, cli)
    until(cluster.healthy, what="the cluster is ok on every node")
    return cluster


@dataclass
class SentinelSet:
    """A primary, its replica, and three sentinels watching them as 'mymaster'."""

    primary: RedisServer
    replica: RedisServer
    sentinels: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        nodes = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{nodes}/mymaster/0"

    def primary_port(self) -> int:
        with redis.Redis(port=self.sentinel_ports[0]) as sentinel:
            return int(sentinel.sentinel_get_master_addr_by_name("mymaster")[1])

    def stop(self) -> None:
        for proc in self.sentinels:
            proc.terminate()
            proc.wait(10)
        self.primary.stop()
        self.replica.stop()


def start_sentinels(folder: Path) -> SentinelSet:
    binary, _ = redis7()
    # With AOF, as in production: a primary that crashed and comes back reloads its data
    # before the sentinels make it a replica (restarted empty, it could be synced from).
    # A full sync at once (diskless sync otherwise waits 5 s for more replicas to join).
    quick = ["--repl-diskless-sync-delay", "0"]
    primary = RedisServer(folder / "primary", binary=binary, extra=quick)
    primary.start()
    replica = RedisServer(
        folder / "replica",
        binary=binary,
        extra=[*quick, "--replicaof", "127.0.0.1", str(primary.port)],
    )
    replica.start()
    found = SentinelSet(primary, replica)
    for index in range(3):
        port = free_port()
        conf = folder / f"sentinel-{index}.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {folder}\n"
            f"sentinel monitor mymaster 127.0.0.1 {primary.port} 2\n"
            "sentinel down-after-milliseconds mymaster 1000\n"
            "sentinel failover-timeout mymaster 5000\n"
            "sentinel parallel-syncs mymaster 1\n"
        )
        found.sentinels.append(
            subprocess.Popen(
                [binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        found.sentinel_ports.append(port)

    def watching() -> bool:
        for port in found.sentinel_ports:
            with redis.Redis(port=port) as sentinel:
                state = sentinel.sentinel_master("mymaster")
                if (
                    int(state.get("num-slaves", 0)) < 1
                    or int(state.get("num-other-sentinels", 0)) < 2
                ):
                    return False
        return True

    until(watching, what="every sentinel sees the replica and the other sentinels")

    def in_sync() -> bool:
        with redis.Redis(port=replica.port) as node:
            return bool(node.info("replication")["master_link_status"] == "up")

    until(in_sync, what="the replica is in sync with the primary")
    return found

"""A Redis Cluster or a Sentinel set on loopback from the installed Redis 7, without Docker.

    scripts/redis-local cluster [--folder DIR]    three primaries with a replica each
    scripts/redis-local sentinel [--folder DIR]   a primary, its replica, three sentinels

It prints the REDIS_URL to serve with on stdout (and what it started on stderr), stays in
the foreground until Ctrl+C or SIGTERM, then stops every server it started. The servers'
folders (data, logs) are in a temporary folder removed on exit, or in DIR, which is kept.

The test suite builds its topologies with these same functions (tests/topologies.py).
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import redis

# The same guard RedisServer gives its servers: they die with this process even when it
# is killed with SIGKILL and has no chance to stop them.
from service.redis.embedded import RedisServer, _die_with_parent, free_port, redis_version

INSTALL_HINT = (
    "install it with `sudo apt-get install redis-server` (Debian 12 and Ubuntu 24.04 ship "
    "Redis 7; on older releases use the packages of packages.redis.io) or `brew install redis`"
)


class Redis7Missing(RuntimeError):
    """No redis-server and redis-cli of Redis 7 or later on PATH; the message says why."""


def find_redis7() -> tuple[str, str]:
    """redis-server and redis-cli from PATH, if they are Redis 7 or later (a cluster of
    Redis 7 is what the service supports; Redis 6.2 also lacks sharded Pub/Sub)."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        found = (("redis-server", server), ("redis-cli", cli))
        missing = " and ".join(name for name, path in found if not path)
        raise Redis7Missing(f"found no {missing} on PATH")
    try:
        version = redis_version(server)
    except (OSError, subprocess.SubprocessError, RuntimeError) as err:
        raise Redis7Missing(f"{server} --version failed ({err})") from err
    if version < (7, 0, 0):
        raise Redis7Missing(f"{server} is Redis {'.'.join(map(str, version))}")
    return server, cli


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
        # Replicas first: a primary stopped while it has replicas waits for them to
        # acknowledge its last writes (up to shutdown-timeout, 10 s), a second or more.
        primaries = self.primaries()
        for server in [*(s for s in self.servers if s not in primaries), *primaries]:
            server.stop()


def start_cluster(folder: Path, binary: str | None = None, cli: str | None = None) -> Cluster:
    """Six nodes in folders of ``folder`` named by port, joined into a cluster, once every
    node says it is ok. What was started is stopped again if anything fails (or is
    interrupted) on the way."""
    if binary is None or cli is None:
        binary, cli = find_redis7()
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
    servers: list[RedisServer] = []
    try:
        for _ in range(6):
            for attempt in range(3):  # a port taken after all since it was chosen: another one
                port = _port_below(55_535)  # Redis 7.0 refuses higher ones for cluster nodes
                server = RedisServer(folder / str(port), port, binary, extra)
                servers.append(server)  # before its start, which an interrupt may cut short
                try:
                    server.start()
                    break
                except RuntimeError:
                    servers.pop().stop()
                    if attempt == 2:
                        raise
        addresses = [f"127.0.0.1:{s.port}" for s in servers]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        cluster = Cluster(servers, cli)
        until(cluster.healthy, what="the cluster is ok on every node")
    except BaseException:
        for started in servers:
            started.stop()
        raise
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
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # The replica first, for the reason Cluster.stop gives (after a failover it is the
        # other way round, and that stop takes a second longer).
        self.replica.stop()
        self.primary.stop()


def start_sentinels(folder: Path, binary: str | None = None) -> SentinelSet:
    """The set, once every sentinel sees the replica and the other sentinels and the
    replica is in sync. What was started is stopped again if anything fails (or is
    interrupted) on the way."""
    if binary is None:
        binary, _ = find_redis7()
    # With AOF, as in production: a primary that crashed and comes back reloads its data
    # before the sentinels make it a replica (restarted empty, it could be synced from).
    # A full sync at once (diskless sync otherwise waits 5 s for more replicas to join).
    quick = ["--repl-diskless-sync-delay", "0"]
    primary = RedisServer(folder / "primary", binary=binary, extra=quick)
    found: SentinelSet | None = None
    try:
        primary.start()
        # Made only now: its port is chosen while the primary holds its own.
        replica = RedisServer(
            folder / "replica",
            binary=binary,
            extra=[*quick, "--replicaof", "127.0.0.1", str(primary.port)],
        )
        found = SentinelSet(primary, replica)
        replica.start()
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
                    # As RedisServer does: a Ctrl+C in the terminal reaches only the process
                    # that started them, which stops them in order; they die with it.
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
            found.sentinel_ports.append(port)
        sentinels = found

        def watching() -> bool:
            for port in sentinels.sentinel_ports:
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
    except BaseException:
        if found is None:
            primary.stop()
        else:
            found.stop()
        raise
    return found


class _Stopped(Exception):
    """A signal asked the command to end."""


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _ignore_signals() -> None:
    # While the servers are stopped: a second Ctrl+C must not cut that short and leave
    # some behind (each stop ends in a SIGKILL within 10 s anyway). Set only once nothing
    # more is started, since a child inherits an ignored signal.
    for handled in _SIGNALS:
        signal.signal(handled, signal.SIG_IGN)


def _stop(signum: int, frame: FrameType | None) -> None:
    _ignore_signals()
    raise _Stopped(signal.Signals(signum).name)


def _describe(err: BaseException) -> str:
    if isinstance(err, subprocess.CalledProcessError):
        said = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        said += (err.stdout or b"").decode(errors="replace").strip().splitlines()
        last = said[-1] if said else "no output"
        return f"{Path(err.cmd[0]).name} {err.cmd[1]} exited with {err.returncode}: {last}"
    return str(err) or type(err).__name__


def _summary(running: Cluster | SentinelSet, folder: Path, kept: bool) -> str:
    where = f"{folder} ({'kept' if kept else 'removed on exit'})"
    if isinstance(running, Cluster):
        primaries = running.primaries()
        replicas = [s for s in running.servers if s not in primaries]
        nodes = (
            "primaries "
            + ", ".join(f"{s.port} (pid {s.pid})" for s in primaries)
            + "; replicas "
            + ", ".join(f"{s.port} (pid {s.pid})" for s in replicas)
        )
        what = f"a Redis Cluster on 127.0.0.1: {nodes}"
    else:
        what = (
            f"a Sentinel set on 127.0.0.1: primary {running.primary.port} "
            f"(pid {running.primary.pid}), replica {running.replica.port} "
            f"(pid {running.replica.pid}), sentinels "
            + ", ".join(
                f"{port} (pid {proc.pid})"
                for port, proc in zip(running.sentinel_ports, running.sentinels, strict=True)
            )
            + ", master name mymaster"
        )
    return (
        f"== {what}\n"
        f"== data and logs in {where}\n"
        f"== serve on it: REDIS_URL={running.url} scripts/run\n"
        "== Ctrl+C stops every server"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/redis-local",
        description="A Redis Cluster or a Sentinel set on loopback from the installed "
        "Redis 7 (no Docker). Prints the REDIS_URL, stays until Ctrl+C or SIGTERM, then "
        "stops every server it started.",
    )
    parser.add_argument(
        "topology",
        choices=["cluster", "sentinel"],
        help="cluster: three primaries with a replica each; "
        "sentinel: a primary, its replica and three sentinels (master name mymaster)",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="keep the servers' data and logs in this folder (default: a temporary folder "
        "removed on exit)",
    )
    args = parser.parse_args(argv)
    try:
        binary, cli = find_redis7()
    except Redis7Missing as err:
        print(
            f"error: redis-local needs Redis 7 or later (redis-server and redis-cli on PATH), "
            f"but {err}; {INSTALL_HINT}",
            file=sys.stderr,
        )
        return 1
    # Before anything starts: a signal during the start stops what was started so far.
    for handled in _SIGNALS:
        signal.signal(handled, _stop)
    kept = args.folder is not None
    folder: Path = args.folder.resolve() if kept else Path(tempfile.mkdtemp(prefix="redis-local-"))
    running: Cluster | SentinelSet | None = None
    try:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if args.topology == "cluster":
                running = start_cluster(folder, binary, cli)
            else:
                running = start_sentinels(folder, binary)
        except _Stopped:
            raise
        except Exception as err:
            kept = True  # their logs say why
            logs = f" (the servers' logs are in {folder})" if folder.is_dir() else ""
            print(
                f"error: the {args.topology} did not start: {_describe(err)}{logs}",
                file=sys.stderr,
            )
            return 1
        print(running.url, flush=True)
        print(_summary(running, folder, kept), file=sys.stderr, flush=True)
        while True:
            signal.pause()
    except _Stopped:
        return 0
    finally:
        _ignore_signals()
        if running is not None:
            running.stop()
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

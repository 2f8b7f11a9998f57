"""Streaming: time to first chunk, chunks/s against the model alone, Redis CPU per chunk
and a replica's memory per idle open stream.

    scripts/bench --stream [--streams 32] [--chunks 50] [--every 0.005] [--seconds 10]
                           [--idle 500] [--out bench-results]

The model is examples.ticker:ticks (it yields --chunks chunks, one every --every seconds,
and does nothing else). --streams clients each run streams back to back for --seconds:

- model alone: --streams threads, each calling the generator in a loop (the ceiling);
- sync: POST /predict with Accept: text/event-stream, read to `done`;
- queued: POST /predict (Async-Mode: true), then GET /predict/{id}/events, read to the
  final status.

The clients start one after another, spread over one stream's length (the model alone
likewise). Time to first chunk is measured from the request's start to its first `output`
event, less the model's own time to its first chunk when called alone (the median of the
model-alone run: --every, and how late a thread wakes from a wait on this machine). Redis
CPU is redis-server's user+sys time over the queued run (INFO cpu), divided by the chunks
streamed: all of a job's Redis work (submit, mark, each append, the final write, the
followers' reads). Idle streams: --idle clients follow queued jobs on an API-only replica
(WORKERS=0), so no chunk ever comes; its RSS growth divided by --idle. Writes stream.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.ticker import ticks  # noqa: E402
from scripts.bench import progress, rss_mb, server  # noqa: E402
from service.redis.embedded import RedisServer  # noqa: E402

MODEL = "examples.ticker:ticks"
EVENTS = {"Accept": "text/event-stream"}
OUTPUT = b"event: output\n"
FAILED = (b"event: error\n", b'"status":"failed"', b'"status":"canceled"')
NO_TIMEOUT = aiohttp.ClientTimeout(total=None)


def _stagger(args: argparse.Namespace, slot: int) -> float:
    """When the stream slot ``slot`` starts: the slots start spread over one stream's
    length, so that streams start one at a time in the steady state, as they would from
    independent clients (started together, every stream would start in the same instant
    as 31 others, each time: a measure of a burst, not of streaming)."""
    return slot * args.chunks * args.every / args.streams


def model_alone(args: argparse.Namespace) -> tuple[float, float]:
    """Chunks/s of --streams threads calling the model back to back, and the median time
    to its first chunk (its own wait, and how late the thread wakes from it)."""
    value = {"n": args.chunks, "every": args.every}
    counts = [0] * args.streams
    firsts: list[float] = []
    stop_at = time.perf_counter() + args.seconds

    def loop(slot: int) -> None:
        time.sleep(_stagger(args, slot))
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            for number, _ in enumerate(ticks(value)):
                if not number:
                    firsts.append(time.perf_counter() - began)
                counts[slot] += 1

    began = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(args.streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    return sum(counts) / elapsed, statistics.median(firsts)


async def _load(
    args: argparse.Namespace,
    one: Callable[[aiohttp.ClientSession, list[float]], Awaitable[int]],
) -> dict[str, Any]:
    """--streams connections each running ``one`` back to back for --seconds: chunks/s and
    the time to first chunk beyond the model's own wait (ms)."""
    firsts: list[float] = []
    chunks = 0
    stop_at = time.perf_counter() + args.seconds

    async def connection(session: aiohttp.ClientSession, slot: int) -> None:
        nonlocal chunks
        await asyncio.sleep(_stagger(args, slot))
        while time.perf_counter() < stop_at:
            got = await one(session, firsts)  # (not `chunks += await`: reads chunks first)
            chunks += got

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as session:
        began = time.perf_counter()
        await asyncio.gather(*(connection(session, i) for i in range(args.streams)))
        elapsed = time.perf_counter() - began
    beyond = sorted(max(0.0, f - args.model_first) * 1000 for f in firsts)
    cuts = statistics.quantiles(beyond, n=100)
    return {
        "streams": len(firsts),
        "chunks_per_s": round(chunks / elapsed, 1),
        "first_chunk_beyond_model_ms": {
            "p50": round(cuts[49], 2),
            "p99": round(cuts[98], 2),
        },
    }


async def _read(response: aiohttp.ClientResponse, began: float, firsts: list[float]) -> int:
    """Reads a stream to its end; notes when its first chunk came; answers the chunks.
    (Counts events in the raw bytes: a full parser here would load the machine the
    server shares.)"""
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {await response.text()}")
    count, tail, failed = 0, b"", False
    async for piece in response.content.iter_any():
        text = tail + piece
        got = text.count(OUTPUT)
        if got and not count:
            firsts.append(time.perf_counter() - began)
        count += got
        failed = failed or any(mark in text for mark in FAILED)
        tail = text[1 - len(OUTPUT) :]  # too short to hold a whole mark counted already
    if failed:
        raise RuntimeError("a stream failed")
    return count


def sync_run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/predict"
    body = {"input": {"n": args.chunks, "every": args.every}}

    async def one(session: aiohttp.ClientSession, firsts: list[float]) -> int:
        began = time.perf_counter()
        async with session.post(url, json=body, headers=EVENTS) as response:
            return await _read(response, began, firsts)

    return asyncio.run(_load(args, one))


def queued_run(port: int, args: argparse.Namespace) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/predict"
    body = {"input": {"n": args.chunks, "every": args.every}}

    async def one(session: aiohttp.ClientSession, firsts: list[float]) -> int:
        began = time.perf_counter()
        async with session.post(url, json=body, headers={"Async-Mode": "true"}) as response:
            prediction_id = (await response.json())["prediction_id"]
        async with session.get(f"{url}/{prediction_id}/events", headers=EVENTS) as response:
            return await _read(response, began, firsts)

    return asyncio.run(_load(args, one))


def redis_cpu_s(url: str) -> float:
    client = redis.Redis.from_url(url)
    cpu = client.info("cpu")
    client.close()
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def idle_streams(redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """RSS per idle follower on an API-only replica: --idle queued jobs, each followed."""
    body = {"input": {"n": 1, "every": 0}}
    with server(redis_url, model=MODEL, workers=0) as (port, proc):
        url = f"http://127.0.0.1:{port}/predict"

        async def measure() -> dict[str, Any]:
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector, timeout=NO_TIMEOUT) as session:
                ids = []
                for _ in range(args.idle):
                    async with session.post(url, json=body, headers={"Async-Mode": "true"}) as r:
                        ids.append((await r.json())["prediction_id"])
                # A first follower warms what every follower shares (subscriptions, code).
                warm = await session.get(f"{url}/{ids[0]}/events", headers=EVENTS)
                await warm.content.readline()
                await asyncio.sleep(1)
                before = rss_mb(proc.pid)
                opened = [await session.get(f"{url}/{i}/events", headers=EVENTS) for i in ids[1:]]
                for response in opened:  # each has sent its first status event
                    await response.content.readline()
                await asyncio.sleep(1)
                after = rss_mb(proc.pid)
                for response in [warm, *opened]:
                    response.close()
            return {
                "idle_streams": len(opened),
                "rss_before_mb": round(before, 1),
                "rss_after_mb": round(after, 1),
                "kb_per_idle_stream": round((after - before) * 1024 / len(opened), 1),
            }

        return asyncio.run(measure())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=32, help="concurrent streams")
    parser.add_argument("--chunks", type=int, default=50, help="chunks per stream")
    parser.add_argument("--every", type=float, default=0.005, help="seconds per chunk")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--idle", type=int, default=500, help="idle streams held open")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "streams": args.streams,
        "chunks_per_stream": args.chunks,
        "model_seconds_per_chunk": args.every,
    }
    progress(f"model alone: {args.streams} threads for {args.seconds:g} s")
    alone, args.model_first = model_alone(args)
    results["model_alone_chunks_per_s"] = round(alone, 1)
    results["model_alone_first_chunk_ms"] = round(args.model_first * 1000, 2)
    with tempfile.TemporaryDirectory() as data:
        redis_server = RedisServer(Path(data) / "redis")
        url = redis_server.start()
        try:
            with server(url, model=MODEL) as (port, _):
                progress("warming up")
                warm = argparse.Namespace(**{**vars(args), "seconds": 1.0})
                sync_run(port, warm)
                queued_run(port, warm)
                progress(f"sync: {args.streams} streams for {args.seconds:g} s")
                results["sync"] = sync_run(port, args)
                progress(f"queued: {args.streams} streams for {args.seconds:g} s")
                cpu = redis_cpu_s(url)
                results["queued"] = queued_run(port, args)
                used = redis_cpu_s(url) - cpu
                chunks = results["queued"]["chunks_per_s"] * args.seconds
                results["queued"]["redis_cpu_us_per_chunk"] = round(used * 1e6 / chunks, 1)
            progress(f"idle: {args.idle} open streams on an API-only replica")
            results["idle"] = idle_streams(url, args)
        finally:
            redis_server.stop()
    for mode in ("sync", "queued"):
        results[mode]["share_of_model_alone"] = round(results[mode]["chunks_per_s"] / alone, 3)
    (args.out / "stream.json").write_text(json.dumps(results, indent=2) + "\n")
    report(results)


def report(r: dict[str, Any]) -> None:
    print(
        f"\n{r['streams']} streams x {r['chunks_per_stream']} chunks, "
        f"{r['model_seconds_per_chunk'] * 1000:g} ms per chunk; "
        f"model alone {r['model_alone_chunks_per_s']:,.0f} chunks/s, "
        f"first chunk after {r['model_alone_first_chunk_ms']:.2f} ms\n"
    )
    print("| | first chunk beyond model p50 | p99 | chunks/s | of model alone |")
    print("|---|---|---|---|---|")
    for mode in ("sync", "queued"):
        m = r[mode]
        first = m["first_chunk_beyond_model_ms"]
        print(
            f"| {mode} | {first['p50']:.2f} ms | {first['p99']:.2f} ms | "
            f"{m['chunks_per_s']:,.0f} | {m['share_of_model_alone']:.1%} |"
        )
    print(f"\nRedis CPU per chunk (queued): {r['queued']['redis_cpu_us_per_chunk']:.1f} us")
    idle = r["idle"]
    print(
        f"Idle open streams: {idle['idle_streams']} cost {idle['kb_per_idle_stream']:.1f} KB "
        f"each (RSS {idle['rss_before_mb']:.0f} -> {idle['rss_after_mb']:.0f} MB)"
    )


if __name__ == "__main__":
    main()

"""Thread pool vs process pool for a CPU-bound pure-Python model, through the real server.

    .venv/bin/python scripts/bench_execution.py [--requests 200] [--concurrency 8]

Starts `python -m service` (with its embedded Redis) once per execution mode, sends the same
sync requests to each, and prints requests/s and latency percentiles.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts._http import wait_http  # noqa: E402
from service.redis.embedded import free_port  # noqa: E402

LIMIT = 30_000  # about 15 ms of pure-Python work per prediction


async def drive(port: int, requests: int, concurrency: int) -> tuple[float, list[float]]:
    url = f"http://127.0.0.1:{port}/predict"
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            queue.get_nowait()
            began = time.perf_counter()
            async with session.post(url, json={"input": LIMIT}) as resp:
                assert resp.status == 200, await resp.text()
                await resp.read()
            latencies.append(time.perf_counter() - began)

    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return requests / elapsed, latencies


def run_mode(mode: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        env = {
            **os.environ,
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "MODEL": "examples.cpu_model:count_primes",
            "EXECUTION": mode,
            "PROCESS_WORKERS": str(os.cpu_count() or 2),
            "EXECUTOR_THREADS": str(args.concurrency),
            "WORKERS": "0",
            "DATA_DIR": data,
            "LOG_LEVEL": "WARNING",
        }
        env.pop("REDIS_URL", None)
        server = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env)
        try:
            wait_http(f"http://127.0.0.1:{port}/models")
            asyncio.run(drive(port, args.concurrency * 2, args.concurrency))  # warm up
            return asyncio.run(drive(port, args.requests, args.concurrency))
        finally:
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    print(
        f"count_primes({LIMIT}) x {args.requests} sync requests, concurrency {args.concurrency}, "
        f"{os.cpu_count()} cores"
    )
    print(f"{'execution':<10} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    rates = {}
    for mode in ("thread", "process"):
        rate, latencies = run_mode(mode, args)
        rates[mode] = rate
        cuts = statistics.quantiles(latencies, n=100)
        print(f"{mode:<10} {rate:>8.1f} {cuts[49] * 1000:>8.1f} {cuts[98] * 1000:>8.1f}")
    print(f"process / thread: {rates['process'] / rates['thread']:.2f}x")


if __name__ == "__main__":
    main()

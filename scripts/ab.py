"""Interleaved A/B runs of two checkouts of the service on this machine: sync requests,
async submits and a queued drain (the instant model), alternating the builds round by
round so that the machine's drift falls on both alike.

    scripts/ab /path/to/base/checkout [--rounds 4] [--duration 5] [--jobs 30000]

The base checkout is served by this virtualenv (`python -m service` run in its folder),
so its dependencies must match. Prints every round and each build's median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from scripts.bench import INSTANT, TEXT, drain, drive, progress, server  # noqa: E402
from service.redis.embedded import RedisServer  # noqa: E402


def one_round(url: str, build: str, args: argparse.Namespace) -> dict[str, float]:
    os.environ["BENCH_SERVER_ROOT"] = build
    figures: dict[str, float] = {}
    body = {"input": TEXT}
    with server(url, model=INSTANT, workers=0, max_queue=0) as (port, _):
        predict = f"http://127.0.0.1:{port}/predict"
        if "sync" in args.only:
            figures["sync req/s"] = drive(predict, body, {}, args)["rps"]
        if "async" in args.only:
            redis.Redis.from_url(url).flushall()
            submits = drive(predict, body, {"Async-Mode": "true"}, args)
            figures["async req/s"] = submits["rps"]
    if "drain" in args.only:
        figures["drain jobs/s"] = drain(url, INSTANT, "x", args.jobs)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="the other checkout (A)")
    parser.add_argument("--change", type=Path, default=ROOT, help="this checkout (B)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument(
        "--only", default="sync,async,drain", help="which figures: sync, async, drain"
    )
    args = parser.parse_args()
    builds = {"A": str(args.base.resolve()), "B": str(args.change.resolve())}
    seen: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as data:
        redis_server = RedisServer(Path(data))
        url = redis_server.start()
        try:
            for i in range(args.rounds):
                order = ["A", "B"] if i % 2 == 0 else ["B", "A"]
                for name in order:
                    progress(f"round {i + 1}/{args.rounds}: {name}")
                    seen[name].append(one_round(url, builds[name], args))
                    print(name, i + 1, seen[name][-1], flush=True)
        finally:
            redis_server.stop()
    print(f"A = {builds['A']}\nB = {builds['B']}")
    for figure in seen["A"][0]:
        a = [r[figure] for r in seen["A"]]
        b = [r[figure] for r in seen["B"]]
        ratio = statistics.median(b) / statistics.median(a)
        rounds = " / ".join(f"{x:,.0f}:{y:,.0f}" for x, y in zip(a, b, strict=True))
        print(
            f"{figure:>13}: A {statistics.median(a):,.0f}  B {statistics.median(b):,.0f}  "
            f"B/A {ratio:.3f}  (rounds A:B {rounds})"
        )


if __name__ == "__main__":
    main()

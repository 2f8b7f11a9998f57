"""What the OpenAI-compatible embeddings route costs against the service's own route: the
sentence-embedding example (all-MiniLM-L6-v2 on PyTorch, its own batching) behind one
replica, the same sentence sent by the same number of clients to `POST /predict` and to
`POST /v1/embeddings` (floats), in interleaved runs on the same server.

    scripts/bench --openai [--duration 10] [--connections 32] [--rounds 3]

Needs the torch extra (docs/models.md). Prints a table and writes bench-results/openai.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import drive, load_tool, progress, server  # noqa: E402
from scripts.bench_batching import SENTENCE, _warm, load_args, models_file  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

ROUTES = {
    "POST /predict": ("/predict", {"input": SENTENCE}),
    "POST /v1/embeddings": (
        "/v1/embeddings",
        {"model": "default", "input": SENTENCE, "encoding_format": "float"},
    ),
}


def answered(url: str, body: dict[str, Any]) -> None:
    """One request of the kind the load sends, which must succeed (a bench of errors
    measures nothing)."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as resp:
        if resp.status != 200:
            raise SystemExit(f"{url} answered {resp.status}")


def main() -> None:
    args = load_args(__doc__ or "")
    folder = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in ROUTES}
    redis_server = RedisServer(folder / "redis", free_port())
    url = redis_server.start()
    try:
        with server(url, models_file=models_file(folder, {}), workers=0) as (port, _):
            base = f"http://127.0.0.1:{port}"
            for path, body in ROUTES.values():
                answered(base + path, body)
                drive(base + path, body, {}, _warm(args))
            for round_ in range(1, args.rounds + 1):
                # Each round in the other order: drift within a run falls on both alike.
                names = list(ROUTES) if round_ % 2 else list(reversed(ROUTES))
                for name in names:
                    progress(f"round {round_}/{args.rounds}: {name}")
                    path, body = ROUTES[name]
                    runs[name].append(drive(base + path, body, {}, args))
    finally:
        redis_server.stop()
    report(runs, args)


def report(runs: dict[str, list[dict[str, float]]], args: Any) -> None:
    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores"
    load = (
        f"{args.connections} connections ({load_tool()}), {args.duration:g} s a run, "
        f"{args.rounds} interleaved rounds"
    )
    print(f"\nall-MiniLM-L6-v2, {machine}; {load}\n")
    print("| route | req/s per round | median req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for name, results in runs.items():
        rates = " / ".join(f"{r['rps']:,.1f}" for r in results)
        rps = statistics.median(r["rps"] for r in results)
        p50 = statistics.median(r["p50_ms"] for r in results)
        p99 = statistics.median(r["p99_ms"] for r in results)
        print(f"| {name} | {rates} | {rps:,.1f} | {p50:.1f} | {p99:.1f} |")
    ours, theirs = runs["POST /predict"], runs["POST /v1/embeddings"]
    ratios = [b["rps"] / a["rps"] for a, b in zip(ours, theirs, strict=True)]
    ratio = statistics.median(ratios)
    each = ", ".join(f"{r:.3f}" for r in ratios)
    print(f"\n/v1/embeddings against /predict: {ratio:.3f} (each round: {each}; target >= 0.95)")
    out = args.out / "openai.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"machine": machine, "load": load, "runs": runs, "ratios": ratios}, indent=2)
    )


if __name__ == "__main__":
    main()

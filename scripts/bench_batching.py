"""What dynamic batching buys on a real model: the sentence-embedding example
(all-MiniLM-L6-v2 on PyTorch) with its own batching (one forward pass at a time, up to 64
rows) against one row per call (as many calls at once as EXECUTOR_THREADS), on the sync
path (32 concurrent clients) and the queued path (a drain), in interleaved rounds; and,
first, the model alone in this process (rows/s at batch sizes 1, 32 and 64), the ceiling
of what batching can buy on this machine. The same model on ONNX Runtime
(examples/embedding_onnx.py, batched alike) takes part in every round: which is faster.

    scripts/bench --batching [--duration 10] [--connections 32] [--jobs 600] [--rounds 2]

Needs the torch extra (docs/models.md). Prints a table and writes
bench-results/batching.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import drain, drive, load_tool, progress, server  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

MODEL = "examples.embedding_model:Embedder"
ONNX_MODEL = "examples.embedding_onnx:OnnxEmbedder"
SENTENCE = "The delivery was quick, the box was intact and the product works as described."
#: One row per call, as many calls at once as there are executor threads: no batching.
ONE_ROW = {"max_batch_size": 1, "concurrency": 4}


def models_file(folder: Path, knobs: dict[str, int], spec: str = MODEL) -> Path:
    name = "-".join(f"{k}{v}" for k, v in knobs.items()) or "own"
    path = folder / f"models-{spec.rpartition(':')[2]}-{name}.toml"
    lines = ["[models.default]", f'spec = "{spec}"']
    lines += [f"{k} = {v}" for k, v in knobs.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def load_args(doc: str) -> argparse.Namespace:
    """The options of the embedding-model benchmarks (this one and bench_peers)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=600, help="jobs per drain")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results")
    return parser.parse_args()


def main() -> None:
    args = load_args(__doc__)
    folder = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    variants = {
        "batched": models_file(folder, {}),
        "one row": models_file(folder, ONE_ROW),
        "onnx batched": models_file(folder, {}, ONNX_MODEL),
    }
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {"sync": [], "queued": []} for v in variants
    }
    progress("the model alone, in this process (PyTorch, then ONNX Runtime)")
    alone = {"pytorch": model_alone(MODEL), "onnx": model_alone(ONNX_MODEL)}
    redis_server = RedisServer(folder / "redis", free_port())
    url = redis_server.start()
    try:
        for round_ in range(1, args.rounds + 1):
            for name, path in variants.items():
                progress(f"round {round_}/{args.rounds}, {name}: sync")
                with server(url, models_file=path, workers=0) as (port, _):
                    base = f"http://127.0.0.1:{port}"
                    drive(base + "/predict", {"input": SENTENCE}, {}, _warm(args))
                    runs[name]["sync"].append(
                        drive(base + "/predict", {"input": SENTENCE}, {}, args)
                    )
                progress(f"round {round_}/{args.rounds}, {name}: queued drain")
                rate = drain(url, MODEL, SENTENCE, args.jobs, models_file=path)
                runs[name]["queued"].append({"rps": rate})
    finally:
        redis_server.stop()
    report(runs, alone, args)


def model_alone(spec: str, seconds: float = 3.0) -> dict[int, float]:
    """Rows/s of the example's forward pass at batch sizes 1, 32 and 64, with no server."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    module, _, name = spec.partition(":")
    model = getattr(importlib.import_module(module), name)()
    model.setup()
    rates = {}
    for size in (1, 32, 64):
        rows: list[str | list[str]] = [SENTENCE] * size
        model.predict_batch(rows)
        began, done = time.perf_counter(), 0
        while time.perf_counter() - began < seconds:
            model.predict_batch(rows)
            done += size
        rates[size] = done / (time.perf_counter() - began)
    return rates


def _warm(args: argparse.Namespace) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "duration": 2})


def report(
    runs: dict[str, dict[str, list[dict[str, float]]]],
    alone: dict[str, dict[int, float]],
    args: argparse.Namespace,
) -> None:
    def median(name: str, path: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name][path])

    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load": f"{args.connections} connections ({load_tool()}), {args.duration:g} s; "
        f"drains of {args.jobs} jobs; median of {args.rounds} interleaved rounds",
        "runs": runs,
        "model_alone_rows_per_s": alone,
    }
    print(f"\nall-MiniLM-L6-v2, {results['machine']}; {results['load']}\n")
    print("| path | batched rows/s | one row per call rows/s | factor | batched p99 ms |")
    print("|---|---|---|---|---|")
    for path in ("sync", "queued"):
        batched, single = median("batched", path, "rps"), median("one row", path, "rps")
        p99 = f"{median('batched', path, 'p99_ms'):.0f}" if path == "sync" else "-"
        results[path] = {"batched": batched, "one_row": single, "factor": batched / single}
        print(f"| {path} | {batched:,.1f} | {single:,.1f} | {batched / single:.2f}x | {p99} |")
    for runtime, rates in alone.items():
        print(
            f"\nthe model alone on {runtime} (no server): "
            + ", ".join(f"batch {n}: {rate:,.1f} rows/s" for n, rate in rates.items())
            + f"; batch 32 over batch 1: {rates[32] / rates[1]:.2f}x"
        )
    print("\n| path | PyTorch rows/s | ONNX Runtime rows/s | ONNX over PyTorch | ONNX p99 ms |")
    print("|---|---|---|---|---|")
    for path in ("sync", "queued"):
        torch_rate, onnx_rate = median("batched", path, "rps"), median("onnx batched", path, "rps")
        p99 = f"{median('onnx batched', path, 'p99_ms'):.0f}" if path == "sync" else "-"
        results[path]["onnx"] = onnx_rate
        factor = onnx_rate / torch_rate
        print(f"| {path} | {torch_rate:,.1f} | {onnx_rate:,.1f} | {factor:.2f}x | {p99} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batching.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'batching.json'}")


if __name__ == "__main__":
    main()

"""The service against the servers people pick instead, on one real model: the
sentence-embedding example (all-MiniLM-L6-v2 on PyTorch, examples/embedding_model.py)
served the same way by each, one sentence per request, under the same load (32
connections, wrk or the built-in generator), in interleaved rounds:

- this service, sync (POST /predict), with the model's own batching;
- this service, queued: async submits (POST /predict, Async-Mode: true) on an API-only
  replica, and rows/s from a drain of queued jobs by a replica with workers;
- FastAPI + uvicorn: a plain route, one model call per request (no batching);
- LitServe with its batching on (up to 64, a 10 ms window);
- BentoML with adaptive batching on (a batchable API, up to 64).

    scripts/bench_peers [--duration 10] [--connections 32] [--jobs 600] [--rounds 2]

The peers run from .venv-peers (scripts/bench_peers makes it). Prints a table and writes
bench-results/peers.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench import drain, drive, load_tool, progress, rss_mb, server  # noqa: E402
from scripts.bench_batching import MODEL, SENTENCE, _warm, load_args, models_file  # noqa: E402
from service.redis.embedded import RedisServer, free_port  # noqa: E402

PEERS = ROOT / ".venv-peers" / "bin"
PEER_DIR = ROOT / "scripts" / "peers"
SERVICE = "this service, sync"
QUEUED = "this service, queued"
#: What each peer serves and how a client calls it (one sentence per request).
PEER_CALLS: dict[str, tuple[Callable[[int], list[str]], str, dict[str, Any]]] = {
    "FastAPI + uvicorn": (
        lambda port: [str(PEERS / "python"), str(PEER_DIR / "fastapi_app.py"), str(port)],
        "/predict",
        {"input": SENTENCE},
    ),
    "LitServe (batching)": (
        lambda port: [str(PEERS / "python"), str(PEER_DIR / "litserve_app.py"), str(port)],
        "/predict",
        {"input": SENTENCE},
    ),
    "BentoML (adaptive batching)": (
        lambda port: [
            str(PEERS / "bentoml"),
            "serve",
            "bentoml_service:Embeddings",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        "/predict",
        {"sentences": [SENTENCE]},
    ),
}
VERSIONS = ("torch", "transformers", "fastapi", "uvicorn", "litserve", "bentoml")


def process_tree(pid: int) -> set[int]:
    """A process and every process below it (the peers fork workers)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {pid}, True
    while grew:
        below = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    return tree


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and every process below it."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError, RuntimeError):  # gone, or a zombie without memory
            total += rss_mb(member)
    return total


def answer_ok(url: str, body: dict[str, Any]) -> bool:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def peer(name: str, log: Path) -> Iterator[tuple[str, dict[str, Any], int]]:
    """Starts a peer on a free port, in its own session; yields (url, body, pid) once it
    answers a prediction (model loaded); stops its whole process group after."""
    command, path, body = PEER_CALLS[name]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("VIRTUAL_ENV", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command(port), cwd=PEER_DIR, env=env, stdout=out, stderr=out, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}{path}"
    try:
        deadline = time.monotonic() + 300
        while not answer_ok(url, body):  # start-up: the model loads first
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start; see {log}")
            time.sleep(0.5)
        yield url, body, proc.pid
    finally:
        members = process_tree(proc.pid)  # workers may leave the group: noted before
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the rest of its group
        for member in members - {proc.pid}:  # and whatever left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(member, signal.SIGKILL)


def versions() -> dict[str, str]:
    script = (
        "import importlib.metadata as m, json, sys; "
        f"print(json.dumps({{p: m.version(p) for p in {list(VERSIONS)!r}}}))"
    )
    out = subprocess.run(
        [str(PEERS / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    found: dict[str, str] = json.loads(out.stdout)
    found["python"] = platform.python_version()
    return found


def measure(url: str, body: dict[str, Any], pid: int, args: argparse.Namespace) -> dict[str, float]:
    idle = tree_rss_mb(pid)
    drive(url, body, {}, _warm(args))
    run = drive(url, body, {}, args)
    return {**run, "rows_per_s": run["rps"], "idle_rss_mb": idle}


def main() -> None:
    args = load_args(__doc__)
    folder = Path(tempfile.mkdtemp(prefix="bench-peers-"))
    own = models_file(folder, {})
    runs: dict[str, list[dict[str, float]]] = {SERVICE: [], QUEUED: []}
    runs.update({name: [] for name in PEER_CALLS})
    redis_server = RedisServer(folder / "redis", free_port())
    redis_url = redis_server.start()
    try:
        for round_ in range(1, args.rounds + 1):
            progress(f"round {round_}/{args.rounds}: {SERVICE}")
            # No MAX_QUEUE: nothing drains the submits (API-only), and a fast machine's
            # 10 s of them pass the default limit of 100,000 jobs (429s after that).
            with server(redis_url, models_file=own, workers=0, max_queue=0) as (port, proc):
                url = f"http://127.0.0.1:{port}/predict"
                runs[SERVICE].append(measure(url, {"input": SENTENCE}, proc.pid, args))
                progress(f"round {round_}/{args.rounds}: {QUEUED} (submits)")
                submits = drive(url, {"input": SENTENCE}, {"Async-Mode": "true"}, args)
            progress(f"round {round_}/{args.rounds}: {QUEUED} (a drain of {args.jobs} jobs)")
            rows = drain(redis_url, MODEL, SENTENCE, args.jobs, models_file=own)
            runs[QUEUED].append({**submits, "rows_per_s": rows})
            for name in PEER_CALLS:
                progress(f"round {round_}/{args.rounds}: {name}")
                with peer(name, folder / "peers.log") as (url, body, pid):
                    runs[name].append(measure(url, body, pid, args))
    finally:
        redis_server.stop()
    report(runs, versions(), args)


def report(
    runs: dict[str, list[dict[str, float]]], found: dict[str, str], args: argparse.Namespace
) -> None:
    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if key in r]
        return statistics.median(values) if values else None

    table = {
        name: {
            key: median(name, key)
            for key in ("rps", "rows_per_s", "p50_ms", "p99_ms", "idle_rss_mb")
        }
        for name in runs
    }
    table[QUEUED]["idle_rss_mb"] = table[SERVICE]["idle_rss_mb"]
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores",
        "load": f"{args.connections} connections ({load_tool()}), {args.duration:g} s a run; "
        f"drains of {args.jobs} jobs; median of {args.rounds} interleaved rounds",
        "versions": found,
        "table": table,
        "runs": runs,
    }
    print(f"\nall-MiniLM-L6-v2, one sentence a request; {results['machine']}; {results['load']}")
    print(", ".join(f"{k} {v}" for k, v in found.items()) + "\n")
    print("| server | req/s | rows/s | p50 ms | p99 ms | idle RSS MB |")
    print("|---|---|---|---|---|---|")

    def cell(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    for name, row in table.items():
        print(
            f"| {name} | {cell(row['rps'], ',.1f')} | {cell(row['rows_per_s'], ',.1f')} "
            f"| {cell(row['p50_ms'], '.0f')} | {cell(row['p99_ms'], '.0f')} "
            f"| {cell(row['idle_rss_mb'], '.0f')} |"
        )
    print(
        f"\n{QUEUED}: req/s, p50 and p99 of the async submits (an API-only replica); rows/s "
        f"of a drain of {args.jobs} queued jobs. Idle RSS: the server's processes after "
        "start-up and one prediction (the service's Redis not counted)."
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'peers.json'}")


if __name__ == "__main__":
    main()

"""CLI: settings from env and flags, then the app, then serve."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from .app import create_app
from .embedded import DataDirMismatch, RedisBinaryNotFound
from .errors import ModelLoadError
from .executor import calls_running
from .logs import setup_logging
from .loop import use_event_loop
from .partitioning import PartitionMismatch
from .settings import load_settings
from .tenants import KeysFileError


async def _run_without_http(app: web.Application) -> None:
    """A worker-only replica: the app's resources and workers, no listening socket."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()  # runs start-up: models, Redis, workers
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    logging.getLogger("service").info("worker-only replica running (SERVE_HTTP=false)")
    await stop.wait()
    await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: bad settings: {problems}", file=sys.stderr)
        sys.exit(2)
    setup_logging(settings.log_level, settings.log_format)
    try:
        app = create_app(settings)
    except KeysFileError as exc:
        print(f"error: cannot start: API_KEYS_FILE: {exc}", file=sys.stderr)
        sys.exit(2)
    use_event_loop(settings.loop)
    try:
        if not settings.serve_http:
            asyncio.run(_run_without_http(app))
            return
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            shutdown_timeout=settings.shutdown_grace_seconds,
            print=lambda msg: logging.getLogger("service").info(msg.strip()),
        )
    except (ModelLoadError, DataDirMismatch, RedisBinaryNotFound, PartitionMismatch) as exc:
        # One clear line naming what is wrong and the cause; no traceback.
        print(f"error: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    _exit_without_waiting_for_model_threads()


def _exit_without_waiting_for_model_threads() -> None:
    """Everything was stopped within SHUTDOWN_GRACE_SECONDS; a model call that is still
    running in a thread cannot be interrupted, and the interpreter would wait for it at
    exit (its thread pool joins its threads). Leave without waiting: its result was
    dropped already, and its job is still pending for another replica."""
    running = calls_running()
    if not running:
        return
    logging.getLogger("service").warning(
        "exiting with %d model call(s) still running: their results are dropped (queued jobs "
        "went back to the queue for other replicas)",
        running,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

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

from service.app import create_app
from service.errors import ModelLoadError
from service.execution.executor import calls_running
from service.execution.loop import use_event_loop
from service.execution.streams import streams_running
from service.http import server
from service.http.tenants import KeysFileError
from service.observability.logs import setup_logging
from service.redis.embedded import DataDirMismatch, RedisBinaryNotFound
from service.redis.partitioning import PartitionMismatch
from service.settings import Settings, load_settings


class AddressInUse(RuntimeError):
    """The HTTP port cannot be bound."""


async def _serve(app: web.Application, settings: Settings) -> None:
    """Runs the app until SIGTERM or SIGINT: its resources and workers, and (unless
    SERVE_HTTP=false) the HTTP server; then stops it within SHUTDOWN_GRACE_SECONDS."""
    log = logging.getLogger("service")
    runner = server.runner(app, shutdown_timeout=settings.shutdown_grace_seconds)
    await runner.setup()  # runs start-up: models, Redis, workers
    try:
        if settings.serve_http:
            site = web.TCPSite(runner, settings.host, settings.port)
            try:
                await site.start()
            except OSError as exc:
                why = os.strerror(exc.errno) if exc.errno else str(exc)
                raise AddressInUse(
                    f"cannot listen on {settings.host}:{settings.port}: {why} (another "
                    "process has the port? choose another with PORT or --port)"
                ) from None
            log.info("serving on http://%s:%d (Ctrl+C to stop)", settings.host, settings.port)
        else:
            log.info("worker-only replica running (SERVE_HTTP=false)")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
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
        asyncio.run(_serve(app, settings))
    except (
        ModelLoadError,
        DataDirMismatch,
        RedisBinaryNotFound,
        PartitionMismatch,
        AddressInUse,
    ) as exc:
        # One clear line naming what is wrong and the cause; no traceback.
        print(f"error: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)
    _exit_without_waiting_for_model_threads()


def _exit_without_waiting_for_model_threads() -> None:
    """Everything was stopped within SHUTDOWN_GRACE_SECONDS; a model call that is still
    running in a thread cannot be interrupted, and the interpreter would wait for it at
    exit (its thread pool joins its threads). Leave without waiting: its result was
    dropped already, and its job is still pending for another replica."""
    running = calls_running() + streams_running()
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

"""CLI: settings from env and flags, then the app, then serve."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from aiohttp import web
from pydantic import ValidationError

from .app import create_app
from .errors import ModelLoadError
from .loop import use_event_loop
from .settings import load_settings


def main(argv: Sequence[str] | None = None) -> None:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        print(f"error: bad settings: {problems}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = create_app(settings)
    use_event_loop(settings.loop)
    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            access_log=None,
            shutdown_timeout=settings.shutdown_grace_seconds,
            print=lambda msg: logging.getLogger("service").info(msg.strip()),
        )
    except ModelLoadError as exc:
        # One clear line naming the model and the cause; no traceback.
        print(f"error: cannot start: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

"""Serving the app: aiohttp's runner, with errors caught before any route is reached (a
request line or header the parser refuses) answered in the JSON error shape and logged in
one line, as every other error is."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)


class _JsonErrors(RequestHandler):
    """aiohttp's connection handler, but its own error answers (a malformed request: a
    header over 8,190 bytes, control characters, a bare CR or LF, too many headers) are
    JSON, logged as one line: anyone can send them, they are not faults of the server."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "Internal server error."
        else:
            why = _first_line(message or (str(exc) if exc is not None else ""))
            log.warning("refused a malformed request from %s (%d): %s", request.remote, status, why)
            text = f"The request is malformed: {why}." if why else "The request is malformed."
        if request.writer.output_size > 0:  # part of an answer went out: nothing to add
            raise ConnectionError("an answer was under way; the connection is closed")
        body = orjson.dumps({"error": text})
        response = web.Response(status=status, body=body, content_type="application/json")
        response.force_close()
        return response


def _first_line(message: str) -> str:
    """What the parser said, without the bytes it quotes (its first line, up to them)."""
    line = message.strip().split("\n", 1)[0].split(": b'", 1)[0].split(': b"', 1)[0]
    return line.rstrip(" :.")[:200]


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """`web.AppRunner` whose connections answer parser errors as JSON (`_JsonErrors`)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server; only its connection handler differs
        return server


def runner(app: web.Application, **kwargs: Any) -> Runner:
    """A runner of ``app`` as `python -m service` serves it (no access log of aiohttp's own:
    the wrapper of every route logs each request)."""
    return Runner(app, access_log=None, **kwargs)

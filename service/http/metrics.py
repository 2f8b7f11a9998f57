"""GET /metrics: the Prometheus text format, with the queue figures read at scrape time."""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.http import state
from service.redis.connection import REDIS_FAILURES

log = logging.getLogger(__name__)

#: Queue figures are read from Redis at most this often; scrapes in between (and
#: concurrent ones) share one read. /metrics is open to anyone who reaches the port.
QUEUE_FIGURES_MAX_AGE = 1.0


async def metrics(request: web.Request) -> web.Response:
    """
    ---
    summary: Prometheus metrics
    description: >-
      HTTP requests and latency by route; predictions by model, mode and status; model call
      latency and batch sizes; queue figures (stream length, group lag, pending, dead
      letters: totals, and per partition), read from Redis at most once a second. Scale
      workers on `queue_group_lag`.
    tags: [health]
    responses:
      "200":
        description: Prometheus text exposition format.
        content:
          text/plain:
            schema: {type: string}
    """
    app = request.app
    registry = app[state.METRICS]
    if state.REDIS in app:
        partitions = app[state.PARTITIONS]
        try:
            await registry.queue_figures(app[state.REDIS], partitions, QUEUE_FIGURES_MAX_AGE)
        except REDIS_FAILURES as exc:
            log.warning("queue figures not refreshed: %s", exc)
    return web.Response(body=registry.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

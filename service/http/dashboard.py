"""The dashboard: one page (/dashboard) and its assets, served from the package (no CDN,
no build step), and the JSON it draws from (/dashboard/api/*), read from Redis so every
replica shows the same.

Who sees what: with neither API_KEY nor API_KEYS_FILE, everything (like the rest of the
API); ADMIN_API_KEY, everything; a tenant's key (of API_KEYS_FILE; API_KEY is the default
tenant's then), that tenant's jobs and figures alone. The page sends the key it is given
as a header, never a cookie, so no other site can make a browser use it. Dead letters are
the admin routes' own (/admin/dead-letters), called by the page with the admin key.
"""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from service.errors import BadRequest, NotFound, Unauthorized
from service.http import state
from service.http.io import json_response
from service.http.jobs import parse_id
from service.http.models import model_view
from service.http.schemas import NOT_FOUND_MESSAGE
from service.job import Status
from service.observability import overview
from service.observability.activity import BUCKET_SECONDS, ENDINGS

#: The page and its assets: every file the page loads, by the name it is asked for.
STATIC = Path(__file__).parent / "static"
_ASSETS = {
    "dashboard.js": ("dashboard.js", "text/javascript"),
    "dashboard.css": ("dashboard.css", "text/css"),
    "uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", "text/javascript"),
    "uPlot.min.css": ("vendor/uPlot.min.css", "text/css"),
}
#: The page may load only what this host serves, and send only to it.
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
#: How much of a job's input and result the look-up shows (characters of their JSON).
SHOWN_CHARS = 4000
_LISTED = {s.value for s in Status}


async def scope_of(request: web.Request) -> str | None:
    """Whose figures the caller sees: None for all, else one tenant's; Unauthorized for a
    missing or unknown key where keys are needed. A tenant's reads count against its
    rate, as its other requests do."""
    admin = request.app.get(state.ADMIN)
    if admin is not None:
        with contextlib.suppress(Unauthorized):
            admin.check(request)
            return None
    keys = request.app.get(state.TENANTS)
    if keys is None:
        return None
    tenant = request[state.TENANT] = keys.check(request)
    if tenant.rate:
        await request.app[state.LIMITER].admit(tenant)
    return tenant.name if keys.named else None


@functools.cache
def _bytes(name: str) -> bytes:
    """A file of the page, read once (a few KB, and the vendored library's 51 KB)."""
    return (STATIC / name).read_bytes()


def _file(name: str, content_type: str) -> web.Response:
    response = web.Response(body=_bytes(name), content_type=content_type)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = _POLICY
    return response


async def dashboard_page(request: web.Request) -> web.Response:
    """The page: it asks for a key when its data answers 401."""
    response = _file("dashboard.html", "text/html")
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


async def dashboard_asset(request: web.Request) -> web.Response:
    """One of the page's scripts or styles (the charting library is vendored)."""
    found = _ASSETS.get(request.match_info["name"])
    if found is None:
        raise NotFound("No such dashboard asset.")
    return _file(*found)


async def dashboard_overview(request: web.Request) -> web.Response:
    """The queue now, the last minute's rates, the last five minutes' queue wait and run
    time, the replicas alive, and the charts' points from ``since`` (Unix seconds; at
    most the last hour)."""
    scope = await scope_of(request)
    since = _since(request.query.get("since", "0"))
    app = request.app
    redis, partitions = app[state.REDIS], app[state.PARTITIONS]
    now = time.time()
    queue = await overview.queue_now(redis, app[state.SCRIPTS], partitions, scope)
    read = await overview.buckets(
        redis, partitions.names, min(since, now - overview.LATENCY_SECONDS), scope
    )
    alive = await overview.replicas(redis, partitions.names)
    return json_response(
        {
            "scope": "all" if scope is None else scope or "default",
            "now": now,
            "bucket_seconds": BUCKET_SECONDS,
            "queue": queue,
            **overview.summary(read),
            # A tenant sees how many replicas and workers serve, not who they are.
            "replicas": alive if scope is None else [],
            "replicas_alive": len(alive),
            "workers": sum(int(r.get("workers", 0)) for r in alive),
            "series": [overview.point(start, c, now) for start, c in read if start >= since],
        }
    )


async def dashboard_jobs(request: web.Request) -> web.Response:
    """The latest jobs that ended (newest first), or the oldest queued or running, with
    ``status`` and ``model`` when given."""
    scope = await scope_of(request)
    status = request.query.get("status", "")
    model = request.query.get("model", "")
    if status and status not in _LISTED:
        raise BadRequest(f"status must be one of {', '.join(sorted(_LISTED))}.")
    if len(model) > 200:
        raise BadRequest("model is at most 200 characters.")
    app = request.app
    partitions = app[state.PARTITIONS]
    if status in ("queued", "processing"):
        jobs = await overview.waiting_jobs(app[state.SCRIPTS], partitions, scope, status, model)
    else:
        jobs = await overview.ended_jobs(app[state.REDIS], partitions, scope, status, model)
    return json_response({"items": jobs, "statuses": sorted(_LISTED), "endings": ENDINGS})


async def dashboard_job(request: web.Request) -> web.Response:
    """One job's record and its timeline (created, started, finished, attempts, dead
    letter, webhook deliveries); 404 for a job of another tenant, as for one unknown."""
    scope = await scope_of(request)
    prediction_id = parse_id(request.match_info["prediction_id"])
    app = request.app
    redis, partitions = app[state.REDIS], app[state.PARTITIONS]
    raw = await redis.hgetall(partitions.record(prediction_id))
    fields = _texts(raw)
    if not fields or (scope is not None and fields.get("tenant", "") != scope):
        raise NotFound(NOT_FOUND_MESSAGE)
    dead = None
    if fields.get("dead_entry"):
        keys = partitions.of(prediction_id)
        entries = await redis.xrange(keys.dead_letters, fields["dead_entry"], fields["dead_entry"])
        if entries:
            letter = _texts(entries[0][1])
            dead = {"reason": letter.get("reason"), "at": _number(letter.get("at"))}
    return json_response(_job_view(prediction_id, fields, dead))


def _job_view(prediction_id: str, fields: dict[str, str], dead: dict[str, Any] | None) -> Any:
    named = ("created_at", "started_at", "finished_at", "requeued_at", "webhook_at")
    times = {name: _number(fields.get(name)) for name in named}
    timeline: list[dict[str, Any]] = [
        {"at": times["created_at"], "event": "created"},
        {"at": times["requeued_at"], "event": "replayed from the dead letters"},
        {"at": times["started_at"], "event": f"started (attempt {fields.get('attempts', '0')})"},
        {"at": dead and dead["at"], "event": f"dead-lettered: {dead and dead['reason']}"},
        {"at": times["finished_at"], "event": f"ended {fields.get('status')}"},
    ]
    if fields.get("webhook_status"):
        attempts = fields.get("webhook_attempts", "1")
        timeline.append(
            {
                "at": times["webhook_at"],
                "event": f"webhook {fields['webhook_status']} (attempt {attempts})",
            }
        )
    return {
        "id": prediction_id,
        "status": fields.get("status"),
        "model": fields.get("model"),
        "tenant": fields.get("tenant") or "default",
        "priority": fields.get("priority") or "normal",
        "attempts": int(fields.get("attempts") or 0),
        "error": fields.get("error") or None,
        "request_id": fields.get("request_id") or None,
        "webhook": fields.get("webhook") or None,
        "webhook_events": fields.get("webhook_events") or None,
        "webhook_status": fields.get("webhook_status") or None,
        "dead_letter": dead,
        **times,
        "input": _shown(fields.get("input")),
        "result": _shown(fields.get("result")),
        "timeline": sorted((t for t in timeline if t["at"]), key=lambda t: float(t["at"] or 0)),
    }


async def dashboard_models(request: web.Request) -> web.Response:
    """The models this replica serves, each as GET /models/{name} describes it (here for
    the admin key too, which the API's own routes do not take)."""
    await scope_of(request)
    registry = request.app[state.MODELS]
    return json_response(
        {"items": [model_view(request.app, name) for name in sorted(registry.models)]}
    )


async def dashboard_tenants(request: web.Request) -> web.Response:
    """Each tenant the caller may see, its limits (rate, burst, max_queued, weight) and
    its use of them: jobs queued or running now, submits per second over the last minute,
    and the requests its rate allows at once now."""
    scope = await scope_of(request)
    app = request.app
    keys = app.get(state.TENANTS)
    tenants = [t for t in keys.named if scope is None or t.name == scope] if keys else []
    redis, partitions = app[state.REDIS], app[state.PARTITIONS]
    names = partitions.names
    rates = await overview.tenant_rates(redis, names)
    if scope is None:
        queue = await overview.queue_now(redis, app[state.SCRIPTS], partitions, None)
        queued = queue["by_tenant"]
    else:
        queue = await overview.queue_now(redis, app[state.SCRIPTS], partitions, scope)
        queued = {scope: queue["total"]}
    most = app[state.SETTINGS].max_queue
    pipe = redis.pipeline(transaction=False)
    for tenant in tenants:
        pipe.hmget(names.rate_bucket(tenant.name), ["tokens", "at"])
    buckets = await pipe.execute() if tenants else []
    now = time.time()
    items = []
    for tenant, (tokens, at) in zip(tenants, buckets, strict=True):
        left = None
        if tenant.rate:  # what the bucket holds now: as stored, refilled since
            left = float(tenant.burst)
            if tokens is not None and at is not None:
                refilled = float(tokens) + max(0.0, now - float(at)) * tenant.rate
                left = min(left, refilled)
        items.append(
            {
                "name": tenant.name,
                "rate": tenant.rate or None,
                "burst": tenant.burst if tenant.rate else None,
                # Without a quota of its own, MAX_QUEUE bounds it (0: nothing does).
                "max_queued": tenant.max_queued or most or None,
                "weight": tenant.weight,
                "queued": queued.get(tenant.name, 0),
                "submitted_per_second": rates.get(tenant.name, 0.0),
                "requests_allowed_now": None if left is None else int(left),
            }
        )
    return json_response({"items": items})


def _since(raw: str) -> float:
    try:
        since = float(raw)
    except ValueError:
        raise BadRequest(f"since={raw[:40]!r} is not a time (Unix seconds).") from None
    if not 0 <= since < 1e11:
        raise BadRequest("since must be a time in Unix seconds.")
    return since


def _texts(raw: Any) -> dict[str, str]:
    return {k.decode(): v.decode(errors="replace") for k, v in (raw or {}).items()}


def _number(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _shown(value: str | None) -> str | None:
    if value is None:
        return None
    return value if len(value) <= SHOWN_CHARS else value[:SHOWN_CHARS] + " ..."


#: The dashboard's routes: the page and assets are public; the data checks keys itself.
DASHBOARD_ROUTES: list[web.RouteDef] = [
    web.get("/dashboard", dashboard_page, allow_head=False),
    web.get("/dashboard/assets/{name}", dashboard_asset, allow_head=False),
    web.get("/dashboard/api/overview", dashboard_overview, allow_head=False),
    web.get("/dashboard/api/jobs", dashboard_jobs, allow_head=False),
    web.get("/dashboard/api/jobs/{prediction_id}", dashboard_job, allow_head=False),
    web.get("/dashboard/api/models", dashboard_models, allow_head=False),
    web.get("/dashboard/api/tenants", dashboard_tenants, allow_head=False),
]

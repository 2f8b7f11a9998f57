"""The URL table: every route, its handler, and whether it needs the API key."""

from __future__ import annotations

from aiohttp import web

from service.http import state
from service.http.admin import (
    admin_off,
    list_dead_letters,
    purge_dead_letter,
    purge_dead_letters,
    replay_dead_letter,
    replay_dead_letters,
)
from service.http.answers import UNMATCHED, answered, unmatched
from service.http.bulk import predict_batch, predict_batch_with_model
from service.http.dashboard import DASHBOARD_ROUTES
from service.http.docs import setup_docs
from service.http.files import prediction_file
from service.http.health import live, ready
from service.http.jobs import cancel_prediction, get_prediction, prediction_events
from service.http.metrics import metrics
from service.http.models import get_model, list_models
from service.http.openai import (
    chat_completions,
    completions,
    embeddings,
    get_v1_model,
    list_v1_models,
)
from service.http.openai_batches import (
    cancel_batch,
    create_batch,
    delete_file,
    file_content,
    get_batch,
    get_file,
    upload_file,
)
from service.http.predict import predict, predict_with_model
from service.http.tenants import Tenants
from service.observability.tracing import Tracing

# One prediction: any id but "batch" (that path is POST /predict/batch alone).
_PREDICTION = "/predict/{prediction_id:(?!batch$)[^/]+}"

#: Every route, and whether it is public. A route needs the API key (when API_KEY is set)
#: unless it says public here; the Swagger page and its spec (under /docs) are public too.
ROUTES: list[tuple[web.RouteDef, bool]] = [
    (web.post("/predict", predict), False),
    (web.post("/predict/batch", predict_batch), False),
    (web.get(_PREDICTION, get_prediction, allow_head=False), False),
    (web.delete(_PREDICTION, cancel_prediction), False),
    (web.get(_PREDICTION + "/events", prediction_events, allow_head=False), False),
    (web.get(_PREDICTION + "/files/{name}", prediction_file, allow_head=False), False),
    (web.get("/models", list_models, allow_head=False), False),
    (web.get("/models/{name}", get_model, allow_head=False), False),
    (web.post("/models/{name}/predict", predict_with_model), False),
    (web.post("/models/{name}/predict/batch", predict_batch_with_model), False),
    # OpenAI-compatible: the same keys, tenants and limits; errors in OpenAI's shape.
    (web.get("/v1/models", list_v1_models, allow_head=False), False),
    (web.get("/v1/models/{model}", get_v1_model, allow_head=False), False),
    (web.post("/v1/embeddings", embeddings), False),
    (web.post("/v1/chat/completions", chat_completions), False),
    (web.post("/v1/completions", completions), False),
    (web.post("/v1/files", upload_file), False),
    (web.get("/v1/files/{file_id}", get_file, allow_head=False), False),
    (web.delete("/v1/files/{file_id}", delete_file), False),
    (web.get("/v1/files/{file_id}/content", file_content, allow_head=False), False),
    (web.post("/v1/batches", create_batch), False),
    (web.get("/v1/batches/{batch_id}", get_batch, allow_head=False), False),
    (web.post("/v1/batches/{batch_id}/cancel", cancel_batch), False),
    (web.get("/health/live", live, allow_head=False), True),
    (web.get("/health/ready", ready, allow_head=False), True),
    (web.get("/metrics", metrics, allow_head=False), True),
]

#: The admin routes: they need ADMIN_API_KEY (and answer 403 when it is not set).
ADMIN_ROUTES: list[web.RouteDef] = [
    web.get("/admin/dead-letters", list_dead_letters, allow_head=False),
    web.post("/admin/dead-letters/replay", replay_dead_letters),
    web.post("/admin/dead-letters/{prediction_id}/replay", replay_dead_letter),
    web.delete("/admin/dead-letters", purge_dead_letters),
    # Any id but "replay" (that path is POST /admin/dead-letters/replay alone).
    web.delete("/admin/dead-letters/{prediction_id:(?!replay$)[^/]+}", purge_dead_letter),
]


def add_routes(
    app: web.Application,
    keys: Tenants | None = None,
    admin_key: str = "",
    tracing: Tracing | None = None,
    dashboard: bool = True,
) -> None:
    """Adds every route, the Swagger page (its spec security follows ``keys``) and, last,
    the dashboard (with ``dashboard``: its page, assets and data, which checks keys
    itself), the route that answers what no other matches with a JSON 404 or 405; then wraps every
    handler in ``answered``: request ids, errors as JSON, metrics, and the key check (when
    ``keys`` is given: API_KEY, or the tenants of API_KEYS_FILE) on every route not marked
    public, ADMIN_API_KEY on the admin routes; with ``tracing``, each in a server span."""
    admin = Tenants(api_key=admin_key) if admin_key else None
    if admin is not None:
        app[state.ADMIN] = admin  # the dashboard's data takes the admin key too
    public_handlers = {route.handler for route, public in ROUTES if public}
    admin_handlers = {route.handler for route in ADMIN_ROUTES}
    app[state.OPENAPI_SPEC] = setup_docs(
        app,
        [route for route, _ in ROUTES] + ADMIN_ROUTES,
        public_handlers,
        admin_handlers,
        auth=keys is not None,
        rate_limited=keys is not None and bool(keys.keys_file),
        admin_auth=bool(admin_key),
    )
    if dashboard:
        app.router.add_routes(DASHBOARD_ROUTES)
        public_handlers |= {route.handler for route in DASHBOARD_ROUTES}
    app.router.add_route("*", "/{path:.*}", unmatched)
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        handler, needed = route.handler, keys
        if handler is unmatched:
            label, needed = UNMATCHED, None
        else:
            label = resource.canonical
            if handler in admin_handlers:
                # Without ADMIN_API_KEY they are off: 403, whatever was sent.
                handler, needed = (handler, admin) if admin_key else (admin_off, None)
            elif handler in public_handlers or label.startswith("/docs"):
                needed = None  # the Swagger page and its spec (under /docs) are public too
        # aiohttp has no public way to wrap a registered handler, and aiohttp-swagger3
        # registers its own routes; tests/test_ops.py checks that every route is wrapped.
        wrapped = answered(handler, label, needed)
        if tracing is not None:
            wrapped = tracing.traced(wrapped, label)
        route._handler = wrapped  # type: ignore[assignment]

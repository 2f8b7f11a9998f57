"""The URL table: every route, its handler, and whether it needs the API key."""

from __future__ import annotations

from aiohttp import web

from .. import state
from .answers import UNMATCHED, answered, unmatched
from .docs import setup_docs
from .health import live, ready
from .jobs import cancel_prediction, get_prediction, prediction_events
from .metrics import metrics
from .models import get_model, list_models
from .predict import predict, predict_batch, predict_with_model

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
    (web.get("/models", list_models, allow_head=False), False),
    (web.get("/models/{name}", get_model, allow_head=False), False),
    (web.post("/models/{name}/predict", predict_with_model), False),
    (web.get("/health/live", live, allow_head=False), True),
    (web.get("/health/ready", ready, allow_head=False), True),
    (web.get("/metrics", metrics, allow_head=False), True),
]


def add_routes(app: web.Application, key: str = "") -> None:
    """Adds every route, the Swagger page (its spec security follows ``key``) and, last,
    the route that answers what no other matches with a JSON 404 or 405; then wraps every
    handler in ``answered``: request ids, errors as JSON, metrics, and the API key (when
    ``key`` is set) on every route not marked public."""
    public_handlers = {route.handler for route, public in ROUTES if public}
    app[state.OPENAPI_SPEC] = setup_docs(
        app, [route for route, _ in ROUTES], public_handlers, auth=bool(key)
    )
    app.router.add_route("*", "/{path:.*}", unmatched)
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.handler is unmatched:
            label, needs_key = UNMATCHED, False
        else:
            label = resource.canonical
            # The Swagger page and its spec (under /docs) are public too.
            needs_key = route.handler not in public_handlers and not label.startswith("/docs")
        # aiohttp has no public way to wrap a registered handler, and aiohttp-swagger3
        # registers its own routes; tests/test_api.py checks that every route is wrapped.
        wrapped = answered(route.handler, label, key if needs_key else "")
        route._handler = wrapped  # type: ignore[assignment]

"""The URL table: every route, its handler, and whether it needs the API key."""

from __future__ import annotations

from aiohttp import web

from .. import state
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


def add_routes(app: web.Application, auth: bool) -> None:
    """Adds every route and the Swagger page (its spec security follows ``auth``), and
    notes which routes are public for the auth middleware."""
    public_handlers = {route.handler for route, public in ROUTES if public}
    app[state.OPENAPI_SPEC] = setup_docs(
        app, [route for route, _ in ROUTES], public_handlers, auth=auth
    )
    # Matched by route object in the auth middleware.
    app[state.PUBLIC_ROUTES] = frozenset(
        route
        for route in app.router.routes()
        if route.handler in public_handlers
        or (route.resource is not None and route.resource.canonical.startswith("/docs"))
    )

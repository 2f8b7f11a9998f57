"""Handlers that describe the models this replica serves."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from service.http import state
from service.http.io import json_response


async def list_models(request: web.Request) -> web.Response:
    """
    ---
    summary: The models this service answers for
    tags: [models]
    responses:
      "200":
        description: Model names and the default one.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ModelList"}
    """
    return json_response(request.app[state.MODELS].describe())


async def get_model(request: web.Request) -> web.Response:
    """
    ---
    summary: One model's kind, version, input and output schema, and batch settings
    tags: [models]
    parameters:
      - $ref: "#/components/parameters/ModelName"
    responses:
      "200":
        description: The model.
        content:
          application/json:
            schema: {$ref: "#/components/schemas/ModelInfo"}
      "404": {$ref: "#/components/responses/NotFound"}
    """
    return json_response(model_view(request.app, request.match_info["name"]))


def model_view(app: web.Application, name: str) -> dict[str, Any]:
    """A model as GET /models/{name} describes it, with how this replica batches it."""
    registry = app[state.MODELS]
    model = registry.get(name)
    batcher = app[state.BATCHERS][model.name]
    return {
        **model.describe(),
        "default": model.name == registry.default,
        "batch": {  # as this replica batches it: the settings, or the model's own
            "max_batch_size": batcher.max_size,
            "max_batch_delay_ms": batcher.max_delay * 1000,
            "concurrency": batcher.concurrency or None,
        },
    }

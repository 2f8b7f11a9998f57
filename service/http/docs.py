"""The OpenAPI spec and Swagger UI at /docs, with each loaded model's input schema."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_swagger3 import SwaggerDocs, SwaggerInfo, SwaggerUiSettings

from service import __version__
from service.http.schemas import CANCEL_AFTER, WEBHOOK_URL
from service.models import ModelRegistry

_COMPONENTS = Path(__file__).parent / "openapi" / "components.yaml"


def setup_docs(
    app: web.Application,
    routes: list[web.RouteDef],
    public: Collection[Callable[..., Any]] = (),
    admin: Collection[Callable[..., Any]] = (),
    *,
    auth: bool = False,
    admin_auth: bool = False,
    rate_limited: bool = False,
) -> dict[str, Any]:
    """Adds ``routes`` with their docstring specs and the UI; answers the live spec dict.
    With ``auth`` every operation whose handler is neither ``public`` nor ``admin`` asks for
    the bearer key (and, with ``rate_limited``, may answer 429), and with ``admin_auth``
    the ``admin`` ones ask for the admin key;
    without them the spec shows no such security (no Authorize button, no locks)."""
    docs = SwaggerDocs(
        app,
        validate=False,
        info=SwaggerInfo(
            title="Model service",
            version=__version__,
            description="Predictions from your models, answered at once or queued on a "
            'Redis Stream. Every error is JSON: {"error": "..."}.',
        ),
        components=str(_COMPONENTS),
        # No external validator: the page must work without internet access.
        swagger_ui_settings=SwaggerUiSettings(path="/docs/", validatorUrl=None),
    )
    spec = docs.spec
    spec["components"]["schemas"]["Webhook"]["pattern"] = WEBHOOK_URL  # one source
    spec["components"]["parameters"]["CancelAfter"]["schema"]["pattern"] = CANCEL_AFTER
    docs.add_routes(routes)
    # The spec was validated as each route was added; the compiled validator is large and
    # no longer needed.
    docs.spec_validate = None
    _secure(spec, routes, public, admin, auth=auth, admin_auth=admin_auth, limited=rate_limited)
    return spec


def _secure(
    spec: dict[str, Any],
    routes: list[web.RouteDef],
    public: Collection[Callable[..., Any]],
    admin: Collection[Callable[..., Any]],
    *,
    auth: bool,
    admin_auth: bool,
    limited: bool,
) -> None:
    """Each operation's security (and, ``limited``, its 429); the schemes in use only."""
    for route in routes:
        operation = spec["paths"][_spec_path(route.path)][route.method.lower()]
        if route.handler in admin:
            if admin_auth:
                operation["security"] = [{"admin": []}]
        elif auth and route.handler not in public:
            operation["security"] = [{"bearer": []}]
            if limited:  # every tenant's request counts against its rate
                operation["responses"].setdefault(
                    "429", {"$ref": "#/components/responses/RateLimited"}
                )
        # Callbacks inline, not as $refs: client generators (openapi-python-client) do not
        # follow a $ref there.
        for name, callback in operation.get("callbacks", {}).items():
            operation["callbacks"][name] = resolved(spec, callback)
    schemes = spec["components"]["securitySchemes"]
    if not auth:
        schemes.pop("bearer", None)
    if not admin_auth:
        schemes.pop("admin", None)
    if not schemes:
        spec["components"].pop("securitySchemes")


def _spec_path(path: str) -> str:
    """The OpenAPI path of an aiohttp route path ('{name:regex}' becomes '{name}')."""
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def resolved(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``node`` with its local $refs followed."""
    while "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return copy.deepcopy(node)


def _to_openapi30(schema: Any, defs_prefix: str) -> Any:
    """A pydantic (JSON Schema 2020-12) schema rewritten in the OpenAPI 3.0 dialect."""
    if isinstance(schema, list):
        return [_to_openapi30(item, defs_prefix) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _to_openapi30(v, defs_prefix) for k, v in schema.items() if k != "$defs"}
    if "$ref" in out and out["$ref"].startswith("#/$defs/"):
        out["$ref"] = "#/components/schemas/" + defs_prefix + out["$ref"].removeprefix("#/$defs/")
    for key in ("anyOf", "oneOf"):
        options = out.get(key)
        if options and {"type": "null"} in options:
            rest = [o for o in options if o != {"type": "null"}]
            out.pop(key)
            out.update(rest[0] if len(rest) == 1 else {key: rest})
            out["nullable"] = True
    if "const" in out:
        out["enum"] = [out.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(out.get(bound), int | float) and not isinstance(out[bound], bool):
            out[plain], out[bound] = out[bound], True
    out.pop("prefixItems", None)
    return out


def schema_name(model: str) -> str:
    """The PascalCase stem of a model's schema names ('iris-v2' -> 'IrisV2')."""
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]+", model))


def add_model_schemas(spec: dict[str, Any], registry: ModelRegistry) -> None:
    """Documents ``POST /models/<name>/predict`` and ``.../predict/batch`` for each model
    with its own input schema (``<Name>PredictRequest``, ``<Name>BulkRequest``)."""
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    template = spec["paths"]["/models/{name}/predict"]["post"]
    bulk_template = spec["paths"]["/models/{name}/predict/batch"]["post"]
    stems: set[str] = set()
    for name, model in registry.models.items():
        stem = schema_name(name) or "Model"
        while stem in stems:  # 'a-b' and 'a_b' both make 'AB'
            stem += "X"
        stems.add(stem)
        raw = model.input_schema
        for def_name, definition in raw.get("$defs", {}).items():
            schemas[stem + def_name] = _to_openapi30(definition, stem)
        input_schema = _to_openapi30(raw, stem)
        input_schema.setdefault("description", f"Input of model {name!r} ({model.kind}).")
        form = _file_fields(input_schema, model.file_fields) if model.file_fields else None
        _requests(schemas, stem, name, input_schema)
        # A body that succeeds as it stands ("Try it out"), with no webhook in it: given on
        # the media type, as one whole body (a schema-level example would be merged with
        # generated fields by some tools).
        example = model.example()
        single = _operation(template, name, model.kind, f"{stem}PredictRequest", "predict")
        bulk = _operation(bulk_template, name, model.kind, f"{stem}BulkRequest", "predict_batch")
        if example is not None:
            single["requestBody"]["content"]["application/json"]["example"] = {"input": example}
            bulk["requestBody"]["content"]["application/json"]["example"] = {
                "inputs": [example] * 2
            }
        if form is not None:
            single["requestBody"]["content"]["multipart/form-data"] = {"schema": form}
        spec["paths"][f"/models/{name}/predict"] = {"post": single}
        spec["paths"][f"/models/{name}/predict/batch"] = {"post": bulk}
        if name == registry.default:
            spec["paths"]["/predict"]["post"]["requestBody"] = single["requestBody"]
            spec["paths"]["/predict/batch"]["post"]["requestBody"] = bulk["requestBody"]
    _openai_models(spec, registry)


#: The OpenAI-compatible routes of each model task, and their request schemas.
_OPENAI_ROUTES = {
    "embeddings": {"/v1/embeddings": "V1EmbeddingsRequest"},
    "generation": {
        "/v1/chat/completions": "V1ChatRequest",
        "/v1/completions": "V1CompletionRequest",
    },
}


def _openai_models(spec: dict[str, Any], registry: ModelRegistry) -> None:
    """The ``model`` of each OpenAI-compatible request: one of the models of its task; a
    route that no model here serves is left out of the spec (it answers 400)."""
    schemas = spec["components"]["schemas"]
    for task, routes in _OPENAI_ROUTES.items():
        names = sorted(name for name, model in registry.models.items() if model.task == task)
        for path, schema in routes.items():
            if not names:
                del spec["paths"][path]
                continue
            properties = schemas[schema]["properties"]
            properties["model"] = {**properties["model"], "enum": names, "example": names[0]}


_FILE_URL = {
    "type": "string",
    "format": "uri",
    "description": "A file: an http(s) URL the service fetches, or a data: URI.",
}
_FILE_PART = {"type": "string", "format": "binary", "description": "A file."}


def _file_fields(input_schema: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """Marks a model's file fields in its JSON input schema as URI strings (in place), and
    answers the schema of its multipart/form-data body: the file fields binary, the other
    fields and the request's options as parts of their own."""
    options = {
        "webhook": {"type": "string", "format": "uri"},
        "webhook_events": {"type": "string", "description": "done,failed,... (or a JSON list)"},
        "priority": {"type": "string", "enum": ["high", "normal", "low"]},
    }
    if fields == ("",):
        input_schema.clear()
        input_schema.update(_FILE_URL)
        return {
            "type": "object",
            "required": ["input"],
            "properties": {"input": _FILE_PART, **options},
        }
    properties = input_schema.get("properties", {})
    parts: dict[str, Any] = {}
    for name, field in properties.items():
        if name in fields:
            nullable = "anyOf" in field
            properties[name] = {**_FILE_URL, "nullable": True} if nullable else dict(_FILE_URL)
            parts[name] = _FILE_PART
        else:
            parts[name] = field
    required = [n for n in input_schema.get("required", []) if n in parts]
    return {"type": "object", "required": required, "properties": {**parts, **options}}


def _requests(schemas: dict[str, Any], stem: str, name: str, input_schema: Any) -> None:
    """``<Stem>PredictRequest`` and ``<Stem>BulkRequest``: a model's request bodies."""
    extras = {
        "webhook": {"$ref": "#/components/schemas/Webhook"},
        "webhook_events": {"$ref": "#/components/schemas/WebhookEvents"},
        "priority": {"$ref": "#/components/schemas/Priority"},
    }
    schemas[f"{stem}PredictRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["input"],
        "properties": {"input": input_schema, **extras},
    }
    schemas[f"{stem}BulkRequest"] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["inputs"],
        "properties": {
            "inputs": {
                "type": "array",
                "minItems": 1,
                "description": f"Inputs for model {name!r} (at most MAX_BULK).",
                "items": input_schema,
            },
            **extras,
        },
    }


def _operation(
    template: dict[str, Any], model: str, kind: str, schema: str, verb: str
) -> dict[str, Any]:
    """The operation of one model's route, from the template of ``/models/{name}/...``."""
    operation = copy.deepcopy(template)
    what = "Queue many inputs for" if verb == "predict_batch" else "Predict with"
    operation["summary"] = f"{what} model {model!r} ({kind})"
    operation["parameters"] = [
        p for p in operation["parameters"] if p["$ref"] != "#/components/parameters/ModelName"
    ]
    media = {"schema": {"$ref": f"#/components/schemas/{schema}"}}
    operation["requestBody"] = {"required": True, "content": {"application/json": media}}
    operation["operationId"] = f"{verb}_{model}"
    return operation

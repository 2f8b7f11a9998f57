"""Schemathesis hooks: rules of the API that OpenAPI cannot state.

A `webhook` or a `priority` in a predict body, and a `Cancel-After` header, need an async
submit (the API answers 422, or 400 for the header, otherwise): rules across a header and
the body that a schema cannot express. Cases that carry one are sent as async submits,
unless their Async-Mode header is deliberately invalid.

A multipart body that breaks the schema of `POST /v1/files` may lose what breaks it on
its way to the wire (the encoder leaves out parts it cannot write), so that a valid
upload is sent as an invalid one; such cases are sent without the file part instead,
which is what they stand for: a body the route must refuse.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    meta = getattr(case, "meta", None)
    negative = meta is not None and str(meta.generation.mode) == "negative"
    if case.operation.path == "/v1/files" and negative and isinstance(case.body, dict):
        case.body = {"purpose": "batch"}
    headers = case.headers if case.headers is not None else {}
    in_body = isinstance(case.body, dict) and ("webhook" in case.body or "priority" in case.body)
    sync = str(headers.get("Async-Mode", "false")).lower() == "false"
    if sync and (in_body or "Cancel-After" in headers):
        headers["Async-Mode"] = "true"
        case.headers = headers
    return case

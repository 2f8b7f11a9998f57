"""Schemathesis hooks: rules of the API that OpenAPI cannot state.

A `webhook` or a `priority` in a predict body, and a `Cancel-After` header, need an async
submit (the API answers 422, or 400 for the header, otherwise): rules across a header and
the body that a schema cannot express. Cases that carry one are sent as async submits,
unless their Async-Mode header is deliberately invalid.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    headers = case.headers if case.headers is not None else {}
    in_body = isinstance(case.body, dict) and ("webhook" in case.body or "priority" in case.body)
    sync = str(headers.get("Async-Mode", "false")).lower() == "false"
    if sync and (in_body or "Cancel-After" in headers):
        headers["Async-Mode"] = "true"
        case.headers = headers
    return case

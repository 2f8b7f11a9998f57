"""Schemathesis hooks: rules of the API that OpenAPI cannot state.

A `webhook` in a predict body needs an async submit (the API answers 422 otherwise), a
rule across a header and the body that a schema cannot express: cases that carry a
webhook are sent as async submits, unless their Async-Mode header is deliberately invalid.
"""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.hook
def map_case(ctx: Any, case: Any) -> Any:
    if isinstance(case.body, dict) and "webhook" in case.body:
        headers = case.headers if case.headers is not None else {}
        if str(headers.get("Async-Mode", "false")).lower() == "false":
            headers["Async-Mode"] = "true"
            case.headers = headers
    return case

"""HTTP bodies and views: what requests carry and what answers look like."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

_PORT = r"(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"


def _ipv6() -> str:
    """An IPv6 address as RFC 3986 spells it: eight groups, '::' for a run of zero groups,
    and possibly an IPv4 address as the last 32 bits."""
    group = "[0-9A-Fa-f]{1,4}"
    octet = "(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
    last32 = f"({group}:{group}|{octet}(\\.{octet}){{3}})"
    forms = [f"({group}:){{6}}{last32}", f"::({group}:){{5}}{last32}"]
    # h groups before '::' (at most `before` of them), then a fixed tail after it.
    tails = [
        f"({group}:){{4}}{last32}",
        f"({group}:){{3}}{last32}",
        f"({group}:){{2}}{last32}",
        f"{group}:{last32}",
        last32,
        group,
        "",
    ]
    for before, tail in enumerate(tails, start=1):
        forms.append(f"(({group}:){{0,{before - 1}}}{group})?::{tail}")
    return "(" + "|".join(f"({form})" for form in forms) + ")"


# A host name, an IPv4 address, or an IPv6 address in brackets (exactly the forms
# urllib accepts, so a URL the schema admits is never refused for its syntax).
_HOST = r"([A-Za-z0-9.-]+|\[" + _ipv6() + r"\])"
#: An http(s) URL with a host name, an IPv4 address or a bracketed IPv6 address (the host
#: policy and DNS are checked at submit). The OpenAPI spec's Webhook schema takes its
#: pattern from here.
# The path's "no white space" names U+0085 too: pydantic's regex engine counts it as
# white space, the ECMA one of OpenAPI does not, and a URL the spec admits must not be
# refused.
WEBHOOK_URL = r"^https?://" + _HOST + r"(:" + _PORT + r")?([/?#][^\s\x85]*)?$"

#: A Cancel-After duration: a number above zero, with at most 9 digits before the point
#: (leading zeros aside) and 6 after it (one bound for every unit), and a unit. The
#: OpenAPI spec's CancelAfter parameter takes its pattern from here. (No look-ahead:
#: pydantic's regex engine has none.)
CANCEL_AFTER = (
    r"^(0*[1-9][0-9]{0,8}(\.[0-9]{1,6})?"
    r"|0*\.([1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}"
    r"|0000[1-9][0-9]?|00000[1-9]))"
    r"(ms|s|m|h)$"
)


class WebhookFields(BaseModel):
    """The optional webhook of a submit (POST /predict and POST /predict/batch)."""

    model_config = ConfigDict(extra="forbid")

    # "" (the default, never validated) means none; a given URL, null included, is checked.
    webhook: Annotated[str, StringConstraints(max_length=2048, pattern=WEBHOOK_URL)] = ""
    webhook_events: Annotated[
        list[Literal["done", "failed", "aborted", "canceled", "output"]], Field(min_length=1)
    ] = [
        "done",
        "failed",
    ]


class SubmitFields(WebhookFields):
    """What a submit may carry beside its input(s): a webhook, and the jobs' priority (a
    sync request that gives one, even "normal", is refused: see `given_priority`)."""

    priority: Literal["high", "normal", "low"] = "normal"

    def given_priority(self) -> str:
        """The priority the body gave ("" when it gave none)."""
        return self.priority if "priority" in self.model_fields_set else ""


class PredictRequest(SubmitFields):
    """Body of POST /predict. The input's own type is checked by the model's schema."""

    input: Any


class BulkRequest(SubmitFields):
    """Body of POST /predict/batch (each input is checked by the model's schema)."""

    inputs: list[Any]


ACCEPTED_MESSAGE = "Request received. Processing asynchronously."
NOT_FOUND_MESSAGE = "Prediction ID not found."

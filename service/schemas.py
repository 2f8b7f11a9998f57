"""Request bodies, job records and response shapes; the one status enum."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints


class Status(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def final(self) -> bool:
        return self in (Status.DONE, Status.FAILED, Status.CANCELED)


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
WEBHOOK_URL = r"^https?://" + _HOST + r"(:" + _PORT + r")?([/?#][^\s]*)?$"


class WebhookFields(BaseModel):
    """The optional webhook of a submit (POST /predict and POST /predict/batch)."""

    model_config = ConfigDict(extra="forbid")

    # "" (the default, never validated) means none; a given URL, null included, is checked.
    webhook: Annotated[str, StringConstraints(max_length=2048, pattern=WEBHOOK_URL)] = ""
    webhook_events: Annotated[list[Literal["done", "failed"]], Field(min_length=1)] = [
        "done",
        "failed",
    ]


class PredictRequest(WebhookFields):
    """Body of POST /predict. The input's own type is checked by the model's schema."""

    input: Any


class BulkRequest(WebhookFields):
    """Body of POST /predict/batch (each input is checked by the model's schema)."""

    inputs: list[Any]


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _number(value: bytes | None) -> float | None:
    return None if value is None else float(value)


class JobRecord(BaseModel):
    """One queued prediction as stored in its Redis hash (written by the queue's submit
    script, moved on by the result store's scripts)."""

    prediction_id: str
    status: Status
    model: str
    input: Any
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    result: Any = None
    error: str | None = None
    request_id: str | None = None
    webhook: str | None = None

    @classmethod
    def from_redis(cls, prediction_id: str, fields: Mapping[bytes, bytes]) -> JobRecord:
        result = fields.get(b"result")
        return cls(
            prediction_id=prediction_id,
            status=Status(fields[b"status"].decode()),
            model=fields[b"model"].decode(),
            input=orjson.loads(fields[b"input"]),
            created_at=float(fields[b"created_at"]),
            started_at=_number(fields.get(b"started_at")),
            finished_at=_number(fields.get(b"finished_at")),
            attempts=int(fields.get(b"attempts", b"0")),
            result=None if result is None else orjson.loads(result),
            error=_text(fields.get(b"error")),
            request_id=_text(fields.get(b"request_id")) or None,
            webhook=_text(fields.get(b"webhook")) or None,
        )

    def to_view(self) -> dict[str, Any]:
        """The GET /predict/{id} answer, shaped as in API.md."""
        if self.status is Status.DONE:
            result = self.result
        elif self.status in (Status.FAILED, Status.CANCELED):
            result = None
        else:
            result = "processing"
        view: dict[str, Any] = {
            "prediction_id": self.prediction_id,
            "status": self.status.value,
            "output": {"input": self.input, "result": result},
            "model": self.model,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "attempts": self.attempts,
            "request_id": self.request_id,
        }
        if self.status is Status.FAILED:
            view["error"] = self.error
        return view


ACCEPTED_MESSAGE = "Request received. Processing asynchronously."
NOT_FOUND_MESSAGE = "Prediction ID not found."

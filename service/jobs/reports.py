"""What a worker says about each job it ends: the predictions counter and one log line
per job (under the worker's logger, with the fields a log search filters on)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from service.job import Entry, Outcome, Status
from service.observability.metrics import Metrics
from service.redis.words import Marked

log = logging.getLogger("service.jobs.worker")


def report_given_up(
    consumer: str,
    metrics: Metrics,
    entries: list[Entry],
    prior: Sequence[Status | Marked],
    tenant: str = "",
) -> None:
    """Counts and logs the jobs of a batch given up on before running (dead-lettered,
    timed out) or aborted (their Cancel-After passed); ``tenant``: whose stream they
    came from."""
    for entry, status in zip(entries, prior, strict=True):
        if status in (Marked.DEAD, Marked.EXPIRED):
            reason = "timed out" if status is Marked.EXPIRED else "dead-lettered"
            metrics.count_prediction(
                entry.model, "async", False, tenant, prediction_id=entry.prediction_id, error=reason
            )
            _log(consumer, logging.WARNING, entry, "failed", reason)
        elif status is Marked.ABORTED:
            metrics.count_prediction(
                entry.model, "async", "aborted", tenant, prediction_id=entry.prediction_id
            )
            _log(consumer, logging.INFO, entry, "aborted", "aborted: Cancel-After passed")


def report(
    consumer: str,
    metrics: Metrics,
    entries: list[Entry],
    outcomes: list[Outcome],
    tenant: str = "",
    started: float = 0.0,
) -> None:
    """Counts each job outcome and logs one line per job (INFO; failures WARNING);
    ``tenant``: whose stream they came from, ``started``: when their run began (Unix
    seconds; 0: unknown), for their queue wait and run time."""
    logs = log.isEnabledFor(logging.INFO)
    ran = time.time() - started if started else None
    for entry, outcome in zip(entries, outcomes, strict=True):
        waited = max(0.0, started - entry.created_at) if started and entry.created_at else None
        if outcome.canceled:
            metrics.count_prediction(
                entry.model, "async", "canceled", tenant,
                prediction_id=entry.prediction_id, error=outcome.error, waited=waited, ran=ran,
            )  # fmt: skip
            _log(consumer, logging.INFO, entry, "canceled", outcome.error)
            continue
        metrics.count_prediction(
            entry.model, "async", outcome.ok, tenant,
            prediction_id=entry.prediction_id, error=outcome.error, waited=waited, ran=ran,
        )  # fmt: skip
        if not outcome.ok:
            _log(consumer, logging.WARNING, entry, "failed", f"failed: {outcome.error}")
        elif logs:
            _log(consumer, logging.INFO, entry, "done", "done")


def _log(consumer: str, level: int, entry: Entry, outcome: str, message: str) -> None:
    """One line about one job, with the fields a log search filters on."""
    extra = {
        "prediction_id": entry.prediction_id,
        "model": entry.model,
        "outcome": outcome,
        "request_id": entry.request_id or None,
        "consumer": consumer,
    }
    log.log(level, "job %s %s", entry.prediction_id, message, extra=extra)

"""What a worker says about each job it ends: the predictions counter and one log line
per job (under the worker's logger, with the fields a log search filters on)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from service.job import Entry, Outcome, Status
from service.observability.metrics import Metrics
from service.redis.words import Marked

log = logging.getLogger("service.jobs.worker")


def report_given_up(
    consumer: str, metrics: Metrics, entries: list[Entry], prior: Sequence[Status | Marked]
) -> None:
    """Counts and logs the jobs of a batch given up on before running (dead-lettered,
    timed out) or aborted (their Cancel-After passed)."""
    for entry, status in zip(entries, prior, strict=True):
        if status in (Marked.DEAD, Marked.EXPIRED):
            metrics.count_prediction(entry.model, "async", False)
            reason = "timed out" if status is Marked.EXPIRED else "dead-lettered"
            _log(consumer, logging.WARNING, entry, "failed", reason)
        elif status is Marked.ABORTED:
            metrics.count_prediction(entry.model, "async", "aborted")
            _log(consumer, logging.INFO, entry, "aborted", "aborted: Cancel-After passed")


def report(consumer: str, metrics: Metrics, entries: list[Entry], outcomes: list[Outcome]) -> None:
    """Counts each job outcome and logs one line per job (INFO; failures WARNING)."""
    logs = log.isEnabledFor(logging.INFO)
    for entry, outcome in zip(entries, outcomes, strict=True):
        if outcome.canceled:
            metrics.count_prediction(entry.model, "async", "canceled")
            _log(consumer, logging.INFO, entry, "canceled", outcome.error)
            continue
        metrics.count_prediction(entry.model, "async", outcome.ok)
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

"""When a job's time is up: the one place that decides it, for queued jobs and sync calls.

Two limits: JOB_TIMEOUT_SECONDS counts from submission (a queued job's wait included) and
ends the job 'failed, timed out'; a Cancel-After is the caller's own deadline, after which
a job that never started ends 'aborted' and one still running ends 'canceled'. mark.lua
applies both to a job before it starts (its record holds created_at and cancel_at); the
functions below decide what happens once it is running.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from service.job import Entry, Outcome, Status

#: A job still running when its Cancel-After passed (its result dropped).
CANCELED = Outcome(ok=False, error="canceled: ran past its Cancel-After", canceled=True)
#: A sync request whose Cancel-After passed before its call started.
ABORTED = Outcome(ok=False, error="aborted: not started within its Cancel-After")


@dataclass(frozen=True, slots=True)
class Wait:
    """How long to wait for a call: ``seconds`` (0: no bound), and whether running past it
    cancels its jobs (their Cancel-After) or fails them as timed out (the job limit)."""

    seconds: float = 0.0
    cancels: bool = False


def batch_wait(entries: Sequence[Entry], job_timeout: float, now: float) -> Wait:
    """The wait for one model call of a worker's batch: until JOB_TIMEOUT_SECONDS from the
    oldest one's submission (from now, for a job whose wait is not timed: a batch's), and
    no longer than every job's Cancel-After when each has one (a batch is cut short only
    when no job in it is wanted any more)."""
    limit = due = 0.0
    if job_timeout > 0:
        created = min(now if e.untimed_wait else e.created_at or now for e in entries)
        limit = max(created + job_timeout - now, 0.001)
    cancels = [e.cancel_at for e in entries]
    if all(cancels):
        due = max(max(cancels) - now, 0.001)
    if due and (not limit or due <= limit):
        return Wait(due, cancels=True)
    return Wait(limit)


def timed_out(job_timeout: float) -> Outcome:
    """The outcome of a job whose call ran past JOB_TIMEOUT_SECONDS."""
    return Outcome(
        ok=False, error=f"timed out: not finished within {job_timeout:g} s of submission"
    )


def settled(entry: Entry, outcome: Outcome, now: float) -> Outcome:
    """A finished call's outcome for one job: canceled if its Cancel-After passed while
    the call ran (whatever the model answered)."""
    return CANCELED if entry.cancel_at and now >= entry.cancel_at else outcome


def sync_wait(job_timeout: float, cancel_after: float) -> Wait:
    """The wait for a sync call: JOB_TIMEOUT_SECONDS, or its Cancel-After when sooner."""
    if cancel_after and (not job_timeout or cancel_after < job_timeout):
        return Wait(cancel_after, cancels=True)
    return _limit(job_timeout)


@functools.cache
def _limit(job_timeout: float) -> Wait:
    return Wait(job_timeout)  # the same for every request: made once


def ended(outcome: Outcome) -> Status:
    """How a job with this outcome ended."""
    if outcome.ok:
        return Status.DONE
    if outcome is ABORTED:
        return Status.ABORTED
    return Status.CANCELED if outcome.canceled else Status.FAILED


def sync_cut(started: bool) -> Outcome:
    """The outcome of a sync call whose Cancel-After passed: aborted if its batch had not
    started (its input never reaches the model), else canceled (its result is dropped; a
    process model's call is cut short)."""
    return CANCELED if started else ABORTED

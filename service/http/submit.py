"""Answering a predict request once it is parsed: a sync call's answer, a job queued
(and maybe waited for), a sync call kept as a record."""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from service.errors import PredictionFailed, PredictionTimeout
from service.execution.batching import Batcher
from service.http import state
from service.http.io import PredictBody, body_digest, client_gone, json_response, tenant_of, traced
from service.http.schemas import ACCEPTED_MESSAGE
from service.job import JobRecord, NewJob, Outcome, Status, prediction_view
from service.jobs import deadlines
from service.jobs.waiting import submit_and_wait
from service.redis.keys import idempotency_name


class Rules(NamedTuple):
    """What a predict request's headers ask for: queued or not, how long to wait for a
    queued job (Prefer: wait), its Idempotency-Key and its Cancel-After (seconds, 0: none)."""

    queued: bool
    wait: float
    key: str
    deadline: float


def past_wait(batcher: Batcher, future: Any, wait: deadlines.Wait) -> Outcome:
    """A sync call that ran past ``wait``: 504 past JOB_TIMEOUT_SECONDS, or the outcome
    of a call cut by its Cancel-After. (The caller awaits the call itself: a coroutine of
    its own here would cost every sync request about 1 us.)"""
    if not wait.cancels:
        raise PredictionTimeout(f"The prediction took longer than {wait.seconds:g} s.")
    return deadlines.sync_cut(batcher.started(future))


def sync_answer(
    request: web.Request,
    model: str,
    raw: Any,
    outcome: Outcome,
    prediction_id: str = "",
    began: float = 0.0,
) -> web.Response:
    """A sync request's answer (counted, with its run time from ``began`` when given):
    200 with its result; 500 when the model failed; 504 with the status when its
    Cancel-After ended it. With a webhook, the id of its record too."""
    metrics = request.app[state.METRICS]
    tenant = tenant_of(request)
    ran = time.time() - began if began else None
    if outcome.ok and not prediction_id:  # the usual answer, first
        metrics.count_prediction(model, "sync", True, tenant, ran=ran)
        return json_response({"input": raw, "result": orjson.Fragment(outcome.payload)})
    ended = deadlines.ended(outcome)
    metrics.count_prediction(
        model, "sync", outcome.ok or ended.value, tenant,
        prediction_id=prediction_id, error=outcome.error, ran=ran,
    )  # fmt: skip
    extra = {"prediction_id": prediction_id} if prediction_id else {}
    if outcome.ok:
        return json_response({"input": raw, "result": orjson.Fragment(outcome.payload), **extra})
    if ended is not Status.FAILED:
        view = {"input": raw, "result": None}
        return json_response(
            {"error": outcome.error, "status": ended.value, "output": view, **extra}, status=504
        )
    if extra:
        return json_response({"error": outcome.error, **extra}, status=500)
    raise PredictionFailed(outcome.error)


async def queue_job(
    request: web.Request,
    model: str,
    body: PredictBody,
    asked: Rules,
    prediction_id: str = "",
    digest_input: Any = None,
) -> tuple[str, web.Response]:
    """Queues the job (and waits for it with ``Prefer: wait``): 202 with its id, or 200
    with its record when it ended within the wait; and the job's id (an Idempotency-Key
    seen before: the first job's). ``prediction_id``: an id chosen
    already (its files are stored under it); ``digest_input``: what an Idempotency-Key
    compares in place of the input (a file input: the digests of its files)."""
    app = request.app
    events = ",".join(body.webhook_events) if body.webhook else ""
    priority = body.priority or "normal"
    tenant = tenant_of(request)
    key = asked.key
    job = NewJob(
        # With a key, in the key's partition: the key and its record share a slot.
        prediction_id or app[state.PARTITIONS].new_id(key),
        model,
        orjson.dumps(body.input),
        request[state.REQUEST_ID],
        idempotency_name(tenant, key) if key else "",
        body_digest(
            model,
            body.input if digest_input is None else digest_input,
            body.webhook,
            events,
            priority,
        )
        if key
        else "",
        body.webhook,
        events,
        waited=asked.wait > 0,
        priority=priority,
        cancel_after=asked.deadline,
        tenant=tenant,
        traceparent=traced(request),
    )
    if asked.wait <= 0:
        prediction_id = await app[state.QUEUE].submit(job)
        return prediction_id, accepted(prediction_id)
    prediction_id, record = await submit_and_wait(
        app[state.QUEUE],
        app[state.RESULTS],
        app[state.WAITERS],
        job,
        asked.wait,
        gone=lambda: client_gone(request),
    )
    if record is not None and record.status.final:
        applied = {"Preference-Applied": f"wait={asked.wait:g}"}
        return prediction_id, json_response(prediction_view(record), headers=applied)
    return prediction_id, accepted(prediction_id)


def accepted(prediction_id: str) -> web.Response:
    """202: the job is queued (its record can be read back at once)."""
    return json_response(
        {"prediction_id": prediction_id, "message": ACCEPTED_MESSAGE},
        status=202,
        headers={"Location": f"/predict/{prediction_id}"},
    )


async def keep_sync(
    request: web.Request,
    model: str,
    body: PredictBody,
    created: float,
    outcome: Outcome,
    prediction_id: str = "",
) -> str:
    """Records a sync request that named a webhook (its delivery due: the dispatchers post
    it as they post a queued job's) or that took or made files (their URLs name its id),
    final: answers its prediction id."""
    app = request.app
    ended = deadlines.ended(outcome)
    ran = ended is not Status.ABORTED
    record = JobRecord(
        prediction_id=prediction_id or app[state.PARTITIONS].new_id(),
        status=ended,
        model=model,
        input=body.input,
        created_at=created,
        started_at=created if ran else None,
        finished_at=time.time(),
        attempts=1 if ran else 0,
        error=outcome.error if ended is Status.FAILED else None,
        request_id=request[state.REQUEST_ID],
        webhook=body.webhook,
        tenant=tenant_of(request),
    )
    await app[state.RESULTS].keep_sync(record, ",".join(body.webhook_events), outcome)
    return record.prediction_id

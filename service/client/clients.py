"""`AsyncClient` (aiohttp) and `Client`, its blocking twin."""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, TypeVar

import aiohttp

from service.client.errors import (
    JobCanceledError,
    PredictionFailedError,
    PredictionTimeoutError,
    body_of,
    error_for,
    raise_for,
)
from service.client.events import STREAM_TIMEOUT, answer, follow

T = TypeVar("T")

#: Longest single long-poll a Job.result() makes (the server caps it too).
_POLL_SECONDS = 30.0


def _webhook_fields(webhook: str | None, events: list[str] | None) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if webhook is not None:
        fields["webhook"] = webhook
    if events is not None:
        fields["webhook_events"] = events
    return fields


def _form(value: Any, options: dict[str, Any]) -> aiohttp.FormData | None:
    """A multipart body when the input holds files (``Path`` values, or is one), with each
    file streamed from disk; None for an input without files (sent as JSON)."""
    if isinstance(value, PurePath):
        files, others = {"input": value}, {}
    elif isinstance(value, dict) and any(isinstance(v, PurePath) for v in value.values()):
        files = {k: v for k, v in value.items() if isinstance(v, PurePath)}
        others = {k: v for k, v in value.items() if not isinstance(v, PurePath)}
    else:
        return None
    form = aiohttp.FormData()
    for name, item in {**others, **options}.items():
        form.add_field(name, json.dumps(item), content_type="application/json")
    for name, path in files.items():
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        # aiohttp closes the file once it is sent.
        handle = Path(path).open("rb")  # noqa: SIM115
        form.add_field(name, handle, filename=path.name, content_type=kind)
    return form


@dataclass
class Job:
    """A queued prediction."""

    client: AsyncClient
    prediction_id: str

    async def status(self) -> dict[str, Any]:
        """The job's record (the GET /predict/{id} shape)."""
        return await self.client.get(self.prediction_id)

    async def result(self, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (public API)
        """The model's output once the job is done (long-polls; no busy loop).

        Raises PredictionFailedError if it failed, JobCanceledError if it was canceled (or
        aborted by its Cancel-After),
        PredictionTimeoutError if it is not final within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
            record = await self.client.get(
                self.prediction_id, wait=max(0.0, min(left, _POLL_SECONDS))
            )
            status = record["status"]
            if status == "done":
                return record["output"]["result"]
            if status == "failed":
                raise PredictionFailedError(200, record.get("error") or "failed", record)
            if status in ("canceled", "aborted"):
                raise JobCanceledError(200, f"The job was {status}.", record)
            if deadline is not None and time.monotonic() >= deadline:
                raise PredictionTimeoutError(
                    200, f"Job {self.prediction_id} is still {status}.", record
                )

    async def cancel(self) -> dict[str, Any]:
        """Cancels the job if it is still queued, or stops it if it streams (ConflictError
        if it runs a model that does not stream)."""
        return await self.client._call("DELETE", f"/predict/{self.prediction_id}")

    def stream(self) -> AsyncIterator[Any]:
        """The job's chunks as its model yields them, from the first, to the end (a model
        that does not stream: none); a dropped connection is made again, on any replica,
        resuming just after the last chunk received. Raises as ``result`` does when the
        job fails or is canceled."""
        client = self.client
        url = f"{client.base_url}/predict/{self.prediction_id}/events"
        return follow(client._http(), url, {})


class AsyncClient:
    def __init__(
        self,
        base_url: str = "http://localhost:8080",
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def __del__(self) -> None:
        # Used without `async with` and dropped: close the session instead of leaving it to
        # aiohttp's "Unclosed client session" warning.
        session, self._session = self._session, None
        if session is None or session.closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            task = loop.create_task(session.close())
            _closing.add(task)
            task.add_done_callback(_closing.discard)
            return
        # No loop runs any more: its transports went with it; mark both closed.
        connector = session.connector
        session.detach()
        if connector is not None:
            with contextlib.suppress(Exception):
                connector._close()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    async def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Any:
        """One request; a predict body whose input holds files goes as multipart."""
        form = None
        if isinstance(body, dict) and "input" in body:
            form = _form(body["input"], {k: v for k, v in body.items() if k != "input"})
        async with self._http().request(
            method,
            self.base_url + path,
            json=None if form is not None else body,
            data=form,
            headers=headers,
            params=params,
        ) as resp:
            payload = await body_of(resp)
            if resp.status >= 400:
                raise error_for(resp.status, payload)
            return payload

    @staticmethod
    def _path(model: str | None) -> str:
        return "/predict" if model is None else f"/models/{model}/predict"

    async def predict(self, value: Any, *, model: str | None = None) -> Any:
        """Predicts at once (sync mode); answers the model's output. ``Path`` values in
        the input (or an input that is one) are uploaded; a file in the output is its URL
        (see ``download``)."""
        body = await self._call("POST", self._path(model), {"input": value})
        return body["result"]

    async def stream(
        self, value: Any, *, model: str | None = None, queued: bool = True, **options: Any
    ) -> AsyncIterator[Any]:
        """The chunks of a model that streams, as it yields them. Queued (the default): the
        job is submitted (``options`` as for ``submit``) and followed, so a dropped
        connection resumes where it left off, on any replica. ``queued=False``: one sync
        request, the fastest to its first chunk, which cannot resume."""
        if queued:
            job = await self.submit(value, model=model, **options)
            async for chunk in job.stream():
                yield chunk
            return
        headers = {"Accept": "text/event-stream"}
        async with self._http().post(
            self.base_url + self._path(model),
            json={"input": value},
            headers=headers,
            timeout=STREAM_TIMEOUT,
        ) as response:
            async for chunk in answer(response):
                yield chunk

    async def submit(
        self,
        value: Any,
        *,
        model: str | None = None,
        idempotency_key: str | None = None,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
        priority: str | None = None,
        cancel_after: str | None = None,
    ) -> Job:
        """Queues a prediction; answers its Job. With ``webhook``, the final record is also
        POSTed there (for the outcomes in ``webhook_events``: "done", "failed", "aborted").
        ``priority``: "high", "normal" or "low"; ``cancel_after``: a duration ("30s") after
        which, if it has not started, it never runs (status "aborted")."""
        headers = {"Async-Mode": "true"}
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        if cancel_after:
            headers["Cancel-After"] = cancel_after
        payload: dict[str, Any] = {"input": value, **_webhook_fields(webhook, webhook_events)}
        if priority:
            payload["priority"] = priority
        body = await self._call("POST", self._path(model), payload, headers)
        return Job(self, body["prediction_id"])

    async def submit_many(
        self,
        values: list[Any],
        *,
        webhook: str | None = None,
        webhook_events: list[str] | None = None,
        priority: str | None = None,
        cancel_after: str | None = None,
    ) -> list[Job]:
        """Queues many inputs for the default model in one request (all or none); a
        ``webhook`` gets each job's final record; ``priority`` and ``cancel_after`` apply
        to every job, as in ``submit``."""
        payload: dict[str, Any] = {"inputs": values, **_webhook_fields(webhook, webhook_events)}
        if priority:
            payload["priority"] = priority
        headers = {"Cancel-After": cancel_after} if cancel_after else None
        body = await self._call("POST", "/predict/batch", payload, headers)
        return [Job(self, prediction_id) for prediction_id in body["prediction_ids"]]

    async def get(self, prediction_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        """A job's record; with ``wait``, as soon as it is final or ``wait`` seconds pass."""
        params = {"wait": f"{wait:g}"} if wait > 0 else None
        record: dict[str, Any] = await self._call("GET", f"/predict/{prediction_id}", params=params)
        return record

    async def models(self) -> dict[str, Any]:
        body: dict[str, Any] = await self._call("GET", "/models")
        return body

    async def download(self, url: str, target: str | Path) -> Path:
        """Writes a file of a prediction (a URL from its input or result: on the service,
        or presigned elsewhere) to ``target``, a chunk at a time; answers its path."""
        target = Path(target)
        full = url if "://" in url else self.base_url + url
        async with self._http().get(full) as resp:
            await raise_for(resp)
            out = await asyncio.to_thread(target.open, "wb")
            try:
                async for chunk in resp.content.iter_chunked(256 * 1024):
                    await asyncio.to_thread(out.write, chunk)
            finally:
                out.close()
        return target


#: Sessions being closed for clients that were dropped without closing them.
_closing: set[asyncio.Task[None]] = set()

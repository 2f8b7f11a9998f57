"""`Client`, the blocking twin of `AsyncClient`: the same calls, on a private event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from service.client.clients import AsyncClient, Job

T = TypeVar("T")


class SyncJob:
    """A queued prediction, for the blocking Client."""

    def __init__(self, client: Client, job: Job) -> None:
        self._client = client
        self._job = job
        self.prediction_id = job.prediction_id

    def status(self) -> dict[str, Any]:
        return self._client._run(self._job.status())

    def result(self, timeout: float | None = None) -> Any:
        return self._client._run(self._job.result(timeout))

    def cancel(self) -> dict[str, Any]:
        return self._client._run(self._job.cancel())

    def stream(self) -> Iterator[Any]:
        return self._client._iterate(self._job.stream())


class Client:
    """The blocking client: the same calls as AsyncClient, on a private event loop."""

    def __init__(self, base_url: str = "http://localhost:8080", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._async = AsyncClient(base_url, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._run(self._async.close())
            self._loop.close()

    def __del__(self) -> None:
        # Used without `with` and dropped: close the connection on the private loop.
        with contextlib.suppress(Exception):
            self.close()

    def predict(self, value: Any, *, model: str | None = None) -> Any:
        return self._run(self._async.predict(value, model=model))

    def submit(self, value: Any, **options: Any) -> SyncJob:
        """As AsyncClient.submit: model, idempotency_key, webhook, webhook_events, priority,
        cancel_after."""
        return SyncJob(self, self._run(self._async.submit(value, **options)))

    def submit_many(self, values: list[Any], **options: Any) -> list[SyncJob]:
        """As AsyncClient.submit_many: webhook, webhook_events, priority, cancel_after."""
        jobs = self._run(self._async.submit_many(values, **options))
        return [SyncJob(self, job) for job in jobs]

    def get(self, prediction_id: str, *, wait: float = 0.0) -> dict[str, Any]:
        return self._run(self._async.get(prediction_id, wait=wait))

    def stream(self, value: Any, **options: Any) -> Iterator[Any]:
        """As AsyncClient.stream: the chunks as the model yields them."""
        return self._iterate(self._async.stream(value, **options))

    def _iterate(self, chunks: AsyncIterator[Any]) -> Iterator[Any]:
        """An async iterator's items, one at a time, on the private loop."""
        try:
            while True:
                try:
                    yield self._run(chunks.__anext__())  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(Exception):
                self._run(chunks.aclose())  # type: ignore[attr-defined]

    def download(self, url: str, target: str | Path) -> Path:
        """Writes a file of a prediction to ``target`` (see AsyncClient.download)."""
        return self._run(self._async.download(url, target))

    def models(self) -> dict[str, Any]:
        return self._run(self._async.models())

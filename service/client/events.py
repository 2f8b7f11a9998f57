"""Server-sent events for the client: reading a stream of events, and following a queued
job's chunks across dropped connections (Last-Event-ID: nothing twice, nothing missed)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

from service.client.errors import JobCanceledError, PredictionFailedError, raise_for

#: Reconnections in a row before a follower gives up.
_RECONNECTS = 8
#: A stream sends a comment every 15 s: a minute of silence is a dead connection.
STREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)
_DROPPED = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError)


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    data: str
    id: str = ""


async def events(response: aiohttp.ClientResponse) -> AsyncIterator[Event]:
    """The events of a text/event-stream answer, as they arrive."""
    await raise_for(response)
    kind, event_id, pending = "message", "", b""
    data: list[str] = []
    async for piece in response.content.iter_any():
        pending += piece
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.rstrip(b"\r").decode()
            if not line:
                if data:
                    yield Event(kind, "\n".join(data), event_id)
                kind, data = "message", []
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                kind = value
            elif field == "data":
                data.append(value)
            elif field == "id":
                event_id = value


def ended(record: dict[str, Any]) -> bool:
    """Whether a job's record is final; raises for a job that failed or was canceled."""
    status = record["status"]
    if status == "failed":
        raise PredictionFailedError(200, record.get("error") or "failed", record)
    if status in ("canceled", "aborted"):
        raise JobCanceledError(200, f"The job was {status}.", record)
    return status == "done"


async def follow(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str]
) -> AsyncIterator[Any]:
    """The chunks of a queued job as its model yields them (from the start), to the end;
    a dropped connection is made again, resuming after the last chunk received."""
    last, dropped = "", 0
    while True:
        resume = {**headers, "Last-Event-ID": last} if last else headers
        try:
            async with session.get(url, headers=resume, timeout=STREAM_TIMEOUT) as response:
                async for event in events(response):
                    if event.kind == "output":
                        last, dropped = event.id, 0
                        yield json.loads(event.data)
                    elif event.kind == "status" and ended(json.loads(event.data)):
                        return
        except _DROPPED:
            pass
        # The stream ended before the job did (a dropped connection, a replica that
        # stopped): again, after a short and growing pause.
        dropped += 1
        if dropped > _RECONNECTS:
            raise ConnectionError(f"the stream of {url} dropped {dropped} times in a row")
        await asyncio.sleep(min(0.1 * 2**dropped, 5.0))


async def answer(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """The chunks of a sync stream as the model yields them (a sync stream cannot resume:
    its model ran for this request alone)."""
    async for event in events(response):
        if event.kind == "output":
            yield json.loads(event.data)
        elif event.kind == "error":
            body = json.loads(event.data)
            raise PredictionFailedError(200, body.get("error") or "failed", body)
        elif event.kind == "done":
            return

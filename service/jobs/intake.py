"""Taking file inputs in: an uploaded part, an input URL (fetched under the rules of
webhooks) or a data: URI, each written into a call's folder as it arrives, within
MAX_FILE_BYTES, its SHA-256 taken when an Idempotency-Key will compare it; refusals
counted. `service.jobs.files` then stores what was taken."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import mimetypes
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import aiohttp

from service.errors import BadRequest, InvalidInput, PayloadTooLarge
from service.jobs.webhooks import Policy, PublicResolver, check_url
from service.observability.metrics import Metrics

#: Bytes read from a request or a URL at a time; what is buffered before a disk write.
READ_CHUNK = 64 * 1024
WRITE_BUFFER = 256 * 1024
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,10}")


@dataclass(frozen=True, slots=True)
class FileSettings:
    """``max_bytes``: MAX_FILE_BYTES; ``ttl``: RESULT_TTL_SECONDS; ``presign``:
    BLOB_PRESIGN; ``urls``: where input URLs may point; ``url_timeout``: the longest fetch
    of one; ``spool``: the folder uploads are written to before they are stored."""

    max_bytes: int = 100 * 1024 * 1024
    ttl: int = 3600
    presign: bool = False
    urls: Policy = field(default_factory=lambda: Policy(hosts_setting="INPUT_URL_ALLOWED_HOSTS"))
    url_timeout: float = 30.0
    spool: Path = Path(tempfile.gettempdir())


@dataclass(slots=True)
class Taken:
    """One input file taken in: its field ("" for a whole input), its name in the store,
    where it lies now, its size and its SHA-256 (an Idempotency-Key compares them)."""

    field: str
    name: str
    path: Path
    size: int = 0
    digest: str = ""


def input_name(field: str, suffix: str) -> str:
    """The stored name of an input file: ``input.<field><suffix>`` (``input<suffix>``)."""
    return f"input.{field}{suffix}" if field else f"input{suffix}"


def suffix_of(filename: str, content_type: str = "") -> str:
    """A safe file suffix from a client's file name, else from a media type ("" if none)."""
    found = _SUFFIX.fullmatch(Path(filename or "").suffix)
    if found:
        return found.group().lower()
    guessed = mimetypes.guess_extension(content_type.split(";")[0].strip()) if content_type else ""
    return guessed or ""


class Intake:
    """Takes file inputs in under ``settings``, counting refusals in ``metrics``."""

    def __init__(self, settings: FileSettings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None

    def refuse(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.uploads_refused.labels(reason).inc()

    async def take_value(self, field: str, value: Any, folder: Path, keyed: bool) -> Taken:
        """A file field of a JSON input: an http(s) URL (fetched) or a data: URI (decoded),
        written into ``folder``. 422 for anything else, naming the field."""
        if isinstance(value, str) and value.startswith("data:"):
            return await self._decode(field, value, folder, keyed)
        if isinstance(value, str) and value.lower().startswith(("http://", "https://")):
            return await self._fetch(field, value, folder, keyed)
        raise InvalidInput(
            "A file field takes an uploaded file (multipart/form-data), an http(s) URL or "
            "a data: URI.",
            [{"loc": loc_of(field), "msg": "not a file, a URL or a data: URI", "type": "file"}],
        )

    async def _decode(self, field: str, value: str, folder: Path, keyed: bool) -> Taken:
        head, comma, data = value.partition(",")
        if not comma:
            self.refuse("malformed")
            raise BadRequest(f"The data: URI of {where(field)} has no comma before its data.")
        media, _, params = head[5:].partition(";")
        try:
            if params.split(";")[-1].strip().lower() == "base64":
                raw = base64.b64decode(data, validate=True)
            else:
                raw = unquote_to_bytes(data)
        except (binascii.Error, ValueError) as exc:
            self.refuse("malformed")
            raise BadRequest(
                f"The data: URI of {where(field)} is not valid base64: {exc}"
            ) from None
        if len(raw) > self.settings.max_bytes:
            raise self.too_large(field)
        name = input_name(field, suffix_of("", media))
        taken = Taken(field, name, folder / name)
        await asyncio.to_thread(taken.path.write_bytes, raw)
        taken.size = len(raw)
        if keyed:
            taken.digest = hashlib.sha256(raw).hexdigest()
        return taken

    async def _fetch(self, field: str, url: str, folder: Path, keyed: bool) -> Taken:
        """Fetches an input URL under the same rules as webhooks (INPUT_URL_ALLOWED_HOSTS,
        INPUT_URL_ALLOW_PRIVATE), no redirects followed, within INPUT_URL_TIMEOUT_SECONDS
        and MAX_FILE_BYTES."""
        try:
            await check_url(url, self.settings.urls, f"The URL of {where(field)}", loc_of(field))
            return await self._get(field, url, folder, keyed)
        except PayloadTooLarge:
            raise
        except InvalidInput:
            self.refuse("url")
            raise

    async def _get(self, field: str, url: str, folder: Path, keyed: bool) -> Taken:
        try:
            async with asyncio.timeout(self.settings.url_timeout):
                async with self._client().get(url, allow_redirects=False) as answer:
                    if answer.status != 200:
                        raise _url_failed(field, f"it answered {answer.status}")
                    suffix = suffix_of(Path(urlsplit(url).path).name, answer.content_type)
                    name = input_name(field, suffix)
                    taken = Taken(field, name, folder / name)
                    await self._write(answer.content, taken, keyed)
                    return taken
        except TimeoutError:
            raise _url_failed(
                field, f"it did not answer within {self.settings.url_timeout:g} s"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise _url_failed(field, f"it could not be fetched ({exc})") from None

    async def take_part(
        self,
        field: str,
        source: Any,
        filename: str,
        content_type: str,
        folder: Path,
        keyed: bool,
        idle: float,
    ) -> Taken:
        """An uploaded part, streamed to ``folder`` as it arrives (``idle``: the longest
        wait for its next bytes)."""
        name = input_name(field, suffix_of(filename, content_type))
        taken = Taken(field, name, folder / name)
        await self._write(_Chunks(source, idle), taken, keyed)
        return taken

    async def _write(self, source: Any, taken: Taken, keyed: bool) -> None:
        """Writes a stream of bytes (``read(n)`` or ``read_chunk(n)``) to the taken file:
        a buffer at a time, off the loop; 413 past MAX_FILE_BYTES (read no further)."""
        digest = hashlib.sha256() if keyed else None
        most = self.settings.max_bytes
        handle = await asyncio.to_thread(open, taken.path, "wb")
        try:
            buffer = bytearray()
            while True:
                chunk = await (
                    source.read(READ_CHUNK)
                    if hasattr(source, "read")
                    else source.read_chunk(READ_CHUNK)
                )
                if chunk:
                    taken.size += len(chunk)
                    if taken.size > most:
                        raise self.too_large(taken.field)
                    buffer += chunk
                    if digest is not None:
                        digest.update(chunk)
                if len(buffer) >= WRITE_BUFFER or (not chunk and buffer):
                    await asyncio.to_thread(handle.write, buffer)  # no copy: awaited
                    buffer.clear()
                if not chunk:
                    break
        finally:
            await asyncio.to_thread(handle.close)
        if digest is not None:
            taken.digest = digest.hexdigest()

    def too_large(self, field: str) -> PayloadTooLarge:
        self.refuse("too_large")
        limit = self.settings.max_bytes
        return PayloadTooLarge(
            f"The file of {where(field)} is larger than MAX_FILE_BYTES ({limit} bytes)."
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver = None if self.settings.urls.allow_private else PublicResolver()
            connector = aiohttp.TCPConnector(resolver=resolver, limit=64)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": "prediction-service"}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class _Chunks:
    """A multipart part read a chunk at a time, each within ``idle`` seconds."""

    def __init__(self, part: Any, idle: float) -> None:
        self._part = part
        self._idle = idle

    async def read_chunk(self, size: int) -> bytes:
        async with asyncio.timeout(self._idle):
            data: bytes = await self._part.read_chunk(size)
            return data


def loc_of(field: str) -> list[str]:
    return ["input", field] if field else ["input"]


def where(field: str) -> str:
    return f"input field {field!r}" if field else "the input"


def _url_failed(field: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"The URL of {where(field)} could not be fetched.",
        [{"loc": loc_of(field), "msg": why, "type": "file_url"}],
    )

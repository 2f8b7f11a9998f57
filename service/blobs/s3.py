"""The store for many hosts: a bucket of S3 (AWS, or anything that speaks it: SeaweedFS,
MinIO, Ceph...). BLOB_URL is ``s3://bucket/prefix``; the endpoint, the region and the
credentials come from the standard AWS variables (AWS_ENDPOINT_URL, AWS_REGION,
AWS_ACCESS_KEY_ID, ...), which botocore reads itself, so a role or a profile works too.

The semantics are the folder store's: a file is stored whole or not at all (one PUT, or a
multipart upload that is aborted on any failure), keys are validated the same way, and a
store that cannot be reached or refuses us raises StoreUnavailable, quickly (short
timeouts, one retry), so that the service answers 503 instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import uuid
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import (
    ClientError,
    ConnectionError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)

from service.blobs import CHUNK, Blob, StoreUnavailable

log = logging.getLogger(__name__)

#: Files up to this size go in one PUT; bigger ones in parts of this size (S3 wants at
#: least 5 MiB a part but the last, and at most 10,000 parts: files up to 50 GiB), so that
#: no more than about one part an upload is in memory.
PART = 5 * 1024 * 1024
#: Parts (or whole small files) in memory at once, over every upload of the replica: the
#: client holds a few copies of each while it signs and sends it (8 uploads at once in
#: 8 MiB parts, unbounded, grew the replica by 164 MB). Memory is bounded by this, not by
#: the number of uploads: they take turns, a part at a time.
PARTS_IN_FLIGHT = 2

#: How many keys one DeleteObjects takes at most (S3's limit).
DELETE_BATCH = 1000

#: The region when none is configured (an S3 clone ignores it, but signing needs one).
DEFAULT_REGION = "us-east-1"

#: Error codes that say the store refuses us, whatever the key: not a missing file but a
#: store that is misconfigured or down, which the service reports as unavailable.
_REFUSALS = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "RequestTimeTooSkewed",
        "NoSuchBucket",
        "SlowDown",
        "ServiceUnavailable",
        "InternalError",
    }
)

#: What a network that fails mid-way raises (botocore's own, or aiohttp's while a body is
#: read after the call returned).
_NETWORK = (
    ConnectionError,
    HTTPClientError,
    aiohttp.ClientError,
    asyncio.TimeoutError,
)

#: Credentials that are missing or cannot be fetched: the store cannot be used at all.
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _status(error: ClientError) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _missing(error: ClientError) -> bool:
    """The key is not there (HEAD answers a bare 404 with no code to tell a missing
    bucket from a missing key: ping tells the first)."""
    return _code(error) in {"NoSuchKey", "404", "NotFound"}


class S3Store:
    def __init__(self, url: str) -> None:
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise ValueError(f"BLOB_URL {url!r}: expected s3://bucket/prefix")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # One client for the store's life (it holds the connection pool), made on first
        # use: the constructor runs where no loop may be running yet.
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()
        self._buffers = asyncio.Semaphore(PARTS_IN_FLIGHT)

    def _name(self, key: str) -> str:
        """The object's name for ``key``: ``<prefix>/<key>``. A key is refused as the
        folder store refuses it (one that would lie outside the store, or is the store
        itself), and is normalized as a path is (``a//b``, ``a/./b``: ``a/b``), so that
        both stores agree on which keys name the same file."""
        clean = posixpath.normpath(key) if key else "."
        if key.startswith("/") or clean == "." or clean == ".." or clean.startswith("../"):
            raise ValueError(f"key {key!r} is outside the store")
        return f"{self.prefix}/{clean}" if self.prefix else clean

    async def _connect(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._stack.enter_async_context(self._create())
        return self._client

    @staticmethod
    def _create() -> Any:
        session = AioSession()
        # AWS_REGION (what the other SDKs read) first: botocore reads AWS_DEFAULT_REGION.
        region = (
            os.environ.get("AWS_REGION") or session.get_config_variable("region") or DEFAULT_REGION
        )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = AioConfig(
            # Short: an unreachable store is a 503 within seconds, not a hung request.
            connect_timeout=2,
            read_timeout=30,
            retries={"max_attempts": 2},
            # An endpoint of our own (SeaweedFS, MinIO...) has no bucket subdomains.
            s3={"addressing_style": "path"} if endpoint else None,
            signature_version="s3v4",
        )
        return session.create_client("s3", region_name=region, config=config)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """Turns what says the store is unreachable or refuses us into StoreUnavailable;
        anything else (a missing key, a bad argument) passes through."""
        where = f"the S3 store {self.url}"
        if self._client is not None:
            where += f" at {self._client.meta.endpoint_url}"
        try:
            yield
        except _NETWORK as exc:
            raise StoreUnavailable(f"{where} cannot be reached ({what}): {exc}") from exc
        except _NO_CREDENTIALS as exc:
            raise StoreUnavailable(f"{where} has no usable credentials ({what}): {exc}") from exc
        except ClientError as exc:
            status = _status(exc)
            if status >= 500 or status == 403 or _code(exc) in _REFUSALS:
                message = exc.response.get("Error", {}).get("Message") or ""
                raise StoreUnavailable(
                    f"{where} refused {what}: {status} {_code(exc)} {message}".rstrip()
                ) from exc
            raise

    def local(self, key: str) -> Path | None:
        return None

    async def put(self, key: str, source: Path) -> int:
        name = self._name(key)
        size = (await asyncio.to_thread(source.stat)).st_size
        client = await self._connect()
        with self._guard(f"storing {name}"):
            if size <= PART:
                async with self._buffers:
                    data = await asyncio.to_thread(source.read_bytes)
                    await client.put_object(Bucket=self.bucket, Key=name, Body=data)
                    return len(data)
            return await self._put_parts(client, name, source)

    async def _put_parts(self, client: Any, name: str, source: Path) -> int:
        """A multipart upload, a part read (in a thread) only once the previous one is
        sent: memory stays at about one part whatever the file's size. Any failure aborts
        the upload, so that no part lingers in the bucket (stored, and billed, unseen)."""
        started = await client.create_multipart_upload(Bucket=self.bucket, Key=name)
        upload = started["UploadId"]
        handle: IO[bytes] = await asyncio.to_thread(open, source, "rb")
        try:
            parts: list[dict[str, Any]] = []
            sent = 0
            while True:
                async with self._buffers:
                    data = await asyncio.to_thread(handle.read, PART)
                    if not data:
                        break
                    number = len(parts) + 1
                    answer = await client.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number, Body=data
                    )
                    sent += len(data)
                    del data  # gone before the next turn, not after
                parts.append({"ETag": answer["ETag"], "PartNumber": number})
            await client.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload, MultipartUpload={"Parts": parts}
            )
            return sent
        except BaseException:
            try:
                await client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            except Exception as exc:  # the store's own cleanup of stale uploads takes it
                log.warning("could not abort the upload of %s: %s", name, exc)
            raise
        finally:
            await asyncio.to_thread(handle.close)

    async def fetch(self, key: str, target: Path) -> None:
        name = self._name(key)
        client = await self._connect()
        part = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        with self._guard(f"reading {name}"):
            try:
                answer = await client.get_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(f"no file {key!r} in {self.url}") from exc
                raise
            try:
                async with answer["Body"] as body:
                    await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
                    handle: IO[bytes] = await asyncio.to_thread(open, part, "wb")
                    try:
                        async for chunk in body.iter_chunks(CHUNK):
                            await asyncio.to_thread(handle.write, chunk)
                    finally:
                        await asyncio.to_thread(handle.close)
                # Renamed into place only once whole: a reader never sees a part.
                await asyncio.to_thread(os.replace, part, target)
            except BaseException:
                await asyncio.to_thread(part.unlink, missing_ok=True)
                raise

    async def stat(self, key: str) -> Blob | None:
        name = self._name(key)
        client = await self._connect()
        with self._guard(f"looking up {name}"):
            try:
                answer = await client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as exc:
                if _missing(exc):
                    return None
                raise
        # The ETag as S3 gives it, quotes and all: it is what an HTTP ETag header holds.
        return Blob(
            int(answer["ContentLength"]), str(answer["ETag"]), answer["LastModified"].timestamp()
        )

    async def read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        name = self._name(key)
        if end <= start:
            return  # no bytes (and a Range header cannot say "none")
        client = await self._connect()
        with self._guard(f"reading {name}"):
            try:
                answer = await client.get_object(
                    Bucket=self.bucket, Key=name, Range=f"bytes={start}-{end - 1}"
                )
            except ClientError as exc:
                if _missing(exc):
                    raise FileNotFoundError(f"no file {key!r} in {self.url}") from exc
                if _code(exc) == "InvalidRange":
                    return  # starts past the end: nothing, as a file read there gives
                raise
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(CHUNK):
                    yield chunk

    async def delete(self, prefix: str) -> int:
        """As the folder store: the files directly under the folder part of ``prefix``
        whose names start with the rest (``<id>/`` is every file of ``<id>``)."""
        folder, _, start = prefix.rpartition("/")
        listed = f"{self._name(folder)}/{start}"
        client = await self._connect()
        gone = 0
        with self._guard(f"deleting {listed}*"):
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=listed, Delimiter="/"
            )
            async for page in pages:
                # A name ending in "/" is a folder, not a file (SeaweedFS lists an emptied
                # one as such): never one of ours, whose keys are normalized.
                contents = page.get("Contents", [])
                names = [item["Key"] for item in contents if not item["Key"].endswith("/")]
                for first in range(0, len(names), DELETE_BATCH):
                    batch = names[first : first + DELETE_BATCH]
                    answer = await client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": n} for n in batch], "Quiet": True},
                    )
                    errors = answer.get("Errors", [])
                    for error in errors[:1]:  # the next sweep retries them
                        log.warning(
                            "%d files under %s were not deleted, %s: %s %s",
                            len(errors),
                            listed,
                            error.get("Key"),
                            error.get("Code"),
                            error.get("Message"),
                        )
                    gone += len(batch) - len(errors)
            if not start:
                # As the folder store removes the folder: SeaweedFS keeps an emptied one
                # (listed, and held in its filer, forever) until it is deleted by name; a
                # folder that is not empty stays. On AWS there is no such object: a no-op.
                await client.delete_object(Bucket=self.bucket, Key=listed)
        return gone

    async def presign(self, key: str, seconds: int) -> str | None:
        name = self._name(key)
        client = await self._connect()
        with self._guard(f"signing a URL for {name}"):
            url = await client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": name}, ExpiresIn=seconds
            )
        return str(url)

    async def ping(self) -> None:
        client = await self._connect()
        with self._guard(f"a look at the bucket {self.bucket}"):
            try:
                await client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                # Whatever the answer, the store is of no use (HEAD has no body to say why).
                what = "no such bucket" if _status(exc) == 404 else f"{_status(exc)} {_code(exc)}"
                raise StoreUnavailable(
                    f"the S3 store {self.url} at {client.meta.endpoint_url}: {what}"
                ) from exc

    async def close(self) -> None:
        async with self._lock:
            self._client = None
            stack, self._stack = self._stack, contextlib.AsyncExitStack()  # usable again
            await stack.aclose()

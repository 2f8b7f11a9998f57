"""Where the bytes of files live (inputs a model reads, results it writes), out of Redis:
a queue entry and a record only ever hold a file's URL on the service.

Keys are ``<prediction id>/<name>``. `open_store` picks the kind from BLOB_URL: a folder
(the default, under DATA_DIR: one host) or ``s3://bucket/prefix`` (many hosts; endpoint
and credentials from the standard AWS variables)."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from service.errors import StoreUnavailable

__all__ = ["CHUNK", "Blob", "BlobStore", "StoreUnavailable", "open_store"]

#: Bytes read or written at a time, streaming a file in or out.
CHUNK = 256 * 1024


@dataclass(frozen=True, slots=True)
class Blob:
    """What is known of a stored file without reading it."""

    size: int
    etag: str
    modified: float


class BlobStore(Protocol):
    """What the service asks of a store. Every method is safe to call on the loop: the
    slow parts run in threads or on the network."""

    #: What BLOB_URL named, for logs and the health route.
    url: str

    async def put(self, key: str, source: Path) -> int:
        """Stores the file at ``source`` under ``key`` (whole or not at all); its size."""

    async def fetch(self, key: str, target: Path) -> None:
        """Writes the file stored under ``key`` to ``target``; FileNotFoundError if none."""

    async def stat(self, key: str) -> Blob | None:
        """What is stored under ``key``, or None."""

    def read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        """The bytes ``start`` to ``end`` (exclusive) of ``key``, a chunk at a time."""

    async def delete(self, prefix: str) -> int:
        """Removes every file whose key starts with ``prefix``; how many."""

    def local(self, key: str) -> Path | None:
        """The file's own path when the store is a folder on this host (else None)."""

    async def presign(self, key: str, seconds: int) -> str | None:
        """A URL that reads ``key`` without credentials for ``seconds`` (None: no such URL)."""

    async def ping(self) -> None:
        """Raises StoreUnavailable unless the store answers."""

    async def close(self) -> None: ...


def open_store(blob_url: str, data_dir: Path) -> BlobStore:
    """The store BLOB_URL names: ``s3://bucket[/prefix]``, ``file:///path`` or a path, or
    (empty) the folder ``files`` under DATA_DIR."""
    if blob_url.startswith("s3://"):
        from service.blobs.s3 import S3Store  # only with the s3 extra installed

        return S3Store(blob_url)
    from service.blobs.folder import FolderStore

    if blob_url.startswith("file://"):
        return FolderStore(Path(blob_url.removeprefix("file://")))
    if "://" in blob_url:
        raise ValueError(f"BLOB_URL {blob_url!r}: expected s3://bucket/prefix or a folder")
    return FolderStore(Path(blob_url) if blob_url else data_dir / "files")

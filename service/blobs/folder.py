"""The default store: a folder on this host. A file is written beside its place under a
temporary name and renamed into it, so a reader sees it whole or not at all; a file that
already lies on the same disk (an upload spooled under DATA_DIR) is linked, not copied."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

from service.blobs import CHUNK, Blob, StoreUnavailable


class FolderStore:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.url = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"key {key!r} is outside the store")
        return path

    def local(self, key: str) -> Path | None:
        return self._path(key)

    async def put(self, key: str, source: Path) -> int:
        return await asyncio.to_thread(self._put, self._path(key), source)

    @staticmethod
    def _put(path: Path, source: Path) -> int:
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        try:
            try:
                os.link(source, part)  # same disk: no copy
            except OSError:
                shutil.copyfile(source, part)
            os.replace(part, path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return path.stat().st_size

    async def fetch(self, key: str, target: Path) -> None:
        await asyncio.to_thread(self._put, target, self._path(key))

    async def stat(self, key: str) -> Blob | None:
        try:
            info = await asyncio.to_thread(os.stat, self._path(key))
        except FileNotFoundError:
            return None
        return Blob(info.st_size, f'"{info.st_mtime_ns:x}-{info.st_size:x}"', info.st_mtime)

    async def read(self, key: str, start: int, end: int) -> AsyncGenerator[bytes, None]:
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            left = end - start
            while left > 0:
                data = await asyncio.to_thread(handle.read, min(CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, prefix: str) -> int:
        folder, _, start = prefix.rpartition("/")
        return await asyncio.to_thread(self._delete, self._path(folder), start)

    @staticmethod
    def _delete(folder: Path, start: str) -> int:
        if not folder.is_dir():
            return 0
        gone = 0
        for path in folder.iterdir():
            if not start or path.name.startswith(start):
                path.unlink(missing_ok=True)
                gone += 1
        if not start:
            with contextlib.suppress(OSError):  # a file landed meanwhile: swept later
                folder.rmdir()
        return gone

    async def presign(self, key: str, seconds: int) -> str | None:
        return None

    async def ping(self) -> None:
        try:
            await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"the folder store {self.root} cannot be written: {exc}"
            ) from None

    async def close(self) -> None:
        return None

"""The contract of a blob store (service/blobs: the BlobStore protocol), held on both
kinds alike: the folder, and S3 on a real SeaweedFS (scripts/s3_local.py). What the
service does with files relies on nothing else, so whichever BLOB_URL names behaves the
same."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.blobs import BlobStore, StoreUnavailable, open_store
from service.redis.embedded import free_port

MiB = 1024 * 1024


@pytest.fixture(params=["folder", "s3"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[BlobStore]:
    """A store of this test's kind, made by open_store from a BLOB_URL as the service does."""
    url = request.getfixturevalue("s3") if kind == "s3" else ""
    made = open_store(url, tmp_path / "data")
    yield made
    await made.close()


def _file(folder: Path, name: str, content: bytes) -> Path:
    path = folder / name
    path.write_bytes(content)
    return path


async def _read(store: BlobStore, key: str, start: int, end: int) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


async def test_put_stat_and_read_whole_or_a_range(store: BlobStore, tmp_path: Path) -> None:
    content = bytes(range(256)) * 5
    before = time.time()
    assert await store.put("job-1/input.bin", _file(tmp_path, "in", content)) == len(content)

    blob = await store.stat("job-1/input.bin")
    assert blob is not None
    assert blob.size == len(content)
    assert blob.etag.startswith('"') and blob.etag.endswith('"'), "as an ETag header holds it"
    assert before - 2 <= blob.modified <= time.time() + 2  # S3 keeps whole seconds
    assert await _read(store, "job-1/input.bin", 0, len(content)) == content
    assert await _read(store, "job-1/input.bin", 100, 300) == content[100:300]
    assert await _read(store, "job-1/input.bin", len(content) - 1, len(content)) == content[-1:]
    assert await _read(store, "job-1/input.bin", 5, 5) == b""
    # Past the end: what is there (nothing at all when it starts past the end).
    assert await _read(store, "job-1/input.bin", 1200, 2000) == content[1200:]
    assert await _read(store, "job-1/input.bin", 5000, 6000) == b""


async def test_fetch_writes_the_file_whole_into_a_new_folder(
    store: BlobStore, tmp_path: Path
) -> None:
    content = os.urandom(300_000)  # more than a chunk
    await store.put("job-2/result.bin", _file(tmp_path, "in", content))
    target = tmp_path / "out" / "deeper" / "result.bin"

    await store.fetch("job-2/result.bin", target)

    assert target.read_bytes() == content
    assert [p.name for p in target.parent.iterdir()] == ["result.bin"], "no part left beside"


async def test_a_big_file_is_stored_whole_in_parts(
    store: BlobStore, kind: str, tmp_path: Path
) -> None:
    content = os.urandom(20 * MiB)
    assert await store.put("job-3/big.bin", _file(tmp_path, "big", content)) == len(content)

    blob = await store.stat("job-3/big.bin")
    assert blob is not None and blob.size == len(content)
    if kind == "s3":
        from service.blobs.s3 import PART  # here: needs aiobotocore

        parts = -(-len(content) // PART)
        assert blob.etag.endswith(f'-{parts}"'), f"a multipart upload of {parts} parts: {blob.etag}"
    assert await _read(store, "job-3/big.bin", 0, len(content)) == content
    assert (
        await _read(store, "job-3/big.bin", 8 * MiB - 3, 8 * MiB + 3)
        == content[8 * MiB - 3 : 8 * MiB + 3]
    ), "across the parts' seam"
    await store.fetch("job-3/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == content


async def test_a_put_replaces_the_whole_file(store: BlobStore, tmp_path: Path) -> None:
    await store.put("job-4/out.txt", _file(tmp_path, "long", b"a much longer first version"))
    first = await store.stat("job-4/out.txt")

    assert await store.put("job-4/out.txt", _file(tmp_path, "short", b"second")) == 6

    second = await store.stat("job-4/out.txt")
    assert first is not None and second is not None
    assert second.size == 6 and second.etag != first.etag
    assert await _read(store, "job-4/out.txt", 0, 100) == b"second"


async def test_delete_removes_the_keys_of_that_prefix_only(
    store: BlobStore, tmp_path: Path
) -> None:
    source = _file(tmp_path, "in", b"x")
    keys = ["job-5/part-1", "job-5/part-2", "job-5/other", "job-55/part-1", "job-6/part-1"]
    for key in keys:
        await store.put(key, source)

    assert await store.delete("job-5/part-") == 2
    assert [await store.stat(key) is not None for key in keys] == [False, False, True, True, True]

    assert await store.delete("job-5/") == 1
    assert [await store.stat(key) is not None for key in keys] == [False, False, False, True, True]
    assert await store.delete("job-5/") == 0, "nothing left"
    assert await store.delete("job-7/") == 0, "never there"


async def test_a_missing_file(store: BlobStore, tmp_path: Path) -> None:
    target = tmp_path / "out" / "never.bin"

    with pytest.raises(FileNotFoundError):
        await store.fetch("job-8/never.bin", target)
    assert not target.exists()
    if target.parent.exists():
        assert list(target.parent.iterdir()) == [], "no part left behind"
    assert await store.stat("job-8/never.bin") is None
    with pytest.raises(FileNotFoundError):
        await _read(store, "job-8/never.bin", 0, 10)


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "job/../../outside", "."])
async def test_a_key_outside_the_store_is_refused(
    store: BlobStore, key: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="outside the store"):
        await store.put(key, _file(tmp_path, "in", b"x"))
    with pytest.raises(ValueError, match="outside the store"):
        await store.stat(key)


async def test_a_presigned_url_reads_the_file_without_credentials(
    store: BlobStore, kind: str, tmp_path: Path
) -> None:
    await store.put("job-9/out.txt", _file(tmp_path, "in", b"signed bytes"))

    url = await store.presign("job-9/out.txt", 60)

    if kind == "folder":
        assert url is None, "the service serves a folder's files itself"
        local = store.local("job-9/out.txt")
        assert local is not None and local.read_bytes() == b"signed bytes"
        return
    assert url is not None
    assert store.local("job-9/out.txt") is None
    async with aiohttp.ClientSession() as session:
        async with session.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == b"signed bytes"
        unsigned = url.partition("?")[0]
        async with session.get(unsigned) as resp:
            assert resp.status == 403, "the bucket is not public: the signature is what lets in"


async def test_the_store_answers_ping(store: BlobStore) -> None:
    await store.ping()


async def test_an_unreachable_s3_is_unavailable_within_seconds(
    s3: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody there
    store = open_store(s3, tmp_path)
    source = _file(tmp_path, "in", b"x")
    try:
        for attempt in (store.ping(), store.put("job-10/in", source), store.stat("job-10/in")):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="cannot be reached"):
                await attempt
            assert time.monotonic() - started < 10
    finally:
        await store.close()


async def test_a_missing_bucket_is_unavailable(s3: str, tmp_path: Path) -> None:
    store = open_store(s3.replace("s3://files/", "s3://no-such-bucket/"), tmp_path)
    try:
        with pytest.raises(StoreUnavailable, match="no such bucket"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.put("job-11/in", _file(tmp_path, "in", b"x"))
    finally:
        await store.close()


async def test_a_reader_may_stop_half_way(store: BlobStore, tmp_path: Path) -> None:
    content = os.urandom(2 * MiB)
    await store.put("job-12/big.bin", _file(tmp_path, "in", content))
    reader = store.read("job-12/big.bin", 0, len(content))

    first = await anext(reader)
    await reader.aclose()  # as when the client of a download goes away

    assert content.startswith(first) and 0 < len(first) < len(content)
    assert await _read(store, "job-12/big.bin", 0, 10) == content[:10], "the store still reads"


async def test_a_failed_multipart_upload_is_aborted(
    s3: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from service.blobs.s3 import (  # here: needs aiobotocore, which the s3 fixture checked
        S3Store,
    )

    store = S3Store(s3)
    client = await store._connect()
    sent = client.upload_part
    calls = 0

    async def cut_at_the_second_part(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise aiohttp.ServerDisconnectedError()
        return await sent(**kwargs)

    monkeypatch.setattr(client, "upload_part", cut_at_the_second_part)
    try:
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            await store.put("job-13/big.bin", _file(tmp_path, "big", os.urandom(20 * MiB)))

        assert calls == 2
        assert await store.stat("job-13/big.bin") is None
        pending = await client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
        assert pending.get("Uploads", []) == [], "no part left behind in the bucket"
    finally:
        await store.close()

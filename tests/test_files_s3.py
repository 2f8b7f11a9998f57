"""Files in S3 (a real SeaweedFS server): replicas on different hosts share the bytes of
job files through the store, never through Redis."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.http import state

from .helpers import ClientFactory, poll, wait_final
from .test_files import form

pytestmark = pytest.mark.modes("single", "cluster")


async def test_an_upload_to_one_replica_is_run_by_another_and_read_from_a_third(
    make_client: ClientFactory, s3: str, tmp_path: Path
) -> None:
    common: dict[str, Any] = {"model": "tests.models:Reverse", "blob_url": s3}
    # Three hosts: each its own DATA_DIR (no folder is shared); only the first takes
    # requests, only the second runs jobs.
    front = await make_client(workers=0, data_dir=tmp_path / "a", consumer_name="a", **common)
    await make_client(workers=1, data_dir=tmp_path / "b", consumer_name="b", **common)
    reader = await make_client(workers=0, data_dir=tmp_path / "c", consumer_name="c", **common)
    data = os.urandom(12 * 1024 * 1024)  # more than one multipart part
    resp = await front.post("/predict", data=form(data, note="s3"), headers={"Async-Mode": "true"})
    assert resp.status == 202, await resp.text()
    prediction_id = (await resp.json())["prediction_id"]
    record = await wait_final(reader, prediction_id, within=60)
    assert record["status"] == "done", record
    url = record["output"]["result"]["reversed"]
    got = await reader.get(url)
    assert got.status == 200
    assert hashlib.sha256(await got.read()).digest() == hashlib.sha256(data[::-1]).digest()
    part = await reader.get(url, headers={"Range": "bytes=0-3"})
    assert part.status == 206 and await part.read() == data[::-1][:4]
    upload = await reader.get(record["output"]["input"]["data"])
    assert len(await upload.read()) == len(data)
    for host in "abc":  # nothing lies on any replica's disk
        assert not [p for p in (tmp_path / host).rglob("*") if p.is_file() and p.stat().st_size]
    # Canceled, its files go from the store.
    files = reader.app[state.FILES]
    assert await files.store.stat(f"{prediction_id}/input.data.png") is not None
    await files.discard(prediction_id)
    assert await files.store.stat(f"{prediction_id}/input.data.png") is None


async def test_presigned_downloads_skip_the_replica(make_client: ClientFactory, s3: str) -> None:
    client = await make_client(model="tests.models:Reverse", blob_url=s3, blob_presign=True)
    body = await (await client.post("/predict", data=form(b"abc"))).json()
    resp = await client.get(body["result"]["reversed"], allow_redirects=False)
    assert resp.status == 307
    async with aiohttp.ClientSession() as session, session.get(resp.headers["Location"]) as got:
        assert got.status == 200 and await got.read() == b"cba"


async def test_an_unreachable_store_answers_503_and_the_replica_lives_on(
    make_client: ClientFactory, s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    client = await make_client(model="tests.models:measure", blob_url=s3)
    resp = await client.post("/predict", data=form(), headers={"Async-Mode": "true"})
    assert resp.status == 503
    assert "Retry-After" in resp.headers
    assert "store" in (await resp.json())["error"]
    live = await client.get("/health/live")
    assert live.status == 200
    resp = await client.post("/predict", json={"input": {"data": "data:,x"}}, headers={})
    assert resp.status == 503

    async def nothing_spooled() -> bool:
        root = Path(client.app[state.SETTINGS].data_dir) / "uploads"
        return not [p for p in root.rglob("*") if p.is_file()]

    await poll(nothing_spooled)

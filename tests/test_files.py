"""Files in and out (the folder store): uploads, URLs and data URIs as inputs, files as
results, their URLs, lifetimes, limits and owners."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from service.client import AsyncClient, Client
from service.errors import InvalidInput
from service.http import state

from . import models
from .helpers import (
    ClientFactory,
    figure,
    poll,
    running_service,
    scrape,
    wait_final,
    worker_for,
)

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)


def form(
    data: bytes = PNG, name: str = "data", filename: str = "photo.png", **fields: str
) -> aiohttp.FormData:
    body = aiohttp.FormData()
    body.add_field(name, io.BytesIO(data), filename=filename, content_type="image/png")
    for key, value in fields.items():
        body.add_field(key, value)
    return body


def stored(tmp_path: Path) -> list[str]:
    """Every file in the folder store (the default: 'files' under DATA_DIR)."""
    root = tmp_path / "files"
    return (
        sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        if root.exists()
        else []
    )


def spooled(tmp_path: Path) -> list[Path]:
    root = tmp_path / "uploads"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def files_client(
    make_client: ClientFactory, model: str = "measure", **more: Any
) -> TestClient:
    return await make_client(model=f"tests.models:{model}", **more)


async def test_an_upload_runs_sync_and_its_file_is_kept_with_the_record(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client)
    resp = await client.post("/predict", data=form(note="hi"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["result"] == {
        "size": len(PNG),
        "sha256": hashlib.sha256(PNG).hexdigest(),
        "local": True,
        "suffix": ".png",
        "note": "hi",
    }
    prediction_id = body["prediction_id"]
    url = body["input"]["data"]
    assert url == f"/predict/{prediction_id}/files/input.data.png"
    got = await client.get(url)
    assert got.status == 200
    assert await got.read() == PNG
    assert got.headers["Content-Type"] == "image/png"
    assert int(got.headers["Content-Length"]) == len(PNG)
    record = await (await client.get(f"/predict/{prediction_id}")).json()
    assert record["status"] == "done" and record["output"]["input"]["data"] == url
    assert stored(tmp_path) == [f"{prediction_id}/input.data.png"]
    assert spooled(tmp_path) == []  # the call's own copies are gone


async def test_a_file_url_answers_ranges_etags_and_nothing_past_its_end(
    make_client: ClientFactory,
) -> None:
    client = await files_client(make_client)
    url = (await (await client.post("/predict", data=form())).json())["input"]["data"]
    first = await client.get(url, headers={"Range": "bytes=10-19"})
    assert first.status == 206
    assert await first.read() == PNG[10:20]
    assert first.headers["Content-Range"] == f"bytes 10-19/{len(PNG)}"
    tail = await client.get(url, headers={"Range": "bytes=-5"})
    assert tail.status == 206 and await tail.read() == PNG[-5:]
    open_ended = await client.get(url, headers={"Range": f"bytes={len(PNG) - 1}-"})
    assert await open_ended.read() == PNG[-1:]
    past = await client.get(url, headers={"Range": f"bytes={len(PNG)}-"})
    assert past.status == 416
    assert past.headers["Content-Range"] == f"bytes */{len(PNG)}"
    etag = (await client.get(url)).headers["ETag"]
    same = await client.get(url, headers={"If-None-Match": etag})
    assert same.status == 304
    assert (await client.get(url + "x")).status == 404
    assert (await client.get(url.rsplit("/", 1)[0] + "/..%2Fx")).status == 404


async def test_a_queued_upload_carries_only_its_url_through_redis(
    make_client: ClientFactory, rds: Any, tmp_path: Path
) -> None:
    client = await files_client(make_client)
    big = os.urandom(2 * 1024 * 1024)
    resp = await client.post("/predict", data=form(big), headers={"Async-Mode": "true"})
    assert resp.status == 202, await resp.text()
    prediction_id = (await resp.json())["prediction_id"]
    record = await wait_final(client, prediction_id)
    assert record["status"] == "done", record
    assert record["output"]["result"]["sha256"] == hashlib.sha256(big).hexdigest()
    used = 0
    async for key in rds.scan_iter(match="*"):
        if prediction_id in key.decode() or key.decode().startswith("predictions"):
            used += await rds.memory_usage(key) or 0
    assert used < 64 * 1024, f"{used} bytes in Redis for a 2 MiB input"
    assert f"{prediction_id}/input.data.png" in stored(tmp_path)


async def test_a_whole_input_file_and_a_data_uri(make_client: ClientFactory) -> None:
    client = await files_client(make_client, "whole_file")
    resp = await client.post("/predict", data=form(name="input", filename="a.bin"))
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["result"] == {"size": len(PNG)}
    uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    resp = await client.post("/predict", json={"input": uri})
    assert (await resp.json())["result"] == {"size": len(PNG)}
    assert (await resp.json())["input"].endswith("/files/input.png")
    resp = await client.post("/predict", json={"input": "data:,hello%20world"})
    assert (await resp.json())["result"] == {"size": 11}


async def test_bad_file_inputs_get_a_clear_4xx(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await files_client(make_client, max_file_bytes=1000)
    resp = await client.post("/predict", json={"input": {"data": "not a file"}})
    assert resp.status == 422
    assert (await resp.json())["detail"][0]["loc"] == ["input", "data"]
    resp = await client.post("/predict", json={"input": {"data": "data:image/png;base64,@@@"}})
    assert resp.status == 400
    assert "base64" in (await resp.json())["error"]
    resp = await client.post("/predict", json={"input": {"note": "no file"}})
    assert resp.status == 422  # the model's own check: the field is required
    resp = await client.post("/predict", data=form(os.urandom(1001)))
    assert resp.status == 413
    assert "MAX_FILE_BYTES" in (await resp.json())["error"]
    resp = await client.post("/predict", data=form(os.urandom(1000)))
    assert resp.status == 200  # at the limit: accepted
    bad = b'--xyz\r\nContent-Disposition: form-data; name="data"\r\n\r\nabc'
    resp = await client.post(
        "/predict", data=bad, headers={"Content-Type": "multipart/form-data; boundary=abc"}
    )
    assert resp.status in (400, 422), await resp.text()
    # A part whose header aiohttp's parser refuses (found by schemathesis): a 400, not a 500.
    bad = b'--b\r\nContent-Disposition: form-data; name="\xc3\xae\x08"\r\n\r\n1\r\n--b--\r\n'
    resp = await client.post(
        "/predict", data=bad, headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert resp.status == 400, await resp.text()
    resp = await client.post("/predict", data=b"{}", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await client.post("/predict/batch", json={"inputs": [{"data": "data:,x"}]})
    assert resp.status == 422
    text = await scrape(client)
    assert figure(text, "uploads_refused_total", reason="too_large") == 1
    assert figure(text, "uploads_refused_total", reason="malformed") >= 1
    assert [p for p in stored(tmp_path) if "input" in p and p.endswith("1001")] == []
    assert len(stored(tmp_path)) == 1  # the one accepted upload only
    assert spooled(tmp_path) == []


async def test_a_model_that_returns_files_answers_their_urls(make_client: ClientFactory) -> None:
    client = await files_client(make_client, "Reverse")
    resp = await client.post("/predict", data=form(b"abcdef", note="n"))
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    prediction_id = body["prediction_id"]
    assert body["result"] == {
        "reversed": f"/predict/{prediction_id}/files/result.reversed.bin",
        "note": "n",
    }
    got = await client.get(body["result"]["reversed"])
    assert await got.read() == b"fedcba"
    resp = await client.post("/predict", data=form(b"xyz"), headers={"Async-Mode": "true"})
    record = await wait_final(client, (await resp.json())["prediction_id"])
    assert await (await client.get(record["output"]["result"]["reversed"])).read() == b"zyx"
    text = await scrape(client)
    assert figure(text, "files_stored_total", kind="output") == 2
    assert figure(text, "files_stored_bytes_total", kind="input") == 9


async def test_a_returned_path_and_typed_bytes_are_stored(make_client: ClientFactory) -> None:
    client = await files_client(make_client, "copy_back")
    body = await (await client.post("/predict", data=form())).json()
    assert body["result"].endswith("/files/result.png")
    assert await (await client.get(body["result"])).read() == PNG
    client = await files_client(make_client, "Thumbnailish", workers=0)
    body = await (await client.post("/predict", json={"input": 3})).json()
    assert body["result"].endswith("/files/result.png")
    got = await client.get(body["result"])
    assert await got.read() == b"\x89PNG\x00\x00\x00"
    assert got.headers["Content-Type"] == "image/png"


async def test_a_model_in_a_process_reads_its_files(make_client: ClientFactory) -> None:
    client = await files_client(make_client, execution="process", process_workers=1)
    resp = await client.post("/predict", data=form(), headers={"Async-Mode": "true"})
    record = await wait_final(client, (await resp.json())["prediction_id"], within=30)
    assert record["output"]["result"]["sha256"] == hashlib.sha256(PNG).hexdigest(), record


class Origin:
    """A web server the service fetches input URLs from."""

    def __init__(self) -> None:
        self.hold = asyncio.Event()
        app = web.Application()
        app.router.add_get("/photo.png", self.photo)
        app.router.add_get("/missing", self.missing)
        app.router.add_get("/moved", self.moved)
        app.router.add_get("/slow", self.slow)
        self.app = app

    async def photo(self, request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    async def missing(self, request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def moved(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/photo.png")

    async def slow(self, request: web.Request) -> web.Response:
        await self.hold.wait()
        return web.Response(body=b"late")


@pytest.fixture
async def origin(aiohttp_server: Any) -> Any:
    made = Origin()
    server = await aiohttp_server(made.app)
    yield str(server.make_url("")).rstrip("/")
    made.hold.set()


async def test_an_input_url_is_fetched_under_the_rules(
    make_client: ClientFactory, origin: str
) -> None:
    client = await files_client(
        make_client, input_url_allow_private=True, input_url_timeout_seconds=0.5
    )
    resp = await client.post("/predict", json={"input": {"data": f"{origin}/photo.png"}})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["result"]["sha256"] == hashlib.sha256(PNG).hexdigest()
    for path, why in (("/missing", "answered 404"), ("/moved", "answered 302"), ("/slow", "0.5 s")):
        resp = await client.post("/predict", json={"input": {"data": origin + path}})
        assert resp.status == 422, path
        problem = (await resp.json())["detail"][0]
        assert problem["loc"] == ["input", "data"] and why in problem["msg"], problem
    resp = await client.post("/predict", json={"input": {"data": "http://no-such-host.invalid/x"}})
    assert resp.status == 422


async def test_private_input_urls_are_refused_unless_allowed(
    make_client: ClientFactory, origin: str
) -> None:
    client = await files_client(make_client)
    resp = await client.post("/predict", json={"input": {"data": f"{origin}/photo.png"}})
    assert resp.status == 422
    problem = (await resp.json())["detail"][0]
    assert problem["loc"] == ["input", "data"] and "non-public" in problem["msg"]
    client = await files_client(make_client, input_url_allowed_hosts="example.org")
    resp = await client.post("/predict", json={"input": {"data": f"{origin}/photo.png"}})
    assert "INPUT_URL_ALLOWED_HOSTS" in (await resp.json())["detail"][0]["msg"]


async def test_a_canceled_job_takes_its_files_with_it(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client, workers=0)
    resp = await client.post("/predict", data=form(), headers={"Async-Mode": "true"})
    prediction_id = (await resp.json())["prediction_id"]
    assert stored(tmp_path) == [f"{prediction_id}/input.data.png"]
    assert (await client.delete(f"/predict/{prediction_id}")).status == 200
    assert stored(tmp_path) == []


async def test_files_go_when_due_and_not_before(
    make_client: ClientFactory, tmp_path: Path, rds: Any
) -> None:
    client = await files_client(make_client, result_ttl_seconds=100)
    body = await (await client.post("/predict", data=form())).json()
    files = client.app[state.FILES]
    assert await files.sweep() == 0
    assert len(stored(tmp_path)) == 1
    key = client.app[state.PARTITIONS].names.files
    due = await rds.zscore(key, body["prediction_id"])
    assert 100 < due - time.time() <= 111
    assert await files.sweep(now=due + 1) == 1
    assert stored(tmp_path) == []
    assert await rds.zscore(key, body["prediction_id"]) is None


async def test_an_idempotent_upload_keeps_one_copy(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client, workers=0)
    headers = {"Async-Mode": "true", "Idempotency-Key": "upload-1"}
    first = await client.post("/predict", data=form(), headers=headers)
    again = await client.post("/predict", data=form(), headers=headers)
    assert first.status == again.status == 202
    prediction_id = (await first.json())["prediction_id"]
    assert (await again.json())["prediction_id"] == prediction_id
    assert stored(tmp_path) == [f"{prediction_id}/input.data.png"]
    other = await client.post("/predict", data=form(PNG[::-1]), headers=headers)
    assert other.status == 409
    assert stored(tmp_path) == [f"{prediction_id}/input.data.png"]


async def test_an_upload_cut_off_midway_leaves_nothing(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client)
    host, port = client.server.host, client.server.port
    _, writer = await asyncio.open_connection(host, port)
    head = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        b'Content-Length: 10000000\r\n\r\n--b\r\nContent-Disposition: form-data; name="data"; '
        b'filename="a.png"\r\n\r\n'
    )
    writer.write(head + os.urandom(500_000))
    await writer.drain()
    await poll(lambda: _async(bool(spooled(tmp_path))))  # it was being received
    writer.close()
    await poll(lambda: _async(not spooled(tmp_path)))
    assert stored(tmp_path) == []


async def _async(value: Any) -> Any:
    return value


async def test_another_tenant_cannot_read_a_file(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text(
        '[tenants.a]\nkeys = ["' + hashlib.sha256(b"key-a").hexdigest() + '"]\n'
        '[tenants.b]\nkeys = ["' + hashlib.sha256(b"key-b").hexdigest() + '"]\n'
    )
    client = await files_client(make_client, api_keys_file=str(keys))
    a, b = ({"Authorization": f"Bearer key-{t}"} for t in "ab")
    body = await (await client.post("/predict", data=form(), headers=a)).json()
    url = body["input"]["data"]
    assert (await client.get(url, headers=a)).status == 200
    assert (await client.get(url, headers=b)).status == 404
    assert (await client.get(url)).status == 401
    queued = await client.post("/predict", data=form(), headers={**a, "Async-Mode": "true"})
    assert queued.status == 202


async def test_the_client_uploads_paths_and_downloads_results(
    make_served: Any, tmp_path: Path
) -> None:
    _, base = await make_served(model="tests.models:Reverse")
    photo = tmp_path / "cat.png"
    photo.write_bytes(PNG)
    async with AsyncClient(base) as client:
        result = await client.predict({"data": photo, "note": "sync"})
        assert result["note"] == "sync"
        saved = await client.download(result["reversed"], tmp_path / "back.bin")
        assert saved.read_bytes() == PNG[::-1]
        job = await client.submit({"data": photo, "note": "queued"}, priority="high")
        done = await job.result(timeout=20)
        assert done["note"] == "queued"
        await client.download(done["reversed"], tmp_path / "again.bin")
        assert (tmp_path / "again.bin").read_bytes() == PNG[::-1]
        record = await client.get(job.prediction_id)
        assert record["output"]["input"]["data"].endswith("/files/input.data.png")


def test_the_blocking_client_uploads_a_whole_input_file(redis_url: str, tmp_path: Path) -> None:
    photo = tmp_path / "cat.png"
    photo.write_bytes(PNG)
    with (
        running_service(REDIS_URL=redis_url, MODEL="tests.models:whole_file") as base,
        Client(base) as client,
    ):
        assert client.predict(photo) == {"size": len(PNG)}
        assert client.submit(photo).result(timeout=20) == {"size": len(PNG)}


async def test_the_spec_shows_file_fields_as_uris_and_binary_parts(
    make_client: ClientFactory,
) -> None:
    client = await files_client(make_client, workers=0)
    spec = await (await client.get("/docs/swagger.json")).json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    form_schema = body["multipart/form-data"]["schema"]
    assert form_schema["properties"]["data"]["format"] == "binary"
    assert form_schema["properties"]["note"]["type"] == "string"
    assert form_schema["required"] == ["data"]
    request = spec["components"]["schemas"]["DefaultPredictRequest"]
    assert request["properties"]["input"]["properties"]["data"]["format"] == "uri"
    client = await files_client(make_client, "whole_file", workers=0)
    spec = await (await client.get("/docs/swagger.json")).json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert body["multipart/form-data"]["schema"]["properties"]["input"]["format"] == "binary"


async def test_an_aborted_job_takes_its_files_and_runs_no_model(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client, workers=0, queue_partitions=1)
    headers = {"Async-Mode": "true", "Cancel-After": "1ms"}
    stale = await (await client.post("/predict", data=form(), headers=headers)).json()
    kept = await client.post("/predict", data=form(), headers={"Async-Mode": "true"})
    kept_id = (await kept.json())["prediction_id"]
    assert len(stored(tmp_path)) == 2
    worker = worker_for(client, "w")
    await worker.step()  # its own pending entries: none
    assert await worker.step() == 2
    record = await (await client.get(f"/predict/{stale['prediction_id']}")).json()
    assert record["status"] == "aborted"
    assert stored(tmp_path) == [f"{kept_id}/input.data.png"]
    assert models.calls["measure"] == 1


async def test_a_job_reads_only_its_own_files(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await files_client(make_client, workers=0)
    first = (await (await client.post("/predict", data=form())).json())["prediction_id"]
    files = client.app[state.FILES]
    other = "0f0e0d0c-0b0a-4000-8000-000000000000"
    theirs = {"data": f"/predict/{first}/files/input.data.png"}
    with pytest.raises(InvalidInput, match="not one of this job's files"):
        await files.materialize(other, theirs, ("data",), tmp_path)
    with pytest.raises(InvalidInput):
        await files.materialize(first, {"data": "/etc/passwd"}, ("data",), tmp_path)
    mine = await files.materialize(first, theirs, ("data",), tmp_path)
    assert await asyncio.to_thread(Path(mine["data"]).read_bytes) == PNG


async def test_a_job_canceled_while_it_runs_takes_its_files(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client, "Reverse")
    models.gated_files.set()
    headers = {"Async-Mode": "true", "Cancel-After": "300ms"}
    resp = await client.post("/predict", data=form(), headers=headers)
    prediction_id = (await resp.json())["prediction_id"]
    record = await wait_final(client, prediction_id)
    assert record["status"] == "canceled", record
    models.release()
    assert stored(tmp_path) == []


async def test_the_replica_sweeps_files_when_their_record_expires(
    make_client: ClientFactory, tmp_path: Path, rds: Any
) -> None:
    client = await files_client(make_client, result_ttl_seconds=1)
    resp = await client.post("/predict", data=form(), headers={"Async-Mode": "true"})
    prediction_id = (await resp.json())["prediction_id"]
    await wait_final(client, prediction_id)
    due = await rds.zscore(client.app[state.PARTITIONS].names.files, prediction_id)
    assert due - time.time() <= 1 + 10, "due with the record, not when it was queued"
    assert stored(tmp_path)

    async def swept() -> bool:
        return not stored(tmp_path)

    await poll(swept, within=20, interval=0.2)


async def test_a_huge_non_file_part_is_refused_without_being_held(
    make_client: ClientFactory,
) -> None:
    client = await files_client(make_client, max_body_bytes=2048)
    body = form()
    body.add_field("note", io.BytesIO(b"x" * 4096))  # no file name: a value, not a file
    resp = await client.post("/predict", data=body)
    assert resp.status == 413
    assert "MAX_BODY_BYTES" in (await resp.json())["error"]
    ok = form(note="y" * 1000)
    assert (await client.post("/predict", data=ok)).status == 200


async def test_a_streaming_model_reads_its_file_sync_and_queued(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    client = await files_client(make_client, "file_lines")
    text = b"one\ntwo\nthree\n"
    resp = await client.post(
        "/predict", data=form(text, filename="a.txt"), headers={"Accept": "text/event-stream"}
    )
    assert resp.status == 200
    events = await resp.text()
    assert events.count("event: output") == 3 and 'data: "three"' in events
    assert "event: done" in events
    resp = await client.post("/predict", data=form(text), headers={"Async-Mode": "true"})
    record = await wait_final(client, (await resp.json())["prediction_id"])
    assert record["output"]["result"] == ["one", "two", "three"], record
    assert spooled(tmp_path) == []

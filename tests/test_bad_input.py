"""Every malformed request is a 4xx in the JSON error shape, and nothing bad is queued."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from typing import Any

import pytest
from redis.asyncio import Redis

from service.http import state

from . import models
from .helpers import KEYS, STREAM, ClientFactory, poll

JSON = {"Content-Type": "application/json"}
ASYNC = {**JSON, "Async-Mode": "true"}

CASES: list[tuple[str, str, str, dict[str, str], bytes, int]] = [
    ("malformed json", "POST", "/predict", JSON, b'{"input": ', 400),
    ("not utf-8", "POST", "/predict", JSON, b'{"input": "\xff\xfe"}', 400),
    ("body is a list", "POST", "/predict", JSON, b'["text"]', 422),
    ("missing input", "POST", "/predict", JSON, b"{}", 422),
    ("extra field", "POST", "/predict", JSON, b'{"input": "hi", "other": 1}', 422),
    ("input a number", "POST", "/predict", JSON, b'{"input": 5}', 422),
    ("input null", "POST", "/predict", JSON, b'{"input": null}', 422),
    ("input a list", "POST", "/predict", JSON, b'{"input": ["hi"]}', 422),
    ("empty text", "POST", "/predict", JSON, b'{"input": ""}', 422),
    ("blank text", "POST", "/predict", JSON, b'{"input": "   "}', 422),
    (
        "form content type",
        "POST",
        "/predict",
        {"Content-Type": "application/x-www-form-urlencoded"},
        b"input=hi",
        415,
    ),
    (
        "text content type",
        "POST",
        "/predict",
        {"Content-Type": "text/plain"},
        b'{"input": "hi"}',
        415,
    ),
    ("no content type", "POST", "/predict", {}, b'{"input": "hi"}', 415),
    ("bad async-mode", "POST", "/predict", {**JSON, "Async-Mode": "yes"}, b'{"input": "hi"}', 400),
    ("empty async-mode", "POST", "/predict", {**JSON, "Async-Mode": ""}, b'{"input": "hi"}', 400),
    ("unknown route", "GET", "/nowhere", {}, b"", 404),
    ("wrong method on /predict", "GET", "/predict", {}, b"", 405),
    ("wrong method on a prediction", "PUT", "/predict/x", {}, b"", 405),
    ("put on /predict", "PUT", "/predict", JSON, b'{"input": "hi"}', 405),
]


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_bad_request_is_json_4xx_and_queues_nothing(
    make_client: ClientFactory,
    rds: Redis,
    mode: str,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
    status: int,
) -> None:
    client = await make_client(workers=0)
    if mode == "async" and "Async-Mode" not in headers:
        headers = {**headers, "Async-Mode": "true"}
    resp = await client.request(method, path, headers=headers, data=body)
    assert resp.status == status
    assert resp.content_type == "application/json"
    payload: dict[str, Any] = await resp.json()
    assert isinstance(payload["error"], str) and payload["error"]
    assert await rds.xlen(STREAM) == 0
    assert await rds.keys(KEYS.record("*")) == []


async def test_validation_errors_name_the_field(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.post("/predict", json={"input": 5})
    detail = (await resp.json())["detail"]
    assert detail[0]["loc"] == ["input"]
    assert detail[0]["type"] == "string_type"
    resp = await client.post("/predict", json={"text": "hi"})
    locs = [d["loc"] for d in (await resp.json())["detail"]]
    assert ["input"] in locs and ["text"] in locs


async def test_body_over_the_limit_is_413_json(make_client: ClientFactory) -> None:
    client = await make_client()
    body = io.BytesIO(b'{"input": "' + b"x" * (2 * 1024 * 1024) + b'"}')
    resp = await client.post("/predict", data=body, headers=JSON)
    assert resp.status == 413
    assert "larger than" in (await resp.json())["error"]


async def test_405_names_the_allowed_method(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/predict")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    assert resp.content_type == "application/json"
    assert "does not accept that method" in (await resp.json())["error"]


async def test_deeply_nested_json_is_a_clear_4xx(make_client: ClientFactory, rds: Redis) -> None:
    client = await make_client(model="tests.models:echo")
    for depth, status in ((129, 422), (300, 422), (1000, 422), (5000, 400)):
        body = b'{"input": ' + b"[" * depth + b"]" * depth + b"}"
        for mode in ("false", "true"):
            resp = await client.post("/predict", data=body, headers={**JSON, "Async-Mode": mode})
            assert resp.status == status, (depth, mode, await resp.text())
            assert "deeper than 128 levels" in (await resp.json())["error"], depth
        bulk = b'{"inputs": [' + b"[" * depth + b"]" * depth + b"]}"
        assert (await client.post("/predict/batch", data=bulk, headers=JSON)).status == status
    assert await rds.xlen(STREAM) == 0, "nothing too deep was queued"
    # As deep as allowed is answered (the input comes back inside the answer).
    body = b'{"input": ' + b"[" * 127 + b"]" * 127 + b"}"
    assert (await client.post("/predict", data=body, headers=JSON)).status == 200


async def test_a_too_deep_input_never_fails_other_clients_submits(
    make_client: ClientFactory, rds: Redis
) -> None:
    client = await make_client(workers=0, model="tests.models:echo")
    deep = b'{"input": ' + b"[" * 300 + b"]" * 300 + b"}"
    honest = [
        client.post("/predict", json={"input": i}, headers={"Async-Mode": "true"})
        for i in range(60)
    ]
    hostile = [client.post("/predict", data=deep, headers=ASYNC) for _ in range(60)]
    answers = await asyncio.gather(*(c for pair in zip(honest, hostile, strict=True) for c in pair))
    statuses = [r.status for r in answers]
    assert statuses[0::2] == [202] * 60, statuses
    assert set(statuses[1::2]) == {422}
    assert await rds.xlen(STREAM) == 60


async def test_an_output_too_deep_to_write_fails_its_item_alone(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:DeepOutput", max_batch_size=8)
    batcher = client.server.app[state.BATCHERS]["default"]
    texts = ["a", "deep", "b", "c"]
    outcomes = await asyncio.gather(*(batcher.run_one(t) for t in texts))
    assert [o.ok for o in outcomes] == [True, False, True, True]
    assert models.batch_sizes == [4], "one batch call; the others were not run again"


async def test_a_huge_string_within_the_limit_is_answered(make_client: ClientFactory) -> None:
    client = await make_client(model="tests.models:Fragile")
    text = b"good " * 150_000  # 750 kB, under the 1 MiB body limit
    body = io.BytesIO(b'{"input": "' + text + b'"}')
    resp = await client.post("/predict", data=body, headers=ASYNC)
    assert resp.status == 202
    prediction_id = (await resp.json())["prediction_id"]

    async def final() -> Any:
        record = await (await client.get(f"/predict/{prediction_id}")).json()
        return record if record["status"] in ("done", "failed") else None

    record = await poll(final)
    assert record["status"] == "done", record.get("error")
    assert record["output"]["result"] == {"length": len(text)}, "the whole input reached the model"
    assert record["output"]["input"] == text.decode()
    body = io.BytesIO(b'{"input": "' + b"x" * 1_100_000 + b'"}')
    resp = await client.post("/predict", data=body, headers=JSON)
    assert resp.status == 413


async def test_bytes_that_are_not_utf_8_are_named_as_such(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.post("/predict", data=b'{"input": "\xff\xfe"}', headers=JSON)
    assert resp.status == 400
    assert (await resp.json())["error"] == "The body is not UTF-8 text: send JSON encoded as UTF-8."
    resp = await client.post("/predict", data=b'{"input": "\\ud800"}', headers=JSON)
    assert resp.status == 400
    assert "half of a UTF-16 surrogate pair" in (await resp.json())["error"]


async def test_a_body_trickled_byte_by_byte_is_cut_off_with_408(
    make_client: ClientFactory,
) -> None:
    client = await make_client(body_timeout_seconds=1)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    head = (
        "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 200\r\n\r\n"
    )
    writer.write(head.encode() + b'{"inp')
    began = asyncio.get_running_loop().time()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in b'ut": "' + b"x" * 150:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

    sender = asyncio.ensure_future(trickle())
    try:
        status_line = await asyncio.wait_for(reader.readline(), 10)
    finally:
        sender.cancel()
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 408"), status_line
    assert asyncio.get_running_loop().time() - began < 3


MALFORMED = {
    "header over 8190 bytes": b"X-Big: " + b"a" * 9000 + b"\r\n",
    "control character": b"X-Bad: a\x01b\r\n",
    "bare CR": b"X-A: b\rX-C: d\r\n",
    "too many headers": b"".join(b"X-%d: v\r\n" % i for i in range(200)),
}


@pytest.mark.parametrize("extra", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_request_the_parser_refuses_is_a_json_400_logged_in_one_line(
    make_served: Any, caplog: pytest.LogCaptureFixture, extra: bytes
) -> None:
    _, base = await make_served(workers=0)
    host, port = base.removeprefix("http://").split(":")
    caplog.set_level(logging.INFO)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /models HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].endswith(b" 400 Bad Request"), head
    assert b"Content-Type: application/json" in head
    error = json.loads(body)["error"]
    assert error.startswith("The request is malformed: "), error
    assert "aaaa" not in error and "\n" not in error, "the request's bytes are not echoed"
    ours = [r for r in caplog.records if r.name.startswith(("service", "aiohttp"))]
    refused = [r for r in ours if "malformed" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.WARNING
    assert refused[0].exc_info is None
    assert not [r for r in ours if r.levelno >= logging.ERROR]

"""The OpenAI-compatible routes, driven by the official `openai` client: models, embeddings
(float and base64), chat and text completions whole and streamed, the parameters refused,
errors in OpenAI's shape, keys and tenants. Small test models (tests/models.py: Vectors,
Talker, Templated) loaded through a models file like a user's."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from service.http import state
from service.jobs import batches as batches_module

from . import models
from .helpers import JSON, poll
from .test_tenants import keys_file

MODELS = """
[models.vectors]
spec = "tests.models:Vectors"
[models.talker]
spec = "tests.models:Talker"
[models.templated]
spec = "tests.models:Templated"
[models.echo]
spec = "tests.models:echo"
[models.plain]
spec = "tests.models:plain_vector"
"""


@pytest.fixture
def models_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(MODELS)
    return path


@pytest.fixture
async def clients() -> Any:
    """Makes OpenAI clients for a base URL and key; closes them after the test."""
    made: list[AsyncOpenAI] = []

    def make(base: str, key: str = "none") -> AsyncOpenAI:
        made.append(AsyncOpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=30))
        return made[-1]

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def serve(make_served: Any, models_file: Path, clients: Any) -> Any:
    """A served app with the test models, and an OpenAI client for it (with ``key``)."""

    async def start(key: str = "none", **settings: Any) -> tuple[str, AsyncOpenAI]:
        app, base = await make_served(models_file=models_file, **{"workers": 0, **settings})
        start.apps.append(app)  # type: ignore[attr-defined]
        return base, clients(base, key)

    start.apps = []  # type: ignore[attr-defined]
    return start


async def test_models_are_listed_and_read_one_by_one(serve: Any) -> None:
    _, client = await serve()
    listed = await client.models.list()
    assert [m.id for m in listed.data] == ["echo", "plain", "talker", "templated", "vectors"]
    assert all(m.object == "model" and m.created > 0 for m in listed.data)
    assert (await client.models.retrieve("talker")).id == "talker"
    with pytest.raises(openai.NotFoundError) as caught:
        await client.models.retrieve("nope")
    assert caught.value.code == "model_not_found" and "nope" in caught.value.message


async def test_embeddings_as_floats_and_as_base64_in_order_through_the_batcher(serve: Any) -> None:
    _, client = await serve()
    texts = [f"text number {i}" for i in range(10)]
    got = await client.embeddings.create(model="vectors", input=texts, encoding_format="float")
    assert [d.index for d in got.data] == list(range(10))
    assert [d.embedding for d in got.data] == [models.vector_of(t) for t in texts]
    assert got.usage.prompt_tokens == got.usage.total_tokens == 30
    assert got.model == "vectors"
    assert 10 in models.batch_sizes, "the ten texts ran as one batch"
    # base64: little-endian float32 bytes (the client asks for it by default and decodes).
    raw = await client.embeddings.create(model="vectors", input="one", encoding_format="base64")
    packed = base64.b64decode(raw.data[0].embedding)
    assert list(struct.unpack("<8f", packed)) == pytest.approx(models.vector_of("one"))
    default = await client.embeddings.create(model="vectors", input="one")
    assert default.data[0].embedding == pytest.approx(models.vector_of("one"))
    # A model that answers a bare vector reports no tokens: no usage, rather than a 0.
    plain = await client.embeddings.create(model="plain", input=["one", "two"])
    assert [d.embedding for d in plain.data] == [models.vector_of("one"), models.vector_of("two")]
    assert plain.usage is None


async def test_an_embeddings_model_that_fails_is_a_500_in_openai_shape(serve: Any) -> None:
    _, client = await serve()
    with pytest.raises(openai.InternalServerError) as caught:
        await client.embeddings.create(model="vectors", input=["crash"])
    assert "the vectors broke" in caught.value.message
    assert caught.value.body["type"] == "server_error"  # type: ignore[index]


async def test_a_chat_completion_whole_and_streamed_says_the_same(serve: Any) -> None:
    _, client = await serve()
    messages: Any = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "one two three"},
    ]
    whole = await client.chat.completions.create(model="talker", messages=messages)
    choice = whole.choices[0]
    # The prompt's last line is "assistant:", the talker's reply (a line a message).
    assert choice.message.content == "assistant:" and choice.finish_reason == "stop"
    assert whole.object == "chat.completion" and whole.model == "talker"
    # The talker echoes the last line of its prompt: give it one without the template.
    said = await client.completions.create(model="talker", prompt="one two three")
    assert said.choices[0].text == "one two three" and said.object == "text_completion"
    stream = await client.completions.create(model="talker", prompt="one two three", stream=True)
    pieces = [c.choices[0].text async for c in stream]
    assert pieces == ["one", " two", " three", ""]
    chat = await client.chat.completions.create(model="talker", messages=messages, stream=True)
    chunks = [c async for c in chat]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "assistant:"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len({c.id for c in chunks}) == 1


async def test_max_tokens_and_stop_reach_the_model(serve: Any) -> None:
    _, client = await serve()
    short = await client.completions.create(model="talker", prompt="a b c d e", max_tokens=2)
    assert short.choices[0].text == "a b" and short.choices[0].finish_reason == "length"
    cut = await client.completions.create(model="talker", prompt="a b c d e", stop=" c")
    assert cut.choices[0].text == "a b" and cut.choices[0].finish_reason == "stop"
    chat = await client.chat.completions.create(
        model="talker",
        messages=[{"role": "user", "content": "x"}],
        max_completion_tokens=1,
        stream=True,
    )
    chunks = [c async for c in chat]
    assert chunks[-1].choices[0].finish_reason == "length"


async def test_a_model_with_its_own_template_takes_the_messages(serve: Any) -> None:
    _, client = await serve()
    messages: Any = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]
    got = await client.chat.completions.create(model="templated", messages=messages)
    assert got.choices[0].message.content == "system/user"
    # It does not stream: streamed, its whole answer is one chunk.
    chunks = [
        c
        async for c in await client.chat.completions.create(
            model="templated", messages=messages, stream=True
        )
    ]
    assert [c.choices[0].delta.content for c in chunks] == ["", "system/user", None]
    with pytest.raises(openai.BadRequestError) as caught:  # it takes no temperature
        await client.chat.completions.create(model="templated", messages=messages, temperature=1)
    assert caught.value.param == "temperature"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"top_p": 0.5}, "top_p"),
        ({"presence_penalty": 1}, "presence_penalty"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"stream_options": {"include_usage": True}, "stream": True}, "stream_options"),
        ({"temperature": 3}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"max_tokens": "3"}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"stream": "yes"}, "stream"),
    ],
)
async def test_a_parameter_not_supported_is_a_400_naming_it(
    serve: Any, extra: dict[str, Any], param: str
) -> None:
    base, _ = await serve()
    body = {"model": "talker", "messages": [{"role": "user", "content": "hi"}], **extra}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        resp = await http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert error["message"]
    assert models.made == [], "the model never ran"


async def test_a_model_of_another_task_is_refused_naming_its_task(serve: Any) -> None:
    _, client = await serve()
    with pytest.raises(openai.BadRequestError) as caught:
        await client.embeddings.create(model="talker", input="x")
    assert "generation model" in caught.value.message and caught.value.param == "model"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.chat.completions.create(
            model="vectors", messages=[{"role": "user", "content": "x"}]
        )
    assert "embeddings model" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        await client.completions.create(model="echo", prompt="x")
    assert "no task" in caught.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        await client.completions.create(model="nope", prompt="x")
    assert missing.value.code == "model_not_found"


async def test_errors_on_v1_routes_take_openais_shape_and_ours_elsewhere(serve: Any) -> None:
    base, _ = await serve(api_key="k")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        deep = b'{"model": "vectors", "input": ' + b"[" * 200 + b"]" * 200 + b"}"
        refused = await http.get("/v1/models")
        bad_json = await http.post(
            "/v1/embeddings", content=b"{", headers={"Authorization": "Bearer k", **JSON}
        )
        as_text = await http.post(
            "/v1/embeddings",
            content=b'{"model": "vectors", "input": "x"}',
            headers={"Authorization": "Bearer k", "Content-Type": "text/plain"},
        )
        nowhere = await http.get("/v1/nowhere", headers={"Authorization": "Bearer k"})
        too_deep = await http.post(
            "/v1/embeddings", content=deep, headers={"Authorization": "Bearer k", **JSON}
        )
        ours = await http.get("/models")
    assert refused.status_code == 401
    assert refused.json()["error"]["type"] == "authentication_error"
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert bad_json.status_code == 400 and bad_json.json()["error"]["message"]
    assert as_text.status_code == 415 and as_text.json()["error"]["type"]
    assert nowhere.status_code == 404 and nowhere.json()["error"]["type"]
    # What the other routes answer 422 (a body nested too deep) is a 400 here, as OpenAI's.
    assert too_deep.status_code == 400, too_deep.text
    assert too_deep.json()["error"]["type"] == "invalid_request_error"
    assert ours.status_code == 401 and isinstance(ours.json()["error"], str)


async def test_keys_and_tenants_hold_on_the_v1_routes(
    serve: Any, clients: Any, tmp_path: Path
) -> None:
    keys = keys_file(tmp_path / "keys.toml", acme={}, slow={"rate": 0.01, "burst": 1})
    base, _ = await serve(api_keys_file=str(keys))
    acme = clients(base, "acme-key")
    assert (await acme.embeddings.create(model="vectors", input="x")).data
    stranger = clients(base, "stranger-key")
    with pytest.raises(openai.AuthenticationError):
        await stranger.models.list()
    slow = clients(base, "slow-key")
    await slow.models.list()
    with pytest.raises(openai.RateLimitError) as caught:
        await slow.models.list()
    assert caught.value.response.headers["Retry-After"]
    assert caught.value.body["type"] == "rate_limit_error"  # type: ignore[index]


async def test_a_streamed_completion_whose_client_leaves_stops_the_model(serve: Any) -> None:
    _, client = await serve()
    prompt = "slowly " + " ".join(["word"] * 1000)
    stream = await client.completions.create(
        model="talker", prompt=prompt, max_tokens=1000, stream=True
    )
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()  # the client goes away

    async def stopped() -> bool:
        return "talker" in models.closed

    await poll(stopped)
    assert len(models.made) < 1000, "the generator was closed before its end"


async def test_a_stream_that_fails_midway_ends_with_an_error_event(serve: Any) -> None:
    _, client = await serve()
    stream = await client.completions.create(model="talker", prompt="a b boom c", stream=True)
    pieces = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in stream:
            pieces.append(chunk.choices[0].text)
    assert pieces == ["a", " b"]
    assert "the talker broke" in caught.value.message


# -- batches --------------------------------------------------------------------------------
def jsonl(*lines: Any) -> bytes:
    return b"".join(
        (ln if isinstance(ln, bytes) else json.dumps(ln).encode()) + b"\n" for ln in lines
    )


def chat_line(custom_id: str, text: str, **more: Any) -> dict[str, Any]:
    body = {"model": "talker", "messages": [{"role": "user", "content": text}], **more}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


async def ended(client: AsyncOpenAI, batch_id: str, within: float = 30) -> Any:
    async def done() -> Any:
        batch = await client.batches.retrieve(batch_id)
        return batch if batch.status in ("completed", "cancelled") else None

    return await poll(done, within=within)


def lines_of(content: bytes) -> dict[str, Any]:
    return {(line := json.loads(raw))["custom_id"]: line for raw in content.splitlines()}


@pytest.mark.modes("single", "cluster")
async def test_a_batch_runs_from_upload_to_output_file_its_bad_lines_in_the_error_file(
    serve: Any,
) -> None:
    _, client = await serve(workers=1)
    upload = jsonl(
        chat_line("a", "one two"),
        chat_line("b", "three", max_tokens=1),
        b"{not json",
        {**chat_line("c", "x"), "url": "/v1/embeddings"},
        chat_line("d", "four five six"),
        chat_line("e", "x", tools=[{"type": "function"}]),
        chat_line("a", "a custom_id used before"),
    )
    file = await client.files.create(file=("in.jsonl", upload), purpose="batch")
    assert file.purpose == "batch" and file.bytes == len(upload)
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert batch.request_counts is not None and batch.request_counts.total == 7
    batch = await ended(client, batch.id)
    assert batch.status == "completed"
    assert batch.request_counts.completed == 3 and batch.request_counts.failed == 4
    assert batch.output_file_id and batch.error_file_id
    output = lines_of((await client.files.content(batch.output_file_id)).content)
    assert sorted(output) == ["a", "b", "d"]
    for custom_id, said in (("a", "assistant:"), ("d", "assistant:")):
        body = output[custom_id]["response"]["body"]
        assert output[custom_id]["response"]["status_code"] == 200
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == said
    assert output["b"]["response"]["body"]["choices"][0]["finish_reason"] == "length"
    errors = (await client.files.content(batch.error_file_id)).content.splitlines()
    refused = [json.loads(raw) for raw in errors]
    assert len(refused) == 4 and all(line["error"]["message"] for line in refused)
    assert {line["custom_id"] for line in refused} == {"", "c", "e", "a"}
    assert "tools" in next(r for r in refused if r["custom_id"] == "e")["error"]["message"]
    # A line with no custom_id to tell it by is told by its number in the file.
    assert next(r for r in refused if r["custom_id"] == "")["error"]["message"].startswith(
        "Line 3:"
    )


async def test_a_bad_upload_is_a_400_naming_what_is_wrong(serve: Any) -> None:
    base, _ = await serve()
    multipart = {"Content-Type": "multipart/form-data; boundary=b"}
    bad_header = b'--b\r\nContent-Disposition: form-data; name="\xc3\xae\x08"\r\n\r\n1\r\n--b--\r\n'
    no_file = b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--b--\r\n'

    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        header = await http.post("/v1/files", content=bad_header, headers=multipart)
        missing = await http.post("/v1/files", content=no_file, headers=multipart)
        other = await http.post(
            "/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch", "x": "1"}
        )
        not_batch = await http.post(
            "/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "fine-tune"}
        )
        as_json = await http.post("/v1/files", json={"purpose": "batch"})
    assert header.status_code == 400 and "malformed" in header.json()["error"]["message"]
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "file"
    assert other.status_code == 400 and other.json()["error"]["param"] == "x"
    assert not_batch.status_code == 400 and not_batch.json()["error"]["param"] == "purpose"
    assert as_json.status_code == 400


async def test_lines_longer_than_a_body_go_to_the_error_file_and_an_empty_file_is_refused(
    serve: Any,
) -> None:
    _, client = await serve(workers=1, max_body_bytes=2000)
    huge = chat_line("huge", "x" * 300_000)  # longer than a chunk of the store's reads
    long = chat_line("long", "y" * 3_000)  # within one chunk, longer than the limit
    upload = jsonl(chat_line("a", "one"), huge, long, chat_line("b", "two"))
    file = await client.files.create(file=("in.jsonl", upload), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = await ended(client, batch.id)
    assert batch.request_counts.completed == 2 and batch.request_counts.failed == 2
    errors = [
        json.loads(r)
        for r in (await client.files.content(batch.error_file_id)).content.splitlines()
    ]
    assert all("MAX_BODY_BYTES" in e["error"]["message"] for e in errors)
    assert sorted(lines_of((await client.files.content(batch.output_file_id)).content)) == [
        "a",
        "b",
    ]
    empty = await client.files.create(file=("e.jsonl", b"\n\n"), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        await client.batches.create(
            input_file_id=empty.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.param == "input_file_id"


async def test_an_embeddings_batch_answers_each_line_as_the_route_would(serve: Any) -> None:
    _, client = await serve(workers=1)
    line = {"method": "POST", "url": "/v1/embeddings"}
    upload = jsonl(
        {**line, "custom_id": "one", "body": {"model": "vectors", "input": "alpha"}},
        {**line, "custom_id": "two", "body": {"model": "vectors", "input": ["b", "c d"]}},
        {
            **line,
            "custom_id": "packed",
            "body": {"model": "vectors", "input": "alpha", "encoding_format": "base64"},
        },
    )
    file = await client.files.create(file=("e.jsonl", upload), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/embeddings", completion_window="24h"
    )
    batch = await ended(client, batch.id)
    assert batch.request_counts.completed == 3 and batch.error_file_id is None
    output = lines_of((await client.files.content(batch.output_file_id)).content)
    assert output["one"]["response"]["body"]["data"][0]["embedding"] == models.vector_of("alpha")
    two = output["two"]["response"]["body"]
    assert [d["embedding"] for d in two["data"]] == [models.vector_of("b"), models.vector_of("c d")]
    assert two["usage"]["prompt_tokens"] == 3
    packed = base64.b64decode(output["packed"]["response"]["body"]["data"][0]["embedding"])
    assert list(struct.unpack("<8f", packed)) == pytest.approx(models.vector_of("alpha"))


async def test_a_tenant_never_reaches_another_tenants_batch_or_files(
    serve: Any, clients: Any, tmp_path: Path
) -> None:
    keys = keys_file(tmp_path / "keys.toml", acme={}, umbrella={})
    base, _ = await serve(api_keys_file=str(keys), api_key="default-key")
    acme, umbrella, default = (
        clients(base, "acme-key"),
        clients(base, "umbrella-key"),
        clients(base, "default-key"),
    )
    file = await acme.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
    batch = await acme.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for other in (umbrella, default):
        with pytest.raises(openai.NotFoundError):
            await other.batches.retrieve(batch.id)
        with pytest.raises(openai.NotFoundError):
            await other.batches.cancel(batch.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.content(file.id)
        with pytest.raises(openai.NotFoundError):
            await other.files.delete(file.id)
        with pytest.raises(openai.NotFoundError):  # nor make a batch of its file
            await other.batches.create(
                input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
    assert (await acme.batches.retrieve(batch.id)).status == "in_progress"
    assert (await acme.files.content(file.id)).content == jsonl(chat_line("a", "x"))


async def test_a_canceled_batch_cancels_its_queued_jobs_and_says_so_per_line(
    serve: Any,
) -> None:
    _, client = await serve()  # no workers: every job stays queued
    upload = jsonl(*(chat_line(str(i), "x y") for i in range(5)))
    file = await client.files.create(file=("in.jsonl", upload), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    app = serve.apps[-1]
    partitions = app[state.PARTITIONS]
    rds = app[state.REDIS]
    waiting = {
        keys.priority: await rds.xlen(keys.stream)
        for partition in partitions.all
        for keys in partitions.streams(partition)
    }
    assert waiting == {"high": 0, "normal": 0, "low": 5}, "each line a job of priority low"
    canceled = await client.batches.cancel(batch.id)
    assert canceled.status in ("cancelling", "cancelled")
    batch = await ended(client, batch.id)
    assert batch.status == "cancelled" and batch.cancelled_at
    assert batch.request_counts.failed == 5 and batch.output_file_id is None
    errors = [
        json.loads(r)
        for r in (await client.files.content(batch.error_file_id)).content.splitlines()
    ]
    assert {e["response"]["body"]["error"]["code"] for e in errors} == {"batch_cancelled"}
    assert models.made == [], "no job ran"


async def test_a_batch_over_the_tenants_quota_is_a_429_and_queues_nothing(
    serve: Any, clients: Any, tmp_path: Path
) -> None:
    keys = keys_file(tmp_path / "keys.toml", small={"max_queued": 4})
    # Queued one at a time (MAX_BULK): the first fits, the next does not, and the one
    # queued already is canceled, so that the batch leaves nothing behind.
    base, _ = await serve(api_keys_file=str(keys), max_bulk=1)
    client = clients(base, "small-key")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for value in ("a", "b", "c"):  # three of the four places taken
            resp = await http.post(
                "/predict",
                json={"input": value},
                headers={"Authorization": "Bearer small-key", "Async-Mode": "true"},
            )
            assert resp.status_code == 202, resp.text
    two = jsonl(chat_line("0", "x"), chat_line("1", "y"))
    file = await client.files.create(file=("in.jsonl", two), purpose="batch")
    with pytest.raises(openai.RateLimitError) as caught:
        await client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert caught.value.response.headers["Retry-After"]
    assert "4" in caught.value.message
    app = serve.apps[-1]
    partitions, rds = app[state.PARTITIONS], app[state.REDIS]
    statuses = []
    for partition in partitions.all:
        for keys_ in partitions.streams(partition):
            if keys_.priority == "low":
                for _, fields in await rds.xrange(keys_.stream):
                    record = partitions.record(fields[b"id"].decode())
                    statuses.append(await rds.hget(record, "status"))
    assert statuses == [b"canceled"], "the one queued before the refusal was canceled"
    # A batch larger than the quota itself could never be queued: a 400 that says so.
    five = jsonl(*(chat_line(str(i), "x") for i in range(5)))
    big = await client.files.create(file=("big.jsonl", five), purpose="batch")
    with pytest.raises(openai.BadRequestError) as refused:
        await client.batches.create(
            input_file_id=big.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "may have queued (4)" in refused.value.message


@pytest.mark.modes("single", "cluster")
async def test_a_batch_is_read_and_finished_by_any_replica(
    make_served: Any, models_file: Path, clients: Any
) -> None:
    # One replica takes the batch and runs nothing; another (with a worker) runs its jobs
    # and answers for it: the batch is in Redis and its files in the shared store.
    _, base = await make_served(models_file=models_file, workers=0)
    first = clients(base)
    file = await first.files.create(
        file=("in.jsonl", jsonl(chat_line("a", "p q"), chat_line("b", "r"))), purpose="batch"
    )
    batch = await first.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    _, other = await make_served(models_file=models_file, workers=1)
    done = await ended(clients(other), batch.id)
    assert done.status == "completed" and done.request_counts.completed == 2
    assert (await first.batches.retrieve(batch.id)).status == "completed"
    content = (await first.files.content(done.output_file_id)).content
    assert sorted(lines_of(content)) == ["a", "b"]


async def test_a_batchs_jobs_are_timed_from_their_start_not_from_their_wait(
    make_served: Any, models_file: Path, clients: Any
) -> None:
    # JOB_TIMEOUT_SECONDS counts a plain job's wait in the queue; a batch's jobs may wait
    # for hours behind other work, so theirs counts from their start.
    _, base = await make_served(models_file=models_file, workers=0, job_timeout_seconds=1)
    first = clients(base)
    # A streaming model's line and one of a model that answers at once (run in a batch).
    once = {
        **chat_line("c", "s"),
        "body": {"model": "templated", "messages": [{"role": "user", "content": "s"}]},
    }
    upload = jsonl(chat_line("a", "p q"), chat_line("b", "r"), once)
    file = await first.files.create(file=("in.jsonl", upload), purpose="batch")
    batch = await first.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    await asyncio.sleep(1.5)  # time passing is what is tested: past the job time limit
    _, other = await make_served(models_file=models_file, workers=1, job_timeout_seconds=1)
    done = await ended(clients(other), batch.id)
    assert done.request_counts.completed == 3 and done.request_counts.failed == 0


async def test_a_line_that_ended_is_answered_while_an_earlier_one_still_runs(
    serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its record is read while it is there: a line is not held back by the lines before it,
    # in its page of lines or in a later one (pages of two lines here).
    monkeypatch.setattr(batches_module, "PAGE", 2)
    _, client = await serve(workers=1, stream_threads=2)
    slow = "slowly " + " ".join(["w"] * 300)  # about 3 s

    def line(custom_id: str, prompt: str) -> dict[str, Any]:
        body = {"model": "talker", "prompt": prompt, "max_tokens": 400}
        return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": body}

    upload = jsonl(line("slow", slow), *(line(str(i), "x y") for i in range(3)))
    file = await client.files.create(file=("in.jsonl", upload), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/completions", completion_window="24h"
    )

    async def three_answered() -> Any:
        now = await client.batches.retrieve(batch.id)
        return now if now.request_counts.completed == 3 else None

    seen = await poll(three_answered)
    assert seen.status == "in_progress", "the slow line has not ended yet"
    done = await ended(client, batch.id)
    assert done.request_counts.completed == 4
    content = (await client.files.content(done.output_file_id)).content
    assert [json.loads(r)["custom_id"] for r in content.splitlines()] == ["slow", "0", "1", "2"]


async def test_files_and_batches_are_never_taken_for_each_other(serve: Any) -> None:
    _, client = await serve()
    file = await client.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
    batch = await client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    for call in (
        client.files.retrieve(batch.id),
        client.files.content(batch.id),
        client.files.delete(batch.id),
        client.batches.retrieve(file.id),
        client.batches.cancel(file.id),
        client.batches.create(
            input_file_id=batch.id, endpoint="/v1/chat/completions", completion_window="24h"
        ),
    ):
        with pytest.raises(openai.NotFoundError):
            await call
    assert (await client.batches.retrieve(batch.id)).status == "in_progress"


async def test_a_files_bytes_go_when_its_time_is_up(serve: Any) -> None:
    _, client = await serve()
    file = await client.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
    app = serve.apps[-1]
    files = app[state.FILES]
    assert await files.store.stat(f"{file.id}/content") is not None
    # The sweep of job files, run as if BATCH_TTL_SECONDS had passed, removes its bytes.
    await files.sweep(now=time.time() + app[state.SETTINGS].batch_ttl_seconds + 60)
    assert await files.store.stat(f"{file.id}/content") is None


async def test_batch_metadata_is_bounded_as_openais_is(serve: Any) -> None:
    _, client = await serve()
    file = await client.files.create(file=("in.jsonl", jsonl(chat_line("a", "x"))), purpose="batch")
    for metadata in ({"k": "v" * 513}, {"k" * 65: "v"}, {str(i): "v" for i in range(17)}):
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=file.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata=metadata,
            )
    kept = await client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"k": "v" * 512},
    )
    assert kept.metadata == {"k": "v" * 512}

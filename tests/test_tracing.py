"""Traces with the real OpenTelemetry SDK and an in-memory exporter: a queued job's
request, queue wait, model batch and webhook delivery in one trace, an incoming
traceparent honoured; and with no OTEL_* variables, nothing of OpenTelemetry imported."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

# The SDK is in the test extra (the service's own [otel] extra is what users install).
from opentelemetry import trace
from opentelemetry.sdk import trace as otel
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.observability.tracing import wanted

from .helpers import ROOT, ClientFactory, poll, wait_final

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
INCOMING = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.fixture(scope="module")
def exporter() -> InMemorySpanExporter:
    """The process's tracer provider (set once: OpenTelemetry allows one), exporting in
    memory; the service uses a provider set already as it is."""
    memory = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, otel.TracerProvider):
        provider = otel.TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return memory


@pytest.fixture
def spans(exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")  # on, through the standard variable
    exporter.clear()
    yield exporter
    exporter.clear()


@pytest.fixture
async def receiver(aiohttp_server: Any) -> tuple[list[dict[str, str]], str]:
    calls: list[dict[str, str]] = []

    async def hook(request: web.Request) -> web.Response:
        calls.append(dict(request.headers))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/hook", hook)
    server = await aiohttp_server(app)
    return calls, str(server.make_url("/hook"))


@pytest.mark.modes("single", "cluster")
async def test_one_trace_from_the_request_through_the_queue_to_the_webhook(
    make_client: ClientFactory, spans: InMemorySpanExporter, receiver: Any
) -> None:
    calls, url = receiver
    client = await make_client(model="tests.models:echo", webhook_allow_private=True)
    resp = await client.post(
        "/predict",
        json={"input": "traced", "webhook": url},
        headers={"Async-Mode": "true", "traceparent": INCOMING},
    )
    assert resp.status == 202
    prediction_id = (await resp.json())["prediction_id"]
    await wait_final(client, prediction_id)
    await poll(lambda: _true(calls))

    def named(name: str) -> list[Any]:
        return [s for s in spans.get_finished_spans() if s.name == name]

    async def all_there() -> bool:
        return bool(named("queue wait") and named("model batch default") and named("webhook POST"))

    await poll(all_there)
    (request,) = named("POST /predict")
    assert f"{request.context.trace_id:032x}" == TRACE_ID, "the incoming trace continues"
    assert f"{request.parent.span_id:016x}" == PARENT
    assert request.kind is trace.SpanKind.SERVER
    assert request.attributes["http.response.status_code"] == 202
    (wait,) = named("queue wait")
    assert wait.context.trace_id == request.context.trace_id
    assert wait.parent.span_id == request.context.span_id
    assert wait.attributes["prediction.id"] == prediction_id
    assert wait.start_time <= wait.end_time
    (batch,) = named("model batch default")
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    assert batch.attributes["batch.size"] == 1
    (hook,) = named("webhook POST")
    assert hook.context.trace_id == request.context.trace_id
    assert hook.kind is trace.SpanKind.CLIENT
    sent = calls[0]["traceparent"]
    assert sent.split("-")[1] == TRACE_ID and sent.split("-")[2] == f"{hook.context.span_id:016x}"


async def test_a_sync_request_is_one_server_span(
    make_client: ClientFactory, spans: InMemorySpanExporter
) -> None:
    client = await make_client(model="tests.models:echo", workers=0)
    assert (await client.post("/predict", json={"input": "x"})).status == 200
    assert (await client.get("/nowhere")).status == 404
    names = [s.name for s in spans.get_finished_spans()]
    assert "POST /predict" in names and "GET unmatched" in names


async def _true(values: list[Any]) -> bool:
    return bool(values)


@pytest.mark.parametrize(
    ("env", "on"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_the_standard_variables_turn_traces_on(env: dict[str, str], on: bool) -> None:
    assert wanted(env) is on


def test_without_otel_variables_nothing_of_opentelemetry_is_imported() -> None:
    # redis-py imports OpenTelemetry's metrics API itself when it is installed: that is the
    # baseline; the service must import nothing more of it.
    code = (
        "import sys\n"
        "import redis.asyncio, redis.asyncio.cluster, redis.asyncio.sentinel\n"
        "before = {m for m in sys.modules if m.startswith('opentelemetry')}\n"
        "from service.http import state\n"
        "from service.app import create_app\n"
        "from service.settings import Settings\n"
        "app = create_app(Settings(model='tests.models:echo'))\n"
        "assert state.TRACING not in app\n"
        "new = [m for m in sys.modules if m.startswith('opentelemetry') and m not in before]\n"
        "print(sorted(new))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout

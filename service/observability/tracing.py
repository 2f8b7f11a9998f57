"""OpenTelemetry traces, with the ``[otel]`` extra: one trace from the HTTP request through
the queue to the model and the webhook.

On when the SDK is installed and the standard variables ask for traces:
``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``; ``none`` is off) or an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and not
``OTEL_SDK_DISABLED=true``. The service, its name and attributes come from
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` as usual. A tracer provider set
already (by ``opentelemetry-instrument``, say) is used as it is. Off, this module imports
nothing of OpenTelemetry and no code path pays for it.

Spans:
- ``<METHOD> <route>`` (server): every request; an incoming ``traceparent`` is its parent.
- ``queue wait`` (internal): a queued job, from its submission to its start; a child of
  the submitting request's span, whose ``traceparent`` is kept with the job (its record
  and its stream entry).
- ``model batch <model>`` (internal): one model call, linked to every job in it.
- ``webhook POST`` (client): a delivery, a child of the job's trace; the POST carries its
  ``traceparent``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

log = logging.getLogger(__name__)

_ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def wanted(env: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* variables ask for traces."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporters = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporters == "none":
        return False
    return bool(exporters) or any(env.get(name) for name in _ENDPOINTS)


def from_env() -> Tracing | None:
    """Tracing as the OTEL_* variables ask, or None (off, or the extra is missing)."""
    if not wanted():
        return None
    if not _importable("opentelemetry.sdk.trace"):
        log.warning("OTEL_* asks for traces, but the [otel] extra is not installed: no traces")
        return None
    return Tracing()


class Tracing:
    """The spans of one process (see the module)."""

    def __init__(self) -> None:
        from opentelemetry import propagate, trace

        self._trace = trace
        self._propagate = propagate
        provider = trace.get_tracer_provider()
        if type(provider).__name__ == "ProxyTracerProvider":  # none set yet: make ours
            provider = _sdk_provider()
            trace.set_tracer_provider(provider)
        self._tracer = trace.get_tracer("service", tracer_provider=provider)

    # -- HTTP ----------------------------------------------------------------------------

    def traced(self, handler: Handler, route: str) -> Handler:
        """``handler`` inside a server span named after its route."""
        from opentelemetry.trace import SpanKind, Status, StatusCode

        tracer, extract = self._tracer, self._propagate.extract

        async def answer(request: web.Request) -> web.StreamResponse:
            with tracer.start_as_current_span(
                f"{request.method} {route}",
                context=extract(request.headers),
                kind=SpanKind.SERVER,
                attributes={
                    "http.request.method": request.method,
                    "http.route": route,
                    "url.path": request.path,
                },
            ) as span:
                response = await handler(request)
                span.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                return response

        return answer

    def traceparent(self) -> str:
        """The current span's W3C traceparent ('' outside any span)."""
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        return carrier.get("traceparent", "")

    # -- the queue -----------------------------------------------------------------------

    def _context(self, traceparent: str) -> Any:
        return self._propagate.extract({"traceparent": traceparent})

    def jobs_started(self, jobs: Sequence[Any], now: float) -> None:
        """A ``queue wait`` span for each job that carries a traceparent: from its
        ``created_at`` to ``now``."""
        end = int(now * 1e9)
        for job in jobs:
            if job.traceparent and job.created_at:
                span = self._tracer.start_span(
                    "queue wait",
                    context=self._context(job.traceparent),
                    start_time=int(job.created_at * 1e9),
                    attributes={"prediction.id": job.prediction_id, "model": job.model},
                )
                span.end(end_time=max(end, int(job.created_at * 1e9)))

    @contextlib.contextmanager
    def batch(self, model: str, jobs: Sequence[Any]) -> Iterator[None]:
        """A ``model batch`` span around one model call, linked to every job in it."""
        from opentelemetry.trace import Link

        links = []
        for job in jobs:
            if job.traceparent:
                context = self._trace.get_current_span(self._context(job.traceparent))
                links.append(Link(context.get_span_context(), {"prediction.id": job.prediction_id}))
        with self._tracer.start_as_current_span(
            f"model batch {model}",
            context=self._context(""),  # a root of its own: its jobs are links
            links=links,
            attributes={"model": model, "batch.size": len(jobs)},
        ):
            yield

    @contextlib.contextmanager
    def webhook(self, traceparent: str, url: str, headers: dict[str, Any]) -> Iterator[None]:
        """A ``webhook POST`` span in the job's trace; ``headers`` get its traceparent."""
        from opentelemetry.trace import SpanKind

        with self._tracer.start_as_current_span(
            "webhook POST",
            context=self._context(traceparent),
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "url.full": url},
        ):
            self._propagate.inject(headers)
            yield


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _sdk_provider() -> Any:
    """A TracerProvider exporting as OTEL_TRACES_EXPORTER says (otlp by default)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create())
    names = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").lower().split(",")
    for name in (n.strip() for n in names if n.strip()):
        exporter: Any = None
        if name == "console":
            exporter = ConsoleSpanExporter()
        elif name == "otlp":
            for module in (
                "opentelemetry.exporter.otlp.proto.http.trace_exporter",
                "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
            ):
                if _importable(module):
                    exporter = importlib.import_module(module).OTLPSpanExporter()
                    break
            else:
                log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp")
        else:
            log.warning("OTEL_TRACES_EXPORTER=%s is not known here; skipped", name)
        if exporter is not None:
            provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider

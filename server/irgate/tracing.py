"""OpenTelemetry traces: a span per call, child spans per stage, exported by OTLP when asked.

A call's span takes its parent from the W3C `traceparent` the client sent (gRPC metadata or an HTTP
header), so a service mesh's trace continues through irgate. Its stages (tokenise, embedding batch,
index search, document fetch, judge queue, prefill, decode) are child spans. Without
--otlp-endpoint no provider is installed and OpenTelemetry's API hands out non-recording spans,
which cost a context-variable lookup each."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace

log = logging.getLogger("irgate")
tracer = trace.get_tracer("irgate")
REQUEST_ID_ATTRIBUTE = "irgate.request_id"


@dataclass(frozen=True)
class Call:
    span: trace.Span
    token: object  # restores the context that was current before the call


def export_to(endpoint: str, service_name: str = "irgate") -> None:
    """Sends every span to an OTLP/gRPC collector at `endpoint` (HOST:PORT, or a URL) in batches."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    insecure = not endpoint.startswith("https://")
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=insecure)))
    trace.set_tracer_provider(provider)
    log.info("traces go to the OTLP collector at %s", endpoint)


def shutdown() -> None:
    """Flushes the spans still waiting to be sent (a no-op without an exporter)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def start_call(name: str, metadata: Sequence[tuple[str, Any]], request_id: str, **attributes: Any) -> Call:
    """Starts the span of one call, a child of the client's trace when its metadata carries
    `traceparent`, and makes it current until end_call."""
    carrier = {key: value for key, value in metadata if isinstance(value, str)}
    span = tracer.start_span(name, context=propagate.extract(carrier), kind=trace.SpanKind.SERVER,
                             attributes={REQUEST_ID_ATTRIBUTE: request_id, **attributes})
    return Call(span, otel_context.attach(trace.set_span_in_context(span)))


def end_call(call: Call, status: str) -> None:
    call.span.set_attribute("rpc.status", status)
    if status != "OK":
        call.span.set_status(trace.StatusCode.ERROR, status)
    call.span.end()
    otel_context.detach(call.token)


def stage(name: str, **attributes: Any) -> contextlib.AbstractContextManager[trace.Span]:
    """A child span of the current one around a stage of the call."""
    return tracer.start_as_current_span(name, attributes=attributes)


def current() -> otel_context.Context:
    """The current trace context, for work that finishes on another thread (the judge engine's)."""
    return otel_context.get_current()


def record(parent: otel_context.Context, stages: Mapping[str, tuple[int, int]], **attributes: Any) -> None:
    """Spans for stages already over, each (start, end) in time.time_ns(), under `parent`."""
    if not trace.get_current_span(parent).is_recording():
        return
    for name, (start, end) in stages.items():
        tracer.start_span(name, context=parent, start_time=start, attributes=attributes).end(end_time=end)


def now_ns() -> int:
    return time.time_ns()

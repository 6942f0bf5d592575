"""OpenTelemetry traces from a real server process into a real OTLP receiver (the collector's trace
service from opentelemetry-proto) running in this test process."""

from __future__ import annotations

import secrets
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Document
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []
        self._lock = threading.Lock()

    def Export(self, request, context):  # noqa: N802 - the generated servicer's name
        with self._lock:
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def of_trace(self, trace_id: str, names: set[str], timeout: float = 60.0) -> dict[str, list]:
        """The spans of one trace by name, once every name has arrived (or the timeout passed)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                found: dict[str, list] = {}
                for span in self.spans:
                    if span.trace_id.hex() == trace_id:
                        found.setdefault(span.name, []).append(span)
            if names <= found.keys() or time.monotonic() > deadline:
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def receiver():
    collector = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    collector.address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield collector
    server.stop(0)


@pytest.fixture(scope="module")
def traced_server(receiver: Receiver, minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    http_port = free_port()
    with LocalServer(tmp_path_factory.mktemp("traced"), [
        "--embedder", f"onnx:{minilm_folder}", "--judge", f"local:{judge_folder}", "--max-reasoning-tokens", "2",
        "--otlp-endpoint", receiver.address, "--http-port", str(http_port),  # type: ignore[attr-defined]
    ], env={"OTEL_BSP_SCHEDULE_DELAY": "200"}) as running:  # export every 0.2 s instead of 5 s
        running.http = f"http://127.0.0.1:{http_port}"  # type: ignore[attr-defined]
        with Client(running.address, timeout=300) as client:
            client.create_collection("traced")
            client.upsert("traced", [Document(id="rain", text="Rain forms when vapour condenses."),
                                     Document(id="cats", text="Cats purr.")])
        yield running


def _traceparent() -> tuple[str, str, str]:
    trace_id, parent_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, parent_id, f"00-{trace_id}-{parent_id}-01"


def test_a_reranked_search_has_a_span_per_stage_under_the_clients_trace(traced_server: LocalServer, receiver: Receiver) -> None:
    trace_id, parent_id, traceparent = _traceparent()
    with grpc.insecure_channel(traced_server.address) as channel:
        _, call = pb_grpc.SearchStub(channel).Search.with_call(
            pb.SearchRequest(collection="traced", query="what causes rain", k=2, rerank=pb.RerankOptions(top_n=2)),
            metadata=(("traceparent", traceparent),), timeout=300,
        )
    request_id = dict(call.trailing_metadata())["x-request-id"]
    stages = {"tokenize", "embedding batch", "index search", "document fetch", "judge queue", "prefill", "decode"}
    spans = receiver.of_trace(trace_id, stages | {"Search"})
    assert stages | {"Search"} <= spans.keys(), f"spans of the trace: {sorted(spans)}"
    (search,) = spans["Search"]
    assert search.parent_span_id.hex() == parent_id
    attributes = {item.key: item.value.string_value for item in search.attributes}
    assert attributes["irgate.request_id"] == request_id
    for name in stages:
        for span in spans[name]:
            assert span.parent_span_id == search.span_id, name
            assert search.start_time_unix_nano <= span.start_time_unix_nano <= span.end_time_unix_nano
            assert span.end_time_unix_nano <= search.end_time_unix_nano, name
    assert len(spans["decode"]) == 2  # one per judged document


def test_an_http_call_continues_the_trace_of_its_traceparent_header(traced_server: LocalServer, receiver: Receiver) -> None:
    trace_id, parent_id, traceparent = _traceparent()
    answer = httpx.post(f"{traced_server.http}/v1/embeddings", json={"input": ["a", "b"]},  # type: ignore[attr-defined]
                        headers={"traceparent": traceparent}, timeout=300)
    assert answer.status_code == 200
    spans = receiver.of_trace(trace_id, {"Embed", "tokenize", "embedding batch"})
    (embed,) = spans["Embed"]
    assert embed.parent_span_id.hex() == parent_id
    assert {item.key: item.value.string_value for item in embed.attributes}["irgate.request_id"] == answer.headers["x-request-id"]
    assert {"tokenize", "embedding batch"} <= spans.keys()

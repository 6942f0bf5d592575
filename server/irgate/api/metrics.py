"""Prometheus metrics of the gRPC API, served on their own HTTP port with a plain HTTP health check.

The port answers /metrics (Prometheus text format), /health and /health/SERVICE (200 "SERVING" or
503 "NOT_SERVING", following the gRPC health service, for load balancers that only speak HTTP),
and 404 elsewhere.
"""

from __future__ import annotations

import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer

# method: the RPC name; Search with a rerank stage is counted as "Search+rerank" (seconds, not milliseconds).
REQUESTS = Counter("irgate_requests_total", "gRPC calls answered", ["method", "code"])
LATENCY = Histogram(
    "irgate_request_seconds",
    "gRPC call duration",
    ["method"],
    # Up to an hour: one judge call of 100 documents at the 8192-token cap reasons for tens of minutes
    # on a CPU. Bulk upserts have no deadline; one that runs longer lands in +Inf.
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
)
IN_FLIGHT = Gauge("irgate_requests_in_flight", "gRPC calls in progress")
EMBEDDED_TOKENS = Counter("irgate_embedded_tokens_total", "tokens read by the embedder")
QUEUED_TEXTS = Gauge("irgate_embedding_queue_texts", "texts waiting for the embedder")
JUDGE_BUSY = Gauge("irgate_judge_busy", "1 while the judge model is generating, else 0")
HEALTH_PATH = "/health"


class _CollectionDocuments:
    """irgate_collection_documents{collection=...}, read from the store at each scrape, so a deleted
    collection's series ends with it."""

    def __init__(self) -> None:
        self._counts: Callable[[], Iterable[tuple[str, int]]] = lambda: ()

    def set_function(self, counts: Callable[[], Iterable[tuple[str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("irgate_collection_documents", "documents stored per collection", labels=["collection"])
        for name, documents in self._counts():
            family.add_metric([name], documents)
        yield family


COLLECTION_DOCUMENTS = _CollectionDocuments()
REGISTRY.register(COLLECTION_DOCUMENTS)

JUDGE_QUEUE_WAIT = Histogram(
    "irgate_judge_queue_seconds",
    "time a judged document waited for room in the in-process judge's batch",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class _JudgeWork:
    """The judge's work, read at each scrape: verdicts by ending and reasoning tokens (every
    backend), and the in-process engine's prefill, cancellations and batch occupancy."""

    def __init__(self) -> None:
        self._verdicts: Callable[[], Any] | None = None
        self._engine: Callable[[], Any] | None = None

    def watch(self, verdicts: Callable[[], Any], engine: Callable[[], Any] | None) -> None:
        self._verdicts, self._engine = verdicts, engine

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        if self._verdicts is None:
            return
        counts = self._verdicts()
        verdicts = CounterMetricFamily("irgate_judge_verdicts", "verdicts given, by how they ended", labels=["ended"])
        for ended, count in sorted(counts.verdicts.items()):
            verdicts.add_metric([ended], count)
        yield verdicts
        yield CounterMetricFamily("irgate_judge_reasoning_tokens", "tokens the judge generated", value=counts.reasoning_tokens)
        stats = self._engine() if self._engine is not None else None
        if stats is None:
            return
        yield CounterMetricFamily("irgate_judge_prefill_tokens", "prompt tokens the judge ran", value=stats.prefill_tokens)
        yield CounterMetricFamily("irgate_judge_cancelled_documents", "documents whose work stopped because their call "
                                  "was cancelled or passed its deadline", value=stats.cancelled_sequences)
        yield GaugeMetricFamily("irgate_judge_batch_documents", "documents in the judge's batch now", value=stats.running_rows)
        yield GaugeMetricFamily("irgate_judge_waiting_documents", "documents waiting for room in the batch",
                                value=stats.waiting_sequences)


JUDGE_WORK = _JudgeWork()
REGISTRY.register(JUDGE_WORK)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line each
        pass


def _requiring_key(app: Callable[..., Iterable[bytes]], api_key: str) -> Callable[..., Iterable[bytes]]:
    expected = f"Bearer {api_key}".encode()

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode("latin-1")
        if hmac.compare_digest(given, expected):
            return app(environ, start_response)
        start_response("401 Unauthorized", [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")])
        return [b"missing or wrong API key; send 'Authorization: Bearer <key>'\n"]

    return guarded


def _routed(
    metrics: Callable[..., Iterable[bytes]], health_of: Callable[[str], str | None]
) -> Callable[..., Iterable[bytes]]:
    def route(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)
        if path == HEALTH_PATH or path.startswith(HEALTH_PATH + "/"):
            service = path[len(HEALTH_PATH) + 1:]
            status = health_of(service)
            if status is not None:
                start_response("200 OK" if status == "SERVING" else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [f"{status}\n".encode()]
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [f"no health status for service {service!r}\n".encode()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [f"this port serves /metrics and {HEALTH_PATH}[/SERVICE]\n".encode()]

    return route


def serve_metrics(
    host: str, port: int, health_of: Callable[[str], str | None], api_key: str = "", tls: tuple[str, str] | None = None
) -> int:
    """Starts the metrics and HTTP health endpoint in a daemon thread; returns its port.

    health_of(service) gives the gRPC health status name of a service ("" the whole server), None
    for an unknown one. With an API key, scrapes need 'Authorization: Bearer KEY' (Prometheus:
    `authorization` in the scrape config); health stays open, as gRPC health does. With tls (cert
    file, key file) the endpoint speaks HTTPS, so the key never crosses the network in the clear."""
    metrics = make_wsgi_app()
    app = _routed(_requiring_key(metrics, api_key) if api_key else metrics, health_of)
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=tls[0], keyfile=tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="irgate-metrics", daemon=True).start()
    return server.server_port

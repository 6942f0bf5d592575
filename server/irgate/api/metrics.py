"""Prometheus metrics of the gRPC API, served on their own HTTP port."""

from __future__ import annotations

import hmac
import ssl
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

REQUESTS = Counter("irgate_requests_total", "gRPC calls answered", ["method", "code"])
LATENCY = Histogram(
    "irgate_request_seconds",
    "gRPC call duration",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
IN_FLIGHT = Gauge("irgate_requests_in_flight", "gRPC calls in progress")
EMBEDDED_TOKENS = Counter("irgate_embedded_tokens_total", "tokens read by the embedder")
QUEUED_TEXTS = Gauge("irgate_embedding_queue_texts", "texts waiting for the embedder")
JUDGE_BUSY = Gauge("irgate_judge_busy", "1 while the judge model is generating, else 0")


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


def serve_metrics(host: str, port: int, api_key: str = "", tls: tuple[str, str] | None = None) -> int:
    """Starts the /metrics endpoint in a daemon thread; returns its port.

    With an API key, scrapes need 'Authorization: Bearer KEY' (Prometheus: `authorization` in the
    scrape config); with tls (cert file, key file) the endpoint speaks HTTPS, so the key never
    crosses the network in the clear."""
    app = make_wsgi_app()
    server = make_server(host, port, _requiring_key(app, api_key) if api_key else app, ThreadingWSGIServer,
                         handler_class=_QuietHandler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certfile=tls[0], keyfile=tls[1])
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="irgate-metrics", daemon=True).start()
    return server.server_port

"""Prometheus metrics of the gRPC API, served on their own HTTP port."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

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


def serve_metrics(host: str, port: int) -> None:
    """Starts the /metrics endpoint in a daemon thread."""
    start_http_server(port, addr=host)

"""Shared plumbing of the Triton backends: addresses, one tritonclient.grpc.aio client, retries.

An address is `triton://HOST:PORT/MODEL[?option=value&...]` and names one model on a server
that speaks the KServe v2 gRPC protocol (`inference.GRPCInferenceService`): NVIDIA Triton in
production (the tests run a real tritonserver), any other v2 server for the unary paths.

Failures become irgate's domain errors so the api layer can give clear statuses:
- the server cannot be reached, or answers UNAVAILABLE (down, restarting): retried a bounded
  number of times with exponential backoff, then `Unavailable` ("Triton at h:p is
  unreachable: ...");
- the model's queue is full (Triton answers UNAVAILABLE "Exceeds maximum queue size"): retried
  the same way, then `ResourceExhausted` naming the model (the server is up, only busy);
- the model is not loaded or not ready (NOT_FOUND): `Unavailable` naming the model;
- RESOURCE_EXHAUSTED (a message over the size limit, memory): `ResourceExhausted`;
- anything else (a tensor the model does not declare, a wrong shape): `FailedPrecondition`,
  because it means the gateway and the model repository disagree, not that the client erred.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from irgate.errors import FailedPrecondition, InvalidArgument, IrgateError, ResourceExhausted, Unavailable

if TYPE_CHECKING:
    import tritonclient.grpc.aio as grpcclient_aio

SCHEME = "triton"
_log = logging.getLogger(__name__)
T = TypeVar("T")

# gRPC status names (as tritonclient reports them: "StatusCode.NAME") worth another try: the
# server is down or restarting, or Triton refused because its queue was full.
TRANSIENT_STATUSES = frozenset({"UNAVAILABLE"})
# Every option an address may carry; others are refused so a typo does not pass silently.
ADDRESS_OPTIONS = frozenset({"stream", "timeout", "attempts"})
# Unlimited message sizes (generation logits are [steps, vocab] floats); reconnection backs off
# to at most 2 s (gRPC's default grows to 120 s), so a restarted Triton is used again within
# seconds. Keepalive pings find a dead peer under a call that waits long for its answer, at the
# rate a Triton with default flags accepts: gRPC core's server policy allows one ping per 5
# minutes without data and none on an idle channel, and answers a third early ping with GOAWAY
# "too_many_pings", failing the calls in flight (pings every 30 s, idle or not, did that).
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
    ("grpc.keepalive_time_ms", 330_000),  # a little over the 5 minutes, so jitter is never early
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
# How Triton words a rejection by a full queue (dynamic_batching max_queue_size).
_QUEUE_FULL = "exceeds maximum queue size"


@dataclass(frozen=True)
class TritonAddress:
    """A parsed `triton://host:port/model?options` address."""

    host: str
    port: int
    model: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """host:port, as tritonclient takes it (IPv6 hosts in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        query = "&".join(f"{key}={value}" for key, value in sorted(self.options.items()))
        return f"{SCHEME}://{self.url}/{self.model}" + (f"?{query}" if query else "")

    def flag(self, name: str, default: bool) -> bool:
        """A boolean option (1/0, true/false, yes/no, on/off); the default when absent."""
        value = self.options.get(name)
        if value is None:
            return default
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InvalidArgument(f"{self}: option {name}={value!r} must be 1 or 0")

    def number(self, name: str, default: float) -> float:
        value = self.options.get(name)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise InvalidArgument(f"{self}: option {name}={value!r} must be a number") from None
        if number <= 0:
            raise InvalidArgument(f"{self}: option {name}={value!r} must be positive")
        return number


def is_triton_address(address: str) -> bool:
    return address.strip().lower().startswith(f"{SCHEME}://")


def parse_address(address: str) -> TritonAddress:
    """`triton://host:port/model[?stream=0]` -> TritonAddress; InvalidArgument says what is wrong."""
    example = f"{SCHEME}://127.0.0.1:8001/embedder"
    parts = urlsplit(address.strip())
    if parts.scheme.lower() != SCHEME:
        raise InvalidArgument(f"{address!r} is not a Triton address; expected e.g. {example}")
    try:
        port = parts.port
    except ValueError:
        raise InvalidArgument(f"{address!r}: the port must be a number within 1..65535, e.g. {example}") from None
    if not parts.hostname or port is None or port == 0:
        raise InvalidArgument(f"{address!r}: host and gRPC port are required, e.g. {example}")
    model = parts.path.strip("/")
    if not model or "/" in model:
        raise InvalidArgument(f"{address!r}: name exactly one model after the port, e.g. {example}")
    options = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False))
    unknown = sorted(set(options) - ADDRESS_OPTIONS)
    if unknown:
        raise InvalidArgument(f"{address!r}: unknown option(s) {unknown}; known: {sorted(ADDRESS_OPTIONS)}")
    return TritonAddress(parts.hostname, port, model, options)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retry with exponential backoff and full jitter, for transient failures only."""

    attempts: int = 4  # calls in all, the first included
    initial_backoff: float = 0.1  # seconds before the second call
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError(f"invalid retry policy {self}")

    def delay(self, retry: int) -> float:
        """Seconds to wait before retry number `retry` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return random.uniform(ceiling / 2, ceiling)


def status_of(error: BaseException) -> str:
    """The gRPC status name of a tritonclient/grpc error ("UNAVAILABLE"), "" when it has none."""
    status = getattr(error, "status", None)
    if callable(status):  # InferenceServerException.status() -> "StatusCode.UNAVAILABLE"
        status = status()
    if status is None and callable(getattr(error, "code", None)):  # a raw grpc.RpcError
        status = error.code()  # type: ignore[union-attr]
    text = str(status or "")
    return text.rsplit(".", 1)[-1].upper()


def message_of(error: BaseException) -> str:
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return (text or type(error).__name__).strip()


class TritonClient:
    """One lazily opened tritonclient.grpc.aio client for one model, with readiness and retries.

    The gRPC channel is created on first use, inside the event loop that serves requests (a
    channel is bound to the loop it was made in), and re-created if a later call runs in
    another loop (tests that use asyncio.run per call).
    """

    def __init__(self, address: TritonAddress, retry: RetryPolicy | None = None, timeout: float | None = None) -> None:
        self.address = address
        attempts = int(address.number("attempts", (retry or RetryPolicy()).attempts))
        base = retry or RetryPolicy()
        self.retry = RetryPolicy(attempts, base.initial_backoff, base.max_backoff, base.multiplier)
        # Per-call deadline in seconds (None: no deadline); readiness probes use a short one.
        self.timeout = address.number("timeout", 0.0) if "timeout" in address.options else timeout
        self._client: grpcclient_aio.InferenceServerClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._channel: Any = None  # grpc.aio channel of the streaming stub
        self._stub: Any = None
        self._stub_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def where(self) -> str:
        return f"Triton at {self.address.url}"

    def client(self) -> grpcclient_aio.InferenceServerClient:
        if self._closed:
            raise Unavailable(f"the backend for {self.address} is closed")
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            import tritonclient.grpc.aio as grpcclient_aio

            self._client = grpcclient_aio.InferenceServerClient(self.address.url, channel_args=_CHANNEL_OPTIONS)
            self._loop = loop
        return self._client

    def stream_stub(self) -> Any:
        """The generated GRPCInferenceService stub for ModelStreamInfer.

        Streaming goes through the stub rather than tritonclient's aio stream_infer, which
        refuses the `triton_enable_empty_final_response` request parameter: without it a
        decoupled model's responses do not say which one is a request's last.
        """
        if self._closed:
            raise Unavailable(f"the backend for {self.address} is closed")
        loop = asyncio.get_running_loop()
        if self._stub is None or self._stub_loop is not loop:
            import grpc
            from tritonclient.grpc import service_pb2_grpc

            self._channel = grpc.aio.insecure_channel(self.address.url, options=_CHANNEL_OPTIONS)
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
            self._stub_loop = loop
        return self._stub

    async def ready(self, probe_timeout: float = 2.0) -> bool:
        """ServerReady and ModelReady, as a bool: False (never an exception) when either says no
        or the server cannot be reached. Some v2 servers (MLServer) raise for an unknown model
        instead of answering False; that is a no as well."""
        try:
            client = self.client()
            if not await client.is_server_ready(client_timeout=probe_timeout):
                return False
            return bool(await client.is_model_ready(self.address.model, client_timeout=probe_timeout))
        except IrgateError:
            return False
        except Exception as error:  # noqa: BLE001 - a health probe answers, it does not raise
            _log.debug("readiness of %s: %s", self.address, message_of(error))
            return False

    async def call(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` with the retry policy; map what is left to irgate errors."""
        last: BaseException | None = None
        for number in range(1, self.retry.attempts + 1):
            try:
                return await attempt()
            except IrgateError:
                raise
            except Exception as error:  # noqa: BLE001 - classified below
                status = status_of(error)
                if status not in TRANSIENT_STATUSES and not _unreachable(error):
                    raise self.error(what, error) from error
                last = error
                if number < self.retry.attempts:
                    delay = self.retry.delay(number)
                    _log.info("%s %s: %s; retry %d/%d in %.2fs", self.where, what, message_of(error),
                              number, self.retry.attempts - 1, delay)
                    await asyncio.sleep(delay)
        assert last is not None
        if _queue_full(last):
            raise ResourceExhausted(
                f"{self.where}: the queue of model {self.address.model!r} is full ({what} refused "
                f"{self.retry.attempts} times): {message_of(last)}; retry later or raise its max_queue_size"
            ) from last
        raise Unavailable(
            f"{self.where} is unreachable: {message_of(last)} ({what} of model {self.address.model!r} "
            f"failed {self.retry.attempts} times)"
        ) from last

    def error(self, what: str, error: BaseException) -> IrgateError:
        """The irgate error for a non-transient failure of `what`."""
        status, message = status_of(error), message_of(error)
        model = self.address.model
        if _queue_full(error):
            return ResourceExhausted(f"{self.where}: the queue of model {model!r} is full ({what}): {message}")
        if status in TRANSIENT_STATUSES or _unreachable(error):
            return Unavailable(f"{self.where} is unreachable: {message}")
        if status == "RESOURCE_EXHAUSTED":
            return ResourceExhausted(f"{self.where}: model {model!r} is out of resources ({what}): {message}")
        if status == "NOT_FOUND" or _not_ready(message):
            return Unavailable(f"{self.where}: model {model!r} is not loaded ({what}): {message}")
        if status in ("UNKNOWN", "DEADLINE_EXCEEDED", "CANCELLED", "INTERNAL"):
            return Unavailable(f"{self.where}: model {model!r} cannot serve ({what}): {message}")
        return FailedPrecondition(
            f"{self.where}: model {model!r} rejected the {what} request ({status or 'error'}): {message}; "
            "check that model_repository matches this irgate version"
        )

    async def infer(self, inputs: list[Any], outputs: list[str], what: str = "infer", **kwargs: Any) -> Any:
        """One unary ModelInfer with retries; returns the tritonclient InferResult."""
        import tritonclient.grpc as grpcclient

        requested = [grpcclient.InferRequestedOutput(name) for name in outputs]

        async def attempt() -> Any:
            return await self.client().infer(
                self.address.model, inputs, outputs=requested, client_timeout=self.timeout, **kwargs
            )

        return await self.call(what, attempt)

    def stream(self, requests: AsyncIterator[Any]) -> Any:
        """Open one ModelStreamInfer call: ModelInferRequest messages in, ModelStreamInferResponse
        messages out (async iterable, with cancel()).

        Not retried: a stream that broke midway cannot be replayed without repeating tokens.
        """
        return self.stream_stub().ModelStreamInfer(requests, timeout=self.timeout)

    async def close(self) -> None:
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            try:
                await channel.close()
            except Exception as error:  # noqa: BLE001 - a channel of a finished loop
                _log.debug("closing %s: %s", self.address, message_of(error))
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.close()
            except Exception as error:  # noqa: BLE001 - closing a dead channel is not an error
                _log.debug("closing %s: %s", self.address, message_of(error))


def _unreachable(error: BaseException) -> bool:
    text = message_of(error).lower()
    return any(mark in text for mark in ("failed to connect", "connection refused", "socket closed", "connect failed"))


def _queue_full(error: BaseException) -> bool:
    return _QUEUE_FULL in message_of(error).lower()


def _not_ready(message: str) -> bool:
    text = message.lower()
    return "not ready" in text or "unknown model" in text or "not found" in text

"""Runs the gRPC servicers' handlers for an HTTP request, so both fronts share one path: the same
validation, admission control, status mapping, metrics, access log and request ids.

A handler sees an HttpCall where gRPC would give it a ServicerContext; the few context methods the
api layer uses (irgate.api.rpc) behave as they do under gRPC, and an abort raises CallFailed
carrying the status and its google.rpc details for the HTTP dialect to render."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.json_format import MessageToDict
from google.rpc import error_details_pb2, status_pb2

REQUEST_ID = "irgate_request_id"
_DETAILS_KEY = "grpc-status-details-bin"


@dataclass
class CallFailed(grpc.aio.AbortError):
    """A call's failure as the client is told: its gRPC code, message and error details."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    retry_after_s: float | None = None
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def param(self) -> str | None:
        """The first request field at fault, when the server named one."""
        return self.field_violations[0][0] if self.field_violations else None

    @classmethod
    def from_status_details(cls, code: grpc.StatusCode, message: str, encoded: bytes | None) -> CallFailed:
        failure = cls(code, message, reason=code.name)
        if encoded is None:
            return failure
        status = status_pb2.Status.FromString(encoded)
        for packed in status.details:
            failure.details.append(MessageToDict(packed))
            info, bad_request, retry = (
                error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest(), error_details_pb2.RetryInfo()
            )
            if packed.Unpack(info):
                failure.reason = info.reason
            elif packed.Unpack(bad_request):
                failure.field_violations = [(item.field, item.description) for item in bad_request.field_violations]
            elif packed.Unpack(retry):
                failure.retry_after_s = retry.retry_delay.ToTimedelta().total_seconds()
        return failure


def status_details(trailing_metadata: Sequence[tuple[str, Any]] | None) -> bytes | None:
    """The encoded google.rpc.Status among a call's trailers, if any."""
    return next((value for key, value in trailing_metadata or () if key == _DETAILS_KEY), None)


class HttpCall:
    """The part of grpc.aio.ServicerContext that irgate's handlers use, over an HTTP request."""

    def __init__(self, request: web.Request):
        self._request = request
        # HTTP header names are case-insensitive; gRPC metadata keys are lower case.
        self._metadata = tuple((key.lower(), value) for key, value in request.headers.items() if key.lower() != "x-request-id")
        self._metadata += (("x-request-id", request[REQUEST_ID]),)
        self._code: grpc.StatusCode | None = None
        # What a streaming handler writes, one message at a time.
        self.written: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)

    async def write(self, message: Any) -> None:
        await self.written.put(message)

    def invocation_metadata(self) -> Sequence[tuple[str, str]]:
        return self._metadata

    def peer(self) -> str:
        peer = self._request.transport.get_extra_info("peername") if self._request.transport else None
        if not peer:
            return "unknown"
        host, port = peer[0], peer[1]
        return f"ipv6:[{host}]:{port}" if ":" in host else f"ipv4:{host}:{port}"  # as gRPC writes peers

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str]]) -> None:
        """The request id travels as the x-request-id response header, set for every response."""

    def time_remaining(self) -> float | None:
        return None  # HTTP calls carry no deadline; a client that gives up disconnects, which cancels the call

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Sequence[tuple[str, Any]] = ()) -> None:
        self._code = code
        raise CallFailed.from_status_details(code, details, status_details(trailing_metadata))

    async def abort_with_status(self, status: grpc.Status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)


async def unary(handler: Callable[[Any, HttpCall], Awaitable[Any]], message: Any, request: web.Request) -> Any:
    """One answer of a unary (or client-streaming) handler; raises CallFailed as the client is told."""
    return await handler(message, HttpCall(request))


async def streaming(handler: Callable[[Any, HttpCall], Awaitable[None]], message: Any, request: web.Request) -> AsyncIterator[Any]:
    """The messages a server-streaming handler writes, as it writes them; a failure raises CallFailed.

    The handler waits on each write until the one before has been taken, so a slow HTTP reader holds
    the handler back exactly as gRPC flow control would (and its send timeout applies)."""
    call = HttpCall(request)
    task = asyncio.get_running_loop().create_task(handler(message, call))
    taken: asyncio.Future[Any] | None = None
    try:
        while True:
            taken = asyncio.ensure_future(call.written.get())
            await asyncio.wait((taken, task), return_when=asyncio.FIRST_COMPLETED)
            if taken.done():
                yield taken.result()
                continue
            taken.cancel()
            while not call.written.empty():
                yield call.written.get_nowait()
            task.result()  # raises the handler's failure
            return
    finally:
        if taken is not None:
            taken.cancel()
        task.cancel()

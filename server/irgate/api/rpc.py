"""What every RPC shares: admission control, domain-error -> status mapping, metrics, and the
access log (one line per call: method, collection, k, rerank, status, milliseconds, request id)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import grpc

from irgate import errors
from irgate.api.metrics import IN_FLIGHT, LATENCY, REQUESTS

log = logging.getLogger("irgate.api")
access_log = logging.getLogger("irgate.access")
REQUEST_ID_HEADER = "x-request-id"
# A caller's own request id is echoed when it is this short; otherwise the server makes one.
_MAX_GIVEN_ID = 64
# The access-line fields of the call in progress; each RPC runs in its own task, hence its own context.
_fields: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("irgate_call_fields")

STATUS_OF: dict[type[errors.IrgateError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.DataLoss: grpc.StatusCode.DATA_LOSS,
}
Message = TypeVar("Message")


class Admission:
    """Caps the calls in progress; the one over the cap is refused at once, not queued."""

    def __init__(self, limit: int):
        self.limit = limit
        self.active = 0

    def enter(self) -> None:
        if self.active >= self.limit:
            raise errors.ResourceExhausted(
                f"the server is working on {self.active} calls, its limit (--max-concurrent-requests); retry later"
            )
        self.active += 1
        IN_FLIGHT.inc()

    def leave(self) -> None:
        self.active -= 1
        IN_FLIGHT.dec()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        self.enter()
        try:
            yield
        finally:
            self.leave()


async def stream_messages(requests: AsyncIterator[Message], idle_s: float, method: str) -> AsyncIterator[Message]:
    """The messages of a client stream, each of which must arrive within idle_s of the one before:
    an open but silent stream is closed instead of lingering forever."""
    iterator = aiter(requests)
    while True:
        try:
            message = await asyncio.wait_for(anext(iterator), idle_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise errors.DeadlineExceeded(
                f"no {method} message arrived for {idle_s:g} s (--stream-idle-s), so the stream was closed; "
                "send messages without long pauses, or open a new stream"
            ) from None
        yield message


def _code_of(error: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _message(error: BaseException) -> str:
    """The error's message with its notes (e.g. what a stream committed before it failed)."""
    return "; ".join([str(error), *getattr(error, "__notes__", ())])


def note(**fields: Any) -> None:
    """Adds fields to the access line of the call in progress (e.g. the collection of an upsert stream)."""
    _fields.get().update(fields)


def _request_fields(request: Any) -> dict[str, Any]:
    """What the access line shows of a request message: its collection, k and rerank depth."""
    if request is None:  # a client stream: its handler notes what it learns
        return {}
    present = request.DESCRIPTOR.fields_by_name
    fields: dict[str, Any] = {}
    for name in ("collection", "name"):
        if name in present and getattr(request, name):
            fields["collection"] = getattr(request, name)[:80]
    if "k" in present:
        fields["k"] = request.k
    if "rerank" in present:
        fields["rerank"] = request.rerank.top_n
    return fields


def _request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= _MAX_GIVEN_ID and value.isprintable():
            return value
    return uuid.uuid4().hex[:16]


def _ended_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a call was cancelled: its deadline passed, or the client gave up."""
    remaining = context.time_remaining()
    # grpc cancels the handler when the deadline passes; what remains then is at most a scheduling delay.
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining < 0.05 else grpc.StatusCode.CANCELLED


@contextlib.asynccontextmanager
async def _guarded(
    admission: Admission | None, method: str, context: grpc.aio.ServicerContext, request: Any = None
) -> AsyncIterator[None]:
    """Admission for the whole call (None: the handler takes slots itself), status mapping, metrics,
    and the access line."""
    start = time.perf_counter()
    fields = _request_fields(request)
    _fields.set(fields)
    request_id = _request_id(context)
    peer = context.peer()  # gone once the call is cancelled
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    # Reranking costs seconds where a plain search costs milliseconds: separate series.
    label = f"{method}+rerank" if fields.get("rerank") else method
    code = grpc.StatusCode.OK
    try:
        if admission is not None:
            try:
                admission.enter()
            except errors.ResourceExhausted as error:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                await context.abort(code, str(error))
            try:
                yield
            finally:
                admission.leave()
        else:
            yield
    except asyncio.CancelledError:  # the client cancelled or its deadline passed
        code = _ended_code(context)
        raise
    except grpc.aio.AbortError:  # the handler aborted with its own status
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as error:
        code = _code_of(error)
        message = _message(error)
        if code is grpc.StatusCode.INTERNAL:
            # The details (paths, exception types) stay in the server log; the client gets the id to quote.
            log.exception("%s failed (request id %s)", method, request_id)
            notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
            message = f"internal error in {method} (request id {request_id}; the server log has the details){notes}"
        await context.abort(code, message)
    finally:
        seconds = time.perf_counter() - start
        REQUESTS.labels(label, code.name).inc()
        LATENCY.labels(label).observe(seconds)
        access_log.info(
            "%s %s", method, code.name,
            extra={"fields": {"method": method, **fields, "status": code.name, "ms": round(seconds * 1000, 1),
                              "request_id": request_id, "peer": peer}},
        )


def unary(method: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Wraps a handler that answers once (unary or client-streaming request)."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _guarded(self.admission, method, context, request):
                return await handler(self, request, context)

        return wrapper

    return decorate


def client_streaming(method: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Wraps a client-streaming handler. It holds no admission slot for the whole call: the handler
    takes one per message (Admission.slot), so streams waiting for their next message cannot starve
    other calls."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, requests: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _guarded(None, method, context):
                return await handler(self, requests, context)

        return wrapper

    return decorate


def streaming(method: str) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """Wraps a server-streaming handler (an async generator)."""

    def decorate(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _guarded(self.admission, method, context, request):
                async for message in handler(self, request, context):
                    yield message

        return wrapper

    return decorate

"""What every RPC shares: admission control, domain-error -> status mapping (with google.rpc error
details), the answer-size check, metrics, and the access log (one line per call: method, collection,
k, rerank, status, milliseconds, request id)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from irgate import errors, tracing
from irgate.api.metrics import IN_FLIGHT, LATENCY, REQUESTS
from irgate.identifiers import escaped

log = logging.getLogger("irgate.api")
access_log = logging.getLogger("irgate.access")
REQUEST_ID_HEADER = "x-request-id"
# The google.rpc.ErrorInfo domain of every irgate error: reasons are unique within it.
ERROR_DOMAIN = "irgate.dev"
MIB = 1024 * 1024
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
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
}
Message = TypeVar("Message")


def rich_status(code: grpc.StatusCode, message: str, error: errors.IrgateError | None, request_id: str = "") -> grpc.Status:
    """The status a client gets: status_message's, in the grpc-status-details-bin trailer."""
    return rpc_status.to_status(status_message(code, message, error, request_id))


def status_message(
    code: grpc.StatusCode, message: str, error: errors.IrgateError | None, request_id: str = ""
) -> status_pb2.Status:
    """A google.rpc.Status: code and message, and error details: ErrorInfo always, BadRequest when a
    request field is at fault, RetryInfo when waiting helps, ResourceInfo when a named thing is
    missing or already there. Also what a SearchBatch result holds for a query that failed."""
    info = error_details_pb2.ErrorInfo(reason=error.reason if error is not None else code.name, domain=ERROR_DOMAIN)
    if request_id:
        info.metadata["request_id"] = request_id
    details: list[ProtoMessage] = [info]
    if error is not None and error.field is not None:
        violation = error_details_pb2.BadRequest.FieldViolation(field=error.field, description=message)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if error is not None and error.retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(round(error.retry_after_s * 1e9))
        details.append(error_details_pb2.RetryInfo(retry_delay=delay))
    if error is not None and error.resource is not None:
        details.append(error_details_pb2.ResourceInfo(
            resource_type=error.resource.kind, resource_name=error.resource.name, description=message
        ))
    packed = []
    for detail in details:
        wrapped = any_pb2.Any()
        wrapped.Pack(detail)
        packed.append(wrapped)
    return status_pb2.Status(code=code.value[0], message=message, details=packed)


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    error: errors.IrgateError | None,
    request_id: str = "",
) -> NoReturn:
    """Ends the call with this status and its details (error None: an internal error)."""
    status = rich_status(code, message, error, request_id)
    # An abort's trailers replace those set before it, so the request id travels with the details.
    trailers = (*status.trailing_metadata, *(((REQUEST_ID_HEADER, request_id),) if request_id else ()))
    await context.abort(status.code, status.details, trailers)
    raise AssertionError("context.abort returned")  # it always raises; this tells the type checker


class Admission:
    """What every call is held to: a cap on the calls in progress (the one over it is refused at
    once, not queued), the largest answer message, and how long a server stream may wait for its
    client to read before it is ended and its slot freed."""

    def __init__(self, limit: int, max_message_bytes: int, stream_send_timeout_s: float):
        self.limit = limit
        self.active = 0
        self.max_message_bytes = max_message_bytes
        self.stream_send_timeout_s = stream_send_timeout_s

    def enter(self) -> None:
        if self.active >= self.limit:
            raise errors.ResourceExhausted(
                f"the server is working on {self.active} calls, its limit (--max-concurrent-requests); retry later",
                reason="SERVER_BUSY",
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

    def check_size(self, message: ProtoMessage, method: str, smaller: str) -> None:
        """Refuses an answer gRPC would fail to send; smaller says what to ask for instead."""
        size = message.ByteSize()
        if size > self.max_message_bytes:
            raise errors.ResponseTooLarge(
                f"the {method} answer is {size} bytes ({size / MIB:.1f} MiB), over the message limit of "
                f"{self.max_message_bytes} bytes ({self.max_message_bytes // MIB} MiB, --max-message-mb); {smaller}"
            )


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
                "send messages without long pauses, or open a new stream",
                reason="STREAM_IDLE",
            ) from None
        yield message


def code_of(error: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _message(error: BaseException) -> str:
    """The error's message with its notes (e.g. what a stream committed before it failed)."""
    return "; ".join([str(error), *getattr(error, "__notes__", ())])


def note(**fields: Any) -> None:
    """Adds fields to the access line of the call in progress (e.g. the collection of an upsert stream)."""
    _fields.get().update({name: escaped(value) if isinstance(value, str) else value for name, value in fields.items()})


def _request_fields(request: Any) -> dict[str, Any]:
    """What the access line shows of a request message: its collection, k and rerank depth. The
    collection is as sent, not yet validated: escaped, so that a newline in it cannot forge a line."""
    if request is None:  # a client stream: its handler notes what it learns
        return {}
    present = request.DESCRIPTOR.fields_by_name
    fields: dict[str, Any] = {}
    for name in ("collection", "name"):
        if name in present and getattr(request, name):
            fields["collection"] = escaped(getattr(request, name)[:80])
    if "k" in present:
        fields["k"] = request.k
    if "rerank" in present:
        fields["rerank"] = request.rerank.top_n
    return fields


def request_id(given: object) -> str:
    """The caller's request id when it is short and printable, else a new one (both fronts use this)."""
    if isinstance(given, str) and 0 < len(given) <= _MAX_GIVEN_ID and given.isprintable():
        return given
    return uuid.uuid4().hex[:16]


def _request_id(context: grpc.aio.ServicerContext) -> str:
    return request_id(next((value for key, value in context.invocation_metadata() or () if key == REQUEST_ID_HEADER), None))


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
    recorded = False
    call = tracing.start_call(method, context.invocation_metadata() or (), request_id, **fields)

    def record() -> None:
        nonlocal recorded
        if recorded:
            return
        recorded = True
        seconds = time.perf_counter() - start
        REQUESTS.labels(label, code.name).inc()
        LATENCY.labels(label).observe(seconds)
        access_log.info(
            "%s %s", method, code.name,
            extra={"fields": {"method": method, **fields, "status": code.name, "ms": round(seconds * 1000, 1),
                              "request_id": request_id, "peer": peer}},
        )

    try:
        if admission is not None:
            try:
                admission.enter()
            except errors.ResourceExhausted as error:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                await abort(context, code, str(error), error, request_id)
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
        code = code_of(error)
        message = _message(error)
        if code is grpc.StatusCode.INTERNAL:
            # The details (paths, exception types) stay in the server log; the client gets the id to quote.
            log.exception("%s failed (request id %s)", method, request_id)
            notes = "".join(f"; {note}" for note in getattr(error, "__notes__", ()))
            message = f"internal error in {method} (request id {request_id}; the server log has the details){notes}"
        # Recorded first: the status goes out behind any message still queued, so to a client that
        # stopped reading the abort returns only once it reads, goes away or its deadline passes.
        record()
        await abort(context, code, message, error if isinstance(error, errors.IrgateError) else None, request_id)
    finally:
        record()
        tracing.end_call(call, code.name)


LESS = "ask for less in one call"


def unary(method: str, smaller: str = LESS) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Wraps a handler that answers once (unary or client-streaming request); smaller says what to
    ask for when the answer would exceed the message limit."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _guarded(self.admission, method, context, request):
                response = await handler(self, request, context)
                self.admission.check_size(response, method, smaller)
                return response

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
                response = await handler(self, requests, context)
                self.admission.check_size(response, method, LESS)
                return response

        return wrapper

    return decorate


def streaming(
    method: str, smaller: str = LESS
) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., Awaitable[None]]]:
    """Wraps a server-streaming handler (an async generator). Each message is size-checked and
    written by the wrapper, so that a client which stops reading for --stream-send-timeout-s ends
    the stream and frees its slot instead of holding it while gRPC waits for flow control."""

    def decorate(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., Awaitable[None]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> None:
            timeout_s = self.admission.stream_send_timeout_s
            async with _guarded(self.admission, method, context, request):
                # Closed on any exit, so that the work behind the stream (a judge's) stops with it.
                async with contextlib.aclosing(handler(self, request, context)) as messages:
                    async for message in messages:
                        self.admission.check_size(message, method, smaller)
                        try:
                            await asyncio.wait_for(context.write(message), timeout_s)
                        except TimeoutError:
                            raise errors.DeadlineExceeded(
                                f"the client read no {method} message for {timeout_s:g} s (--stream-send-timeout-s), "
                                "so the stream was ended; read a stream's messages as they arrive",
                                reason="STREAM_NOT_READ",
                            ) from None

        return wrapper

    return decorate

"""What every RPC shares: admission control, domain-error -> status mapping, and metrics."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from irgate import errors
from irgate.api.metrics import IN_FLIGHT, LATENCY, REQUESTS

log = logging.getLogger("irgate.api")

STATUS_OF: dict[type[errors.IrgateError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
}


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


def _code_of(error: BaseException) -> grpc.StatusCode:
    for kind, code in STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


@contextlib.asynccontextmanager
async def _guarded(admission: Admission, method: str, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    start = time.perf_counter()
    try:
        admission.enter()
    except errors.ResourceExhausted as error:
        REQUESTS.labels(method, grpc.StatusCode.RESOURCE_EXHAUSTED.name).inc()
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    code = grpc.StatusCode.OK
    try:
        yield
    except asyncio.CancelledError:  # the client cancelled or its deadline passed
        code = grpc.StatusCode.CANCELLED
        raise
    except grpc.aio.AbortError:  # the handler aborted with its own status
        code = context.code() or grpc.StatusCode.UNKNOWN
        raise
    except Exception as error:
        code = _code_of(error)
        message = str(error)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s failed", method)
            message = f"internal error in {method}: {type(error).__name__}: {error}"
        await context.abort(code, message)
    finally:
        admission.leave()
        REQUESTS.labels(method, code.name).inc()
        LATENCY.labels(method).observe(time.perf_counter() - start)


def unary(method: str) -> Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]:
    """Wraps a handler that answers once (unary or client-streaming request)."""

    def decorate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with _guarded(self.admission, method, context):
                return await handler(self, request, context)

        return wrapper

    return decorate


def streaming(method: str) -> Callable[[Callable[..., AsyncIterator[Any]]], Callable[..., AsyncIterator[Any]]]:
    """Wraps a server-streaming handler (an async generator)."""

    def decorate(handler: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        @functools.wraps(handler)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _guarded(self.admission, method, context):
                async for message in handler(self, request, context):
                    yield message

        return wrapper

    return decorate

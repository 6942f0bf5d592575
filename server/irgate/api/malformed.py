"""Requests whose bytes are not a valid message (e.g. invalid UTF-8 in a string field) get
INVALID_ARGUMENT. Left to grpc, a failing deserializer answers UNKNOWN with a server traceback."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from irgate import errors
from irgate.api.rpc import abort


class _Malformed:
    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # protobuf raises DecodeError, or others for some inputs
            return _Malformed(error)

    return parse


async def _reject(context: grpc.aio.ServicerContext, method: str, request: _Malformed) -> None:
    error = errors.InvalidArgument(
        f"the request to {method} is not a valid protobuf message ({request.error}); string fields must be valid UTF-8",
        reason="MALFORMED_REQUEST",
    )
    await abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(error), error)


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # Registered handlers never change, so each method is wrapped once, not on every call.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        if details.method in self._wrapped:
            return self._wrapped[details.method]
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        self._wrapped[details.method] = _wrap(handler, details.method)
        return self._wrapped[details.method]


def _wrap(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same handler, with a deserializer that cannot fail and a check of its result."""
    codecs = {
        "request_deserializer": _tolerant(handler.request_deserializer),
        "response_serializer": handler.response_serializer,
    }

    async def checked(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            if isinstance(request, _Malformed):
                await _reject(context, method, request)
            yield request

    # A streaming handler is either an async generator or a coroutine that writes with
    # context.write() (grpc.health.v1's Watch is one): each wrapper keeps the shape it wraps.
    if handler.request_streaming and handler.response_streaming:
        inner = handler.stream_stream
        if inspect.isasyncgenfunction(inner):

            async def stream_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                async for response in inner(checked(requests, context), context):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, **codecs)

        async def stream_stream_writing(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await inner(checked(requests, context), context)

        return grpc.stream_stream_rpc_method_handler(stream_stream_writing, **codecs)
    if handler.request_streaming:

        async def stream_unary(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            return await handler.stream_unary(checked(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, **codecs)
    if handler.response_streaming:
        inner = handler.unary_stream
        if inspect.isasyncgenfunction(inner):

            async def unary_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                if isinstance(request, _Malformed):
                    await _reject(context, method, request)
                async for response in inner(request, context):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, **codecs)

        async def unary_stream_writing(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if isinstance(request, _Malformed):
                await _reject(context, method, request)
            return await inner(request, context)

        return grpc.unary_stream_rpc_method_handler(unary_stream_writing, **codecs)

    async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Malformed):
            await _reject(context, method, request)
        return await handler.unary_unary(request, context)

    return grpc.unary_unary_rpc_method_handler(unary_unary, **codecs)

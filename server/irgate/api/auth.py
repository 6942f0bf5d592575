"""Bearer API-key check for every RPC except health checks (orchestrators probe without keys)."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from irgate import errors
from irgate.api.rpc import abort

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


def refusal(given: Sequence[str | bytes], expected: bytes, how: str) -> errors.Unauthenticated | None:
    """Why a call whose `authorization` values are `given` is refused (None: it may go on);
    `how` says how a client sends the key, in that front's words."""
    if len(given) > 1:
        # Proxies and libraries disagree on which of several copies wins: refuse rather than guess.
        return errors.Unauthenticated(f"{len(given)} 'authorization' headers were sent; send exactly one",
                                      reason="API_KEY_REPEATED")
    key = given[0] if given else ""
    if hmac.compare_digest(key.encode() if isinstance(key, str) else key, expected):
        return None
    return errors.Unauthenticated(f"missing or wrong API key; send {how}",
                                  reason="API_KEY_INVALID" if key else "API_KEY_MISSING")


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, api_key: str):
        self._expected = f"Bearer {api_key}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        given = [value for key, value in details.invocation_metadata or () if key == "authorization"]
        error = refusal(given, self._expected, "metadata 'authorization: Bearer <key>'")
        return handler if error is None else _denying(handler, error)


def _denying(handler: grpc.RpcMethodHandler, error: errors.Unauthenticated) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, str(error), error)

    async def deny_streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await abort(context, grpc.StatusCode.UNAUTHENTICATED, str(error), error)
        yield  # unreachable; an async generator is what a streaming handler must be

    codecs = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny_streaming, **codecs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny, **codecs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny_streaming, **codecs)
    return grpc.unary_unary_rpc_method_handler(deny, **codecs)

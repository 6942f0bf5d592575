"""The HTTP/JSON front: one aiohttp application on the gRPC server's event loop.

aiohttp serves HTTP/1.1 on asyncio itself (no second server process or thread), streams responses
(Server-Sent Events), limits body sizes, and cancels a handler whose client disconnects, so an
abandoned rerank frees the judge as a cancelled gRPC call does."""

from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from functools import partial

import grpc
from aiohttp import web

from irgate import errors
from irgate.api.http import native, openai, openapi, rerank, tei
from irgate.api.http.calls import REQUEST_ID, CallFailed
from irgate.api.http.services import HttpServices
from irgate.api.http.status import Dialect, error_response, failure_of
from irgate.api.auth import refusal
from irgate.api.rpc import REQUEST_ID_HEADER, request_id

log = logging.getLogger("irgate.http")
access_log = logging.getLogger("irgate.access")
# Orchestrators probe health without keys, as they do the gRPC health service.
OPEN_PATHS = frozenset({"/health"})
Handler = Callable[[web.Request, HttpServices], Awaitable[web.StreamResponse]]


def _routes() -> list[tuple[str, str, Handler, Dialect]]:
    routes: list[tuple[str, str, Handler, Dialect]] = [
        ("POST", "/v1/embeddings", openai.embeddings, Dialect.OPENAI),
        ("GET", "/v1/models", openai.models, Dialect.OPENAI),
        ("POST", "/v1/rerank", partial(rerank.rerank, version="1"), Dialect.RERANK),
        ("POST", "/v2/rerank", partial(rerank.rerank, version="2"), Dialect.RERANK),
        ("POST", "/embed", tei.embed, Dialect.TEI),
        ("POST", "/rerank", tei.rerank, Dialect.TEI),
        ("GET", "/info", tei.info, Dialect.TEI),
        ("GET", "/health", tei.health, Dialect.TEI),
        ("GET", "/openapi.json", _openapi, Dialect.IRGATE),
    ]
    routes += [("POST", native.path(method), native.route(method), Dialect.IRGATE) for method in native.methods()]
    return routes


async def _openapi(request: web.Request, services: HttpServices) -> web.Response:
    return web.json_response(openapi.document())


class HttpFront:
    """Serves the routes through the gRPC servicers; start() on the running event loop, stop() to close."""

    def __init__(self, services: HttpServices, api_key: str, max_body_bytes: int):
        self._services = services
        self._expected = f"Bearer {api_key}".encode() if api_key else b""
        self._dialects: dict[str, Dialect] = {}
        self.app = web.Application(client_max_size=max_body_bytes, middlewares=[self._middleware])
        for verb, path, handler, dialect in _routes():
            self._dialects[path] = dialect
            self.app.router.add_route(verb, path, self._wrap(handler, dialect))
        self.app.on_response_prepare.append(self._stamp)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int, tls: tuple[str, str] | None = None) -> int:
        """Listens on host:port and returns the port; raises OSError when it is taken."""
        context = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(*tls)
        # handler_cancellation: a client that disconnects cancels its call, as gRPC does.
        self._runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=context, reuse_port=False)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _wrap(self, handler: Handler, dialect: Dialect) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request, self._services)
            except CallFailed as failure:
                return error_response(failure, dialect)
            except errors.IrgateError as error:  # the dialect's own checks, before any servicer ran
                return error_response(failure_of(error, request[REQUEST_ID]), dialect)
            except web.HTTPRequestEntityTooLarge:
                limit = self._services.settings.max_message_mb
                failure = CallFailed(grpc.StatusCode.INVALID_ARGUMENT, f"the request body is larger than the server's "
                                     f"limit of {limit} MiB (--max-message-mb); send fewer or shorter texts per call",
                                     reason="BODY_TOO_LARGE")
                return error_response(failure, dialect, body_too_large=True)

        return handle

    def _dialect(self, request: web.Request) -> Dialect:
        return self._dialects.get(request.path, Dialect.IRGATE)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        start = time.perf_counter()
        request[REQUEST_ID] = request_id(request.headers.get(REQUEST_ID_HEADER))
        try:
            refusal = self._refusal(request)
            response = error_response(refusal, self._dialect(request)) if refusal else await handler(request)
        except web.HTTPException as error:  # no such route, or a method it does not take
            code = grpc.StatusCode.NOT_FOUND if error.status == 404 else grpc.StatusCode.UNIMPLEMENTED
            message = (f"no route {request.method} {request.path}; GET /openapi.json lists the routes"
                       if error.status in (404, 405) else error.reason)
            response = error_response(CallFailed(code, message, reason="NO_ROUTE"), self._dialect(request))
            response.set_status(error.status)
        except Exception:
            log.exception("HTTP %s %s failed (request id %s)", request.method, request.path, request[REQUEST_ID])
            failure = CallFailed(grpc.StatusCode.INTERNAL, f"internal error (request id {request[REQUEST_ID]}; "
                                 "the server log has the details)", reason="INTERNAL")
            response = error_response(failure, self._dialect(request))
        seconds = time.perf_counter() - start
        line = f"HTTP {request.method} {request.rel_url.raw_path[:200]}"
        access_log.info("%s %d", line, response.status, extra={"fields": {
            "method": line, "status": response.status, "ms": round(seconds * 1000, 1),
            "request_id": request[REQUEST_ID], "peer": request.remote}})
        return response

    def _refusal(self, request: web.Request) -> CallFailed | None:
        if not self._expected or request.path in OPEN_PATHS:
            return None
        error = refusal(request.headers.getall("Authorization", []), self._expected, "the header 'Authorization: Bearer <key>'")
        return None if error is None else failure_of(error, request[REQUEST_ID])

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        if REQUEST_ID in request:
            response.headers[REQUEST_ID_HEADER] = request[REQUEST_ID]

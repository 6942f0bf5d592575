"""irgate's own API over HTTP: every RPC of irgate.v1 at `POST /irgate.v1.SERVICE/METHOD` (the gRPC
method path, as the Connect protocol and grpc-gateway's default rules spell it), its request and
response bodies in protobuf's canonical JSON mapping of the same messages, so the proto stays the one
contract. UpsertDocuments takes one message or an array of them; JudgeStream answers as
Server-Sent Events, one `data:` line per JudgeStreamResponse and an `event: error` if it fails."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from irgate.api.http import calls
from irgate.api.http.body import json_value, kind_of
from irgate.api.http.services import HttpServices
from irgate.api.http.status import Dialect, error_body, http_status, invalid
from irgate_client.v1 import irgate_pb2 as pb

SERVICES = tuple(pb.DESCRIPTOR.services_by_name.values())


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def servicer(services: HttpServices, method: MethodDescriptor) -> Any:
    by_service = {"Info": services.info, "Embed": services.embed, "Collections": services.collections,
                  "Search": services.search, "Judge": services.judge}
    return getattr(by_service[method.containing_service.name], method.name)


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _parse(value: object, kind: type[Message], where: str) -> Message:
    if not isinstance(value, dict):
        raise invalid(f"{where} is {kind_of(value)}; send a JSON object of {kind.DESCRIPTOR.full_name}", "")
    try:
        return json_format.ParseDict(value, kind())
    except json_format.ParseError as error:
        raise invalid(f"{where} is not a valid {kind.DESCRIPTOR.full_name}: {error}", "") from None


async def _messages(request: web.Request, kind: type[Message]) -> list[Message]:
    body = await json_value(request)
    if isinstance(body, list):
        return [_parse(item, kind, f"message {position}") for position, item in enumerate(body)]
    return [_parse(body, kind, "the request body")]


def route(method: MethodDescriptor) -> Callable[[web.Request, HttpServices], Any]:
    kind = message_factory.GetMessageClass(method.input_type)

    async def handle(request: web.Request, services: HttpServices) -> web.StreamResponse:
        handler = servicer(services, method)
        messages = await _messages(request, kind)
        if method.client_streaming:
            response = await calls.unary(handler, _iterate(messages), request)
            return web.json_response(to_json(response))
        if len(messages) != 1:
            raise invalid(f"{method.name} takes one message; the body holds an array of {len(messages)}", "")
        if method.server_streaming:
            return await _events(request, calls.streaming(handler, messages[0], request))
        return web.json_response(to_json(await calls.unary(handler, messages[0], request)))

    return handle


async def _iterate(messages: list[Message]) -> AsyncIterator[Message]:
    for message in messages:
        yield message


async def _events(request: web.Request, stream: AsyncIterator[Message]) -> web.StreamResponse:
    """Server-Sent Events. A failure before the first message is an ordinary error response."""
    first = await anext(stream, None)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    try:
        if first is not None:
            await response.write(_event(to_json(first)))
            async for message in stream:
                await response.write(_event(to_json(message)))
    except calls.CallFailed as failure:
        await response.write(_event(error_body(failure, Dialect.IRGATE, http_status(failure, Dialect.IRGATE)), "error"))
    await response.write_eof()
    return response


def _event(data: dict[str, Any], name: str = "") -> bytes:
    head = f"event: {name}\n" if name else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def methods() -> list[MethodDescriptor]:
    return [method for service in SERVICES for method in service.methods]

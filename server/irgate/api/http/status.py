"""The one status map of the HTTP front: gRPC code -> HTTP status, and each dialect's error body.

Every dialect keeps the error shape its clients parse:
  - irgate's own JSON API: Google's HTTP error form (AIP-193), `{"error": {code, message, status, details}}`;
  - OpenAI: `{"error": {message, type, param, code}}`;
  - Cohere and Jina rerank: `{"message": ...}`;
  - text-embeddings-inference: `{"error": ..., "error_type": ...}` with its own status codes.
The reason strings (google.rpc.ErrorInfo) are the same as over gRPC."""

from __future__ import annotations

import enum
import math
from typing import Any

import grpc
from aiohttp import web

from irgate import errors
from irgate.api.http.calls import CallFailed, status_details
from irgate.api.rpc import code_of, rich_status

Code = grpc.StatusCode

# The mapping of google.rpc.Code to HTTP (googleapis/google/rpc/code.proto), with 499 for CANCELLED.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.UNAUTHENTICATED: 401,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
}
# text-embeddings-inference's own codes: validation 422, overloaded 429, backend 424, unhealthy 503.
TEI_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    Code.INVALID_ARGUMENT: (422, "Validation"),
    Code.FAILED_PRECONDITION: (422, "Validation"),
    Code.OUT_OF_RANGE: (422, "Validation"),
    Code.NOT_FOUND: (422, "Validation"),
    Code.RESOURCE_EXHAUSTED: (429, "Overloaded"),
    Code.UNAVAILABLE: (503, "Unhealthy"),
    Code.UNAUTHENTICATED: (401, "Unauthorized"),
}
_OPENAI_TYPE = {
    400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
    409: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
}
# A body larger than the limit is refused before any handler runs; the gRPC front has no such status.
PAYLOAD_TOO_LARGE = 413


class Dialect(enum.Enum):
    IRGATE = "irgate"
    OPENAI = "openai"
    RERANK = "rerank"  # Cohere and Jina
    TEI = "tei"


def invalid(message: str, field: str) -> errors.InvalidArgument:
    """A request the HTTP front refuses before any handler sees it, naming the JSON field at fault."""
    return errors.InvalidArgument(message, field=field or None)


def failure_of(error: errors.IrgateError, request_id: str) -> CallFailed:
    """A domain error raised by the HTTP front itself, with the details gRPC would give it."""
    code = code_of(error)
    status = rich_status(code, str(error), error, request_id)
    return CallFailed.from_status_details(code, status.details, status_details(status.trailing_metadata))


def http_status(failure: CallFailed, dialect: Dialect, body_too_large: bool = False) -> int:
    if body_too_large:
        return PAYLOAD_TOO_LARGE
    if dialect is Dialect.TEI:
        return TEI_STATUS.get(failure.code, (424, "Backend"))[0]
    return HTTP_STATUS.get(failure.code, 500)


def error_body(failure: CallFailed, dialect: Dialect, status: int) -> dict[str, Any]:
    if dialect is Dialect.OPENAI:
        kind = _OPENAI_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return {"error": {"message": failure.message, "type": kind, "param": failure.param, "code": failure.reason}}
    if dialect is Dialect.RERANK:
        return {"message": failure.message, "reason": failure.reason}
    if dialect is Dialect.TEI:
        kind = "Validation" if status == PAYLOAD_TOO_LARGE else TEI_STATUS.get(failure.code, (424, "Backend"))[1]
        return {"error": failure.message, "error_type": kind}
    return {"error": {"code": status, "message": failure.message, "status": failure.code.name, "details": failure.details}}


def error_response(failure: CallFailed, dialect: Dialect, body_too_large: bool = False) -> web.Response:
    status = http_status(failure, dialect, body_too_large)
    headers = {}
    if failure.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(failure.retry_after_s)))
    return web.json_response(error_body(failure, dialect, status), status=status, headers=headers)

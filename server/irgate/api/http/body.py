"""Reading a JSON request body at the edge: each wrong type gets a message naming the field, what it
was and what is allowed."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from irgate.api.http.status import invalid

_MISSING = object()


def kind_of(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


async def json_value(request: web.Request) -> Any:
    """The body as JSON; an empty body is an empty object (for calls whose fields are all optional)."""
    raw = await request.read()  # over the size limit: web.HTTPRequestEntityTooLarge
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as error:
        raise invalid(f"the request body is not valid JSON: {error}", "") from None


async def json_object(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object."""
    body = await json_value(request)
    if not isinstance(body, dict):
        raise invalid(f"the request body is {kind_of(body)}; send a JSON object", "")
    return body


def optional(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any, allowed: str) -> Any:
    """body[name] if present and not null, checked to be of `kind`; `allowed` says what is accepted."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        return default
    # JSON true is a bool, which Python counts as an int: a number field refuses it.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _types(kind)):
        raise invalid(f"'{name}' is {kind_of(value)}; {allowed}", name)
    return value


def required(body: dict[str, Any], name: str, kind: type | tuple[type, ...], allowed: str) -> Any:
    value = optional(body, name, kind, _MISSING, allowed)
    if value is _MISSING:
        raise invalid(f"'{name}' is missing; {allowed}", name)
    return value


def count(body: dict[str, Any], name: str, default: int | None, allowed: str) -> int | None:
    """A whole number of at least 1 (top_n, dimensions), or default when absent."""
    value = optional(body, name, int, default, allowed)
    if value is not None and value < 1:
        raise invalid(f"'{name}' is {value}; {allowed}", name)
    return value


def check_dimensions(body: dict[str, Any], dimension: int) -> None:
    """`dimensions` (OpenAI's and TEI's) may only name the model's own: the served models cannot shorten vectors."""
    dimensions = optional(body, "dimensions", int, dimension, f"give {dimension} or leave it out")
    if dimensions != dimension:
        raise invalid(f"'dimensions' is {dimensions}; this model gives {dimension}-dimensional vectors and cannot "
                      f"shorten them, so give {dimension} or leave it out", "dimensions")


def _types(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)

"""The OpenAPI document of the HTTP front (`GET /openapi.json`). irgate's own routes are derived from
the proto's descriptors, so the document cannot drift from the contract; the dialect routes are
described by the fields they read."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from irgate import __version__
from irgate.api.http import native

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_DOUBLE: {"type": "number"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte"},
    # Canonical JSON writes 64-bit integers as strings (and reads either).
    FieldDescriptor.TYPE_INT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_UINT64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SINT64: {"type": "string", "format": "int64"},
    FieldDescriptor.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    FieldDescriptor.TYPE_SFIXED64: {"type": "string", "format": "int64"},
}
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Struct": {"type": "object"},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array"},
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string"},
}
_DIALECT_ROUTES: list[tuple[str, str, str, dict[str, str]]] = [
    ("post", "/v1/embeddings", "OpenAI embeddings", {
        "input": "a string, strings, token ids or token-id arrays", "model": "any name (one embedder is served)",
        "encoding_format": "float (default) or base64", "dimensions": "the model's dimension only",
        "input_type": "irgate: document (default) or query", "instruction": "irgate: with input_type query"}),
    ("get", "/v1/models", "OpenAI model list", {}),
    ("post", "/v1/rerank", "Cohere v1 and Jina rerank", {
        "query": "the query", "documents": "strings or {text, id?, title?} objects", "top_n": "results to return",
        "return_documents": "echo each document", "instruction": "irgate: joined to the query",
        "max_reasoning_tokens": "irgate: reasoning budget per document", "return_reasoning": "irgate: the reasoning text"}),
    ("post", "/v2/rerank", "Cohere v2 rerank", {"query": "the query", "documents": "strings", "top_n": "results to return"}),
    ("post", "/embed", "text-embeddings-inference embed", {
        "inputs": "a string or strings", "normalize": "default true", "truncate": "default false",
        "prompt_name": "document (default) or query"}),
    ("post", "/rerank", "text-embeddings-inference rerank", {
        "query": "the query", "texts": "strings", "raw_scores": "logits instead of probabilities",
        "return_text": "echo each text"}),
    ("get", "/info", "text-embeddings-inference model info", {}),
    ("get", "/health", "200 when serving, 503 otherwise (no API key needed)", {}),
]


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        name = field.message_type.full_name
        if field.message_type.GetOptions().map_entry:
            return {"type": "object", "additionalProperties": _field_schema(field.message_type.fields_by_name["value"])}
        item = _WELL_KNOWN.get(name, {"$ref": f"#/components/schemas/{name}"})
    elif field.type == FieldDescriptor.TYPE_ENUM:
        item = {"type": "string", "enum": [value.name for value in field.enum_type.values]}
    else:
        item = _SCALARS.get(field.type, {"type": "integer"})
    if field.label == FieldDescriptor.LABEL_REPEATED:
        return {"type": "array", "items": item}
    return item


def _messages(descriptor: Descriptor, into: dict[str, Any]) -> None:
    if descriptor.full_name in into or descriptor.full_name in _WELL_KNOWN or descriptor.GetOptions().map_entry:
        return
    into[descriptor.full_name] = {
        "type": "object",
        "properties": {field.json_name: _field_schema(field) for field in descriptor.fields},
    }
    for field in descriptor.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            _messages(field.message_type, into)


def document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for method in native.methods():
        _messages(method.input_type, schemas)
        _messages(method.output_type, schemas)
        answer = {"$ref": f"#/components/schemas/{method.output_type.full_name}"}
        media = "text/event-stream" if method.server_streaming else "application/json"
        paths[native.path(method)] = {"post": {
            "summary": f"{method.containing_service.full_name}.{method.name} in canonical protobuf JSON"
                       + (" (one message or an array of them)" if method.client_streaming else "")
                       + (" (Server-Sent Events, one data line per message)" if method.server_streaming else ""),
            "requestBody": {"content": {"application/json": {
                "schema": {"$ref": f"#/components/schemas/{method.input_type.full_name}"}}}},
            "responses": {"200": {"description": "the answer", "content": {media: {"schema": answer}}}},
        }}
    for verb, route, summary, fields in _DIALECT_ROUTES:
        operation: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "the answer"}}}
        if fields:
            operation["requestBody"] = {"content": {"application/json": {"schema": {
                "type": "object", "properties": {name: {"description": text} for name, text in fields.items()}}}}}
        paths.setdefault(route, {})[verb] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "irgate", "version": __version__,
                 "description": "irgate's HTTP front: its own API in protobuf JSON and the OpenAI, Cohere, Jina and "
                                "text-embeddings-inference dialects. With an API key, send 'Authorization: Bearer KEY'."},
        "paths": paths,
        "components": {"schemas": schemas,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }

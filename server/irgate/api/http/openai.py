"""OpenAI's embeddings API: `POST /v1/embeddings` and `GET /v1/models`, as the openai SDK, LangChain's
OpenAIEmbeddings and LlamaIndex's OpenAI-like embeddings call them.

The SDK asks for base64 unless told otherwise, so both encodings are served. `input` may be token
ids; as text-embeddings-inference and vLLM do, they are read as ids of the served embedder's own
vocabulary (a client that tokenises with OpenAI's tokeniser must send text instead). irgate's
extensions: `input_type` ("document", the default, or "query") and `instruction` (queries only)."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
from aiohttp import web

from irgate.api.http import calls
from irgate.api.http.body import check_dimensions, json_object, kind_of, optional
from irgate.api.http.services import HttpServices
from irgate.api.http.status import invalid
from irgate_client.v1 import irgate_pb2 as pb

# The OpenAI API's own limit on inputs per call; the server's --max-batch-size applies too.
MAX_INPUTS = 2048
INPUT_ALLOWED = "send a string, an array of strings, an array of token ids or an array of token-id arrays"
ENCODINGS = ("float", "base64")


def _texts(value: object, services: HttpServices) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        shown = "an empty array" if value == [] else kind_of(value)
        raise invalid(f"'input' is {shown}; {INPUT_ALLOWED}", "input")
    if len(value) > MAX_INPUTS:
        raise invalid(f"'input' has {len(value)} items; the API allows at most {MAX_INPUTS}", "input")
    if all(isinstance(item, str) for item in value):
        return value
    if all(_is_ids(item) for item in value):
        return [services.embedding.decode(value)]
    if all(isinstance(item, list) and item and all(_is_ids(token) for token in item) for item in value):
        return [services.embedding.decode(ids) for ids in value]
    raise invalid(f"'input' mixes kinds of items; {INPUT_ALLOWED}", "input")


def _is_ids(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


async def embeddings(request: web.Request, services: HttpServices) -> web.Response:
    body = await json_object(request)
    if "input" not in body:
        raise invalid(f"'input' is missing; {INPUT_ALLOWED}", "input")
    texts = _texts(body["input"], services)
    encoding = optional(body, "encoding_format", str, "float", "allowed: \"float\" or \"base64\"")
    if encoding not in ENCODINGS:
        raise invalid(f"'encoding_format' is {encoding!r}; allowed: \"float\" or \"base64\"", "encoding_format")
    check_dimensions(body, services.embedding.manifest.dimension)
    input_type = optional(body, "input_type", str, "document", "allowed: \"document\" or \"query\"")
    if input_type not in ("document", "query"):
        raise invalid(f"'input_type' is {input_type!r}; allowed: \"document\" or \"query\"", "input_type")
    instruction = optional(body, "instruction", str, "", "give the instruction as a string")
    if instruction and input_type != "query":
        raise invalid("'instruction' applies to queries; add \"input_type\": \"query\"", "instruction")
    kind = pb.TEXT_KIND_QUERY if input_type == "query" else pb.TEXT_KIND_DOCUMENT
    message = pb.EmbedRequest(inputs=[pb.EmbedInput(kind=kind, text=text, instruction=instruction) for text in texts])
    response: pb.EmbedResponse = await calls.unary(services.embed.Embed, message, request)
    return web.json_response({
        "object": "list",
        "data": [
            {"object": "embedding", "index": index, "embedding": _encoded(item.values, encoding)}
            for index, item in enumerate(response.embeddings)
        ],
        "model": services.embedding.manifest.name,
        "usage": {"prompt_tokens": response.total_tokens, "total_tokens": response.total_tokens},
    })


def _encoded(values: Any, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(np.asarray(values, dtype="<f4").tobytes()).decode("ascii")
    return list(values)


async def models(request: web.Request, services: HttpServices) -> web.Response:
    """The served models; any model name is accepted in a request, since each role serves one."""
    names = [services.embedding.manifest.name]
    if services.judge_model:
        names.append(services.judge_model)
    return web.json_response({
        "object": "list",
        "data": [{"id": name, "object": "model", "created": 0, "owned_by": "irgate"} for name in names],
    })

"""text-embeddings-inference's routes: `POST /embed`, `POST /rerank`, `GET /info`, `GET /health`, as
LlamaIndex's TextEmbeddingsInference and Haystack's HuggingFaceTEIRanker call them, with TEI's
defaults (no truncation unless asked, normalised vectors) and its error statuses."""

from __future__ import annotations

import math

import grpc
from aiohttp import web

from irgate import __version__
from irgate.api.http import calls
from irgate.api.http.body import check_dimensions, json_object, kind_of, optional
from irgate.api.http.rerank import judge_request, ranked
from irgate.api.http.services import HttpServices
from irgate.api.http.status import Dialect, error_response, invalid
from irgate_client.v1 import irgate_pb2 as pb

PROMPTS = {"query": pb.TEXT_KIND_QUERY, "document": pb.TEXT_KIND_DOCUMENT}


def _inputs(body: dict[str, object]) -> list[str]:
    value = body.get("inputs")
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return value
    shown = "missing" if value is None else ("an empty array" if value == [] else kind_of(value))
    raise invalid(f"'inputs' is {shown}; send a string or an array of strings", "inputs")


def _truncation(body: dict[str, object]) -> int:
    truncate = optional(body, "truncate", bool, False, "give true or false")
    direction = optional(body, "truncation_direction", str, "Right", "allowed: \"Right\"")
    if direction != "Right":
        raise invalid(f"'truncation_direction' is {direction!r}; this server keeps the beginning of a text: "
                      "allowed: \"Right\"", "truncation_direction")
    return pb.TRUNCATION_END if truncate else pb.TRUNCATION_NONE


async def embed(request: web.Request, services: HttpServices) -> web.Response:
    body = await json_object(request)
    texts = _inputs(body)
    prompt = optional(body, "prompt_name", str, "document", "allowed: \"query\" or \"document\"")
    if prompt not in PROMPTS:
        raise invalid(f"'prompt_name' is {prompt!r}; allowed: \"query\" or \"document\"", "prompt_name")
    check_dimensions(body, services.embedding.manifest.dimension)
    message = pb.EmbedRequest(
        inputs=[pb.EmbedInput(kind=PROMPTS[prompt], text=text) for text in texts],
        truncation=_truncation(body),
        raw=not optional(body, "normalize", bool, True, "give true or false"),
    )
    response: pb.EmbedResponse = await calls.unary(services.embed.Embed, message, request)
    return web.json_response([list(item.values) for item in response.embeddings])


async def rerank(request: web.Request, services: HttpServices) -> web.Response:
    body = await json_object(request)
    message = judge_request(body, documents_field="texts")
    raw_scores = optional(body, "raw_scores", bool, False, "give true or false")
    return_text = optional(body, "return_text", bool, False, "give true or false")
    response: pb.JudgeResponse = await calls.unary(services.judge.Judge, message, request)
    results = []
    for verdict in ranked(response.verdicts, None):
        # The judge's score is a softmax over two answer tokens; its raw score is their logit difference.
        result: dict[str, object] = {"index": verdict.index, "score": _logit(verdict.score) if raw_scores else verdict.score}
        if return_text:
            result["text"] = message.documents[verdict.index].inline.text
        results.append(result)
    return web.json_response(results)


def _logit(probability: float) -> float:
    clipped = min(max(probability, 1e-7), 1 - 1e-7)
    return math.log(clipped / (1 - clipped))


async def info(request: web.Request, services: HttpServices) -> web.Response:
    manifest = services.embedding.manifest
    settings = services.settings
    return web.json_response({
        "model_id": manifest.name,
        "model_sha": None,
        "model_dtype": "float32",
        "model_type": {"embedding": {"pooling": manifest.pooling}},
        "max_concurrent_requests": settings.max_concurrent_requests,
        "max_input_length": manifest.max_tokens,
        "max_batch_tokens": settings.max_batch_tokens,
        "max_batch_requests": None,
        "max_client_batch_size": settings.max_batch_size,
        "auto_truncate": False,
        "tokenization_workers": 1,
        "version": __version__,
        "sha": None,
        "docker_label": None,
        "reranker_model_id": services.judge_model or None,
    })


async def health(request: web.Request, services: HttpServices) -> web.Response:
    status = services.health("")
    if status == "SERVING":
        return web.Response(status=200)
    failure = calls.CallFailed(grpc.StatusCode.UNAVAILABLE, f"the server is {status or 'starting'}; retry later",
                               reason="UNHEALTHY")
    return error_response(failure, Dialect.TEI)

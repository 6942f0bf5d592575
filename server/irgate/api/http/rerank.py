"""Cohere's rerank API (`POST /v1/rerank`, `POST /v2/rerank`) and Jina's (`POST /v1/rerank`, the same
form), answered by the judge.

Documents are strings or `{"text", "id"?, "title"?}` objects; results come best first, cut to
`top_n`. irgate's extensions in the body: `instruction`, `max_reasoning_tokens`, `return_reasoning`;
each result also says whether the judge found it relevant, how its reasoning ended and how many
tokens it spent, and echoes the document's id. Cohere's `max_tokens_per_doc` (or irgate's
`max_passage_tokens`) lowers the judge's passage cap. Any model name is accepted: the server has one judge."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from irgate.api.http import calls
from irgate.api.http.body import count, json_object, kind_of, optional, required
from irgate.api.http.services import HttpServices
from irgate.api.http.status import invalid
from irgate.identifiers import check_document_id
from irgate_client.v1 import irgate_pb2 as pb

# How a verdict's reasoning ended, as the rerank results name it.
ENDED_NAMES = {pb.ENDED_ANSWERED: "answered", pb.ENDED_FORCED: "forced", pb.ENDED_FORCED_EOS: "forced_eos", pb.ENDED_SCORED: "scored"}
DOCUMENTS_ALLOWED = "send an array of strings or of {\"text\": ...} objects (with optional \"id\" and \"title\")"


def _document(position: int, value: object) -> pb.JudgeDocument:
    field = f"documents[{position}]"
    if isinstance(value, str):
        return pb.JudgeDocument(inline=pb.InlineDocument(text=value))
    if not isinstance(value, dict):
        raise invalid(f"'{field}' is {kind_of(value)}; {DOCUMENTS_ALLOWED}", field)
    text = required(value, "text", str, f"{field} needs its passage as a string in \"text\"")
    title = optional(value, "title", str, "", f"{field}.title must be a string")
    given = optional(value, "id", (str, int), "", f"{field}.id must be a string")
    document_id = check_document_id(str(given), f"{field}.id") if given != "" else ""
    return pb.JudgeDocument(inline=pb.InlineDocument(id=document_id, text=text, title=title))


def judge_request(body: dict[str, Any], documents_field: str = "documents") -> pb.JudgeRequest:
    """The JudgeRequest of a rerank body (Cohere, Jina and text-embeddings-inference share its fields)."""
    query = required(body, "query", str, "give the query the documents are ranked against")
    documents = required(body, documents_field, list, DOCUMENTS_ALLOWED)
    message = pb.JudgeRequest(
        query=query,
        instruction=optional(body, "instruction", str, "", "give the instruction as a string"),
        documents=[_document(position, value) for position, value in enumerate(documents)],
        return_reasoning=optional(body, "return_reasoning", bool, False, "give true or false"),
    )
    # Cohere v2's max_tokens_per_doc is the judge's passage cap, which a request may only lower.
    for name in ("max_tokens_per_doc", "max_passage_tokens"):
        cap = count(body, name, None, "give a whole number of tokens, 1 or more")
        if cap is not None:
            message.max_passage_tokens = cap
    budget = optional(body, "max_reasoning_tokens", int, None, "give a whole number of tokens, 0 or more")
    if budget is not None:
        if budget < 0:
            raise invalid(f"'max_reasoning_tokens' is {budget}; give 0 (answer at once) or more", "max_reasoning_tokens")
        message.max_reasoning_tokens = budget
    return message


def ranked(verdicts: Any, top_n: int | None) -> list[Any]:
    """Verdicts best first (ties in request order), at most top_n."""
    order = sorted(verdicts, key=lambda verdict: (-verdict.score, verdict.index))
    return order if top_n is None else order[:top_n]


async def rerank(request: web.Request, services: HttpServices, version: str) -> web.Response:
    body = await json_object(request)
    message = judge_request(body)
    top_n = count(body, "top_n", None, "give a whole number of results, 1 or more")
    return_documents = optional(body, "return_documents", bool, False, "give true or false")
    response: pb.JudgeResponse = await calls.unary(services.judge.Judge, message, request)
    results = []
    for verdict in ranked(response.verdicts, top_n):
        document = message.documents[verdict.index].inline
        result: dict[str, Any] = {
            "index": verdict.index,
            "relevance_score": verdict.score,
            "relevant": verdict.relevant,
            "ended": ENDED_NAMES.get(verdict.ended, ""),
            "reasoning_tokens": verdict.reasoning_tokens,
            "truncated": verdict.truncated,
        }
        if document.id:
            result["id"] = document.id
        if return_documents:
            result["document"] = {"text": document.text, **({"id": document.id} if document.id else {}),
                                  **({"title": document.title} if document.title else {})}
        if message.return_reasoning:
            result["reasoning"] = verdict.reasoning
        results.append(result)
    return web.json_response({
        "id": request[calls.REQUEST_ID],
        "model": services.judge_model,
        "results": results,
        "meta": {"api_version": {"version": version}, "billed_units": {"search_units": 1}},
    })

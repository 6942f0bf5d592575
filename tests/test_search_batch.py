"""SearchBatch: many queries in one call, each with its own collection, instruction, k, filter and
mode, answered in query order as Search answers each one, with a failing query failing alone. Run
against a real server on both index engines."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from test_server import PAPERS
from test_tracing import Receiver, _traceparent, receiver  # noqa: F401 - the real OTLP receiver fixture

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Document, IrgateError, SearchQuery
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

MAX_BATCH = 8  # the test servers' --max-batch-size


@pytest.fixture
def papers(engine_client: Client) -> Iterator[str]:
    name = f"batch-{uuid.uuid4().hex[:10]}"
    engine_client.create_collection(name)
    engine_client.upsert(name, PAPERS)
    yield name
    engine_client.delete_collection(name)


def as_pairs(hits) -> list[tuple[str, float]]:
    return [(hit.id, round(hit.score, 4)) for hit in hits]


def test_each_query_is_answered_as_search_answers_it(engine_client: Client, papers: str) -> None:
    queries = [
        SearchQuery(papers, "why does it rain", k=2),
        SearchQuery(papers, "animals", instruction="find biology papers", k=4, include_documents=True),
        SearchQuery(papers, "molten rock", filter={"year": 2001}),
        SearchQuery(papers, "blood sugar", filter={"field": {"$in": ["biology"]}, "year": {"$gt": 2011}}, k=1),
    ]
    results = engine_client.search_batch(queries)
    assert len(results) == len(queries)
    for query, hits in zip(queries, results, strict=True):
        alone = engine_client.search(query.collection, query.query, instruction=query.instruction, k=query.k,
                                     filter=query.filter, include_documents=query.include_documents)
        assert not isinstance(hits, IrgateError)
        assert as_pairs(hits) == as_pairs(alone)
        assert [hit.document for hit in hits] == [hit.document for hit in alone]
    assert results[0][0].id == "rain" and len(results[0]) == 2
    assert [hit.id for hit in results[3]] == ["insulin"]


def test_a_failing_query_fails_alone_with_its_own_status(engine_client: Client, papers: str) -> None:
    results = engine_client.search_batch([
        SearchQuery(papers, "why does it rain", k=1),
        SearchQuery("no-such-collection", "rain"),
        SearchQuery(papers, "rain", filter={"year": {"$gt": [2000]}}),
        SearchQuery(papers, "rain", k=101),
        SearchQuery(papers, "volcano lava", k=1),
    ])
    assert [hit.id for hit in results[0]] == ["rain"] and [hit.id for hit in results[4]] == ["volcano"]
    missing, bad_filter, too_many = results[1:4]
    assert isinstance(missing, IrgateError) and missing.code == grpc.StatusCode.NOT_FOUND
    assert "no-such-collection" in missing.message and missing.reason == "NOT_FOUND"
    assert isinstance(bad_filter, IrgateError) and bad_filter.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in bad_filter.field_violations] == ["filter.year.$gt"]
    assert isinstance(too_many, IrgateError) and too_many.code == grpc.StatusCode.INVALID_ARGUMENT
    assert [violation.field for violation in too_many.field_violations] == ["k"]
    assert "between 1 and 100" in too_many.message


def test_each_query_keeps_its_mode(engine_client: Client, papers: str) -> None:
    """The mode passes through to the pipeline: lexical runs where the engine has it and is refused
    alone (FAILED_PRECONDITION) where it does not, as Search does."""
    dense, lexical = engine_client.search_batch([
        SearchQuery(papers, "magma crust", k=2),
        SearchQuery(papers, "magma crust", k=2, mode="lexical"),
    ])
    assert dense[0].id == "volcano" and dense[0].dense_score is not None
    if engine_client.info().index_engine == "milvus":
        assert isinstance(lexical, IrgateError) and lexical.code == grpc.StatusCode.FAILED_PRECONDITION
    else:
        alone = engine_client.search(papers, "magma crust", k=2, mode="lexical")
        assert as_pairs(lexical) == as_pairs(alone) and lexical[0].lexical_score is not None
        assert lexical[0].dense_score is None


def test_queries_of_several_collections_in_one_call(engine_client: Client, papers: str) -> None:
    other = f"batch-other-{uuid.uuid4().hex[:8]}"
    engine_client.create_collection(other)
    engine_client.upsert(other, PAPERS[:1])
    try:
        here, there = engine_client.search_batch([SearchQuery(papers, "cats", k=4), SearchQuery(other, "cats", k=4)])
        assert len(here) == 4 and [hit.id for hit in there] == ["rain"]
    finally:
        engine_client.delete_collection(other)


def test_the_call_itself_fails_only_for_what_concerns_it_whole(server: LocalServer, client: Client) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.SearchStub(channel)
        for count, words in [(0, "queries has 0 entries; send 1 to 8"), (MAX_BATCH + 1, "queries has 9 entries")]:
            request = pb.SearchBatchRequest(queries=[pb.SearchRequest(collection="x", query="q")] * count)
            with pytest.raises(grpc.RpcError) as raised:
                stub.SearchBatch(request, timeout=30)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in raised.value.details()
    with pytest.raises(IrgateError) as refused:
        client.search_batch([])
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(IrgateError) as refused:
        client.search_batch([SearchQuery("x", "q"), SearchQuery("x", "q", k=0)])
    assert "queries[1]: k is 0" in refused.value.message


def test_over_long_queries_fail_alone_when_truncation_is_refused(engine_client: Client, papers: str) -> None:
    """Queries that refuse truncation are embedded together; one too long for the model fails by itself."""
    long_query = "rain " * 600
    short, too_long, truncated = engine_client.search_batch([
        SearchQuery(papers, "why does it rain", k=1, truncate=False),
        SearchQuery(papers, long_query, k=1, truncate=False),
        SearchQuery(papers, long_query, k=1),
    ])
    assert [hit.id for hit in short] == ["rain"] and [hit.id for hit in truncated] == ["rain"]
    assert isinstance(too_long, IrgateError) and too_long.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens" in too_long.message


def test_the_http_front_answers_a_batch_with_each_query_s_status(minilm_folder: Path, tmp_path: Path) -> None:
    port = free_port()
    with LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--http-port", str(port)]) as running:
        with Client(running.address, timeout=120) as client:
            client.create_collection("http-batch")
            client.upsert("http-batch", PAPERS)
        body = {"queries": [{"collection": "http-batch", "query": "why does it rain", "k": 1},
                            {"collection": "http-batch", "query": "rain", "filter": {"year": {"$gt": [1]}}}]}
        answer = httpx.post(f"http://127.0.0.1:{port}/irgate.v1.Search/SearchBatch", json=body, timeout=120)
        pages = httpx.post(f"http://127.0.0.1:{port}/irgate.v1.Collections/ListDocuments",
                           json={"collection": "http-batch", "pageSize": 3}, timeout=120)
    assert answer.status_code == 200, answer.text
    found, refused = answer.json()["results"]
    assert [hit["id"] for hit in found["response"]["hits"]] == ["rain"]
    assert refused["error"]["code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0] and "$gt" in refused["error"]["message"]
    violations = next(detail for detail in refused["error"]["details"] if detail["@type"].endswith("BadRequest"))
    assert violations["fieldViolations"][0]["field"] == "filter.year.$gt"
    assert pages.status_code == 200 and [d["id"] for d in pages.json()["documents"]] == ["cats", "insulin", "rain"]
    assert pages.json()["nextPageToken"]


def test_the_queries_of_a_batch_share_one_embedding_call(
    minilm_folder: Path, tmp_path: Path, receiver: Receiver  # noqa: F811 - the fixture imported above
) -> None:
    """Seen in the server's own trace of the call: one tokenize and one embedding batch span for all
    the queries, and an index search per query."""
    with LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none",
                                "--otlp-endpoint", receiver.address],  # type: ignore[attr-defined]
                     env={"OTEL_BSP_SCHEDULE_DELAY": "200"}) as running:
        with Client(running.address, timeout=120) as client:
            client.create_collection("shared-batch")
            client.upsert("shared-batch", PAPERS)
            trace_id, _, traceparent = _traceparent()
            queries = [pb.SearchRequest(collection="shared-batch", query=text, k=2)
                       for text in ("rain", "cats", "lava", "insulin", "glucose")]
            with grpc.insecure_channel(running.address) as channel:
                answer = pb_grpc.SearchStub(channel).SearchBatch(
                    pb.SearchBatchRequest(queries=queries), metadata=(("traceparent", traceparent),), timeout=120)
            spans = receiver.of_trace(trace_id, {"SearchBatch"})
    assert "SearchBatch" in spans, f"spans of the trace: {sorted(spans)}"
    assert all(result.HasField("response") for result in answer.results)
    assert (len(spans["tokenize"]), len(spans["embedding batch"]), len(spans["index search"])) == (1, 1, 5)


def test_answers_over_the_message_limit_say_what_to_ask_for(minilm_folder: Path, tmp_path: Path) -> None:
    """A batch (or a page) too big to send is refused whole, naming the smaller request that fits."""
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-message-mb", "1", "--max-batch-size", "8"]
    with LocalServer(tmp_path, args) as running, Client(running.address, timeout=120) as client:
        client.create_collection("long")
        text = "Rain forms when water vapour condenses. " * 3500  # 140 kB each: 8 answer 1.1 MiB
        vector = [1.0] + [0.0] * (client.info().dimension - 1)  # given: nothing to embed
        client.upsert("long", [Document(id=f"d{i}", text=text, vector=vector) for i in range(8)], batch_size=4)
        with pytest.raises(IrgateError) as refused:
            client.search_batch([SearchQuery("long", "rain", k=8, include_documents=True)] * 2)
        assert refused.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and refused.value.reason == "RESPONSE_TOO_LARGE"
        assert "the SearchBatch answer is" in refused.value.message and "fewer queries" in refused.value.message
        assert len(client.search_batch([SearchQuery("long", "rain", k=8)] * 8)) == 8
        with pytest.raises(IrgateError) as refused:
            next(iter(client.list_documents("long", page_size=8)))
        assert refused.value.reason == "RESPONSE_TOO_LARGE" and "smaller page_size" in refused.value.message
        assert [len(page.documents) for page in client.list_documents("long", page_size=4)] == [4, 4]

"""The HTTP front of a real server process, spoken to by the client libraries that claim each dialect:
the official openai SDK, the cohere SDK, and raw HTTP for text-embeddings-inference's routes and
irgate's own JSON API. Every answer is compared with the same call over gRPC."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import cohere
import httpx
import numpy as np
import openai
import pytest

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Query

KEY = "http-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
PASSAGES = ["Rain forms when water vapour condenses into droplets.", "Cats are small domesticated mammals.",
            "Clouds release precipitation when droplets grow heavy."]


@pytest.fixture(scope="module")
def http_server(minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    # A tiny reasoning cap keeps each judged document to a few decode steps on a CPU.
    with LocalServer(tmp_path_factory.mktemp("http-data"), [
        "--embedder", f"onnx:{minilm_folder}", "--judge", f"local:{judge_folder}", "--max-reasoning-tokens", "2",
        "--api-key", KEY, "--http-port", str(port), "--max-message-mb", "1",
    ]) as running:
        running.http = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield running


@pytest.fixture(scope="module")
def grpc_client(http_server: LocalServer):
    with Client(http_server.address, api_key=KEY, timeout=300) as connected:
        yield connected


@pytest.fixture(scope="module")
def http(http_server: LocalServer):
    with httpx.Client(base_url=http_server.http, headers=AUTH, timeout=300) as connected:  # type: ignore[attr-defined]
        yield connected


def test_openai_sdk_embeddings_equal_grpc_embed_in_both_encodings(http_server: LocalServer, grpc_client: Client) -> None:
    sdk = openai.OpenAI(base_url=f"{http_server.http}/v1", api_key=KEY)  # type: ignore[attr-defined]
    expected = np.array([item.values for item in grpc_client.embed(PASSAGES)])
    by_default = sdk.embeddings.create(model="anything", input=PASSAGES)  # the SDK asks for base64
    as_floats = sdk.embeddings.create(model="anything", input=PASSAGES, encoding_format="float")
    for answer in (by_default, as_floats):
        assert [item.index for item in answer.data] == [0, 1, 2]
        assert np.abs(np.array([item.embedding for item in answer.data]) - expected).max() < 1e-6
        assert answer.model == "all-MiniLM-L6-v2"
        assert answer.usage.prompt_tokens == answer.usage.total_tokens > 3 * 2
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.embeddings.create(model="anything", input="a", dimensions=128)
    assert refused.value.body["param"] == "dimensions" and "384" in refused.value.body["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{http_server.http}/v1", api_key="wrong").embeddings.create(model="m", input="a")


def test_openai_base64_is_little_endian_float32_and_queries_take_instructions(http: httpx.Client, grpc_client: Client) -> None:
    answer = http.post("/v1/embeddings", json={"input": "what causes rain", "encoding_format": "base64",
                                               "input_type": "query", "instruction": "physics only"}).json()
    decoded = np.frombuffer(base64.b64decode(answer["data"][0]["embedding"]), dtype="<f4")
    expected = grpc_client.embed([Query("what causes rain", instruction="physics only")])[0].values
    assert np.abs(decoded - np.array(expected)).max() < 1e-6


def test_openai_token_id_input_is_read_in_the_embedders_vocabulary(http: httpx.Client, grpc_client: Client,
                                                                    minilm_folder: Path) -> None:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(minilm_folder / "tokenizer.json")).encode("rain falls", add_special_tokens=False).ids
    answer = http.post("/v1/embeddings", json={"input": [ids, ids[:1]], "encoding_format": "float"}).json()
    expected = grpc_client.embed(["rain falls"])[0].values
    assert np.abs(np.array(answer["data"][0]["embedding"]) - np.array(expected)).max() < 1e-6
    refused = http.post("/v1/embeddings", json={"input": [10**9]})
    assert refused.status_code == 400 and "vocabulary" in refused.json()["error"]["message"]
    assert http.post("/v1/embeddings", json={"input": [1, "a"]}).json()["error"]["param"] == "input"


def test_cohere_sdk_rerank_returns_the_judges_order_and_scores(http_server: LocalServer, grpc_client: Client) -> None:
    verdicts = grpc_client.judge("what causes rain", PASSAGES)
    best_first = sorted(verdicts, key=lambda verdict: (-verdict.score, verdict.index))
    sdk = cohere.ClientV2(KEY, base_url=http_server.http)  # type: ignore[attr-defined]
    answer = sdk.rerank(model="rank1", query="what causes rain", documents=PASSAGES, top_n=2)
    assert [result.index for result in answer.results] == [verdict.index for verdict in best_first[:2]]
    for result, verdict in zip(answer.results, best_first[:2], strict=True):
        assert result.relevance_score == pytest.approx(verdict.score, abs=1e-5)
    v1 = cohere.Client(KEY, base_url=http_server.http).rerank(  # type: ignore[attr-defined]
        model="rank1", query="what causes rain", documents=PASSAGES, return_documents=True)
    assert [result.document.text for result in v1.results] == [PASSAGES[verdict.index] for verdict in best_first]


def test_jina_form_with_irgate_extensions_echoes_ids_and_titles(http: httpx.Client, grpc_client: Client) -> None:
    documents = [{"text": PASSAGES[0], "id": "rain", "title": "Weather"}, {"text": PASSAGES[1], "id": "cats"}]
    answer = http.post("/v1/rerank", json={"model": "m", "query": "what causes rain", "documents": documents,
                                           "instruction": "physics", "max_reasoning_tokens": 1, "return_reasoning": True,
                                           "return_documents": True, "max_tokens_per_doc": 3})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert sorted(result["id"] for result in results) == ["cats", "rain"]
    rain = next(result for result in results if result["id"] == "rain")
    assert rain["document"] == {"text": PASSAGES[0], "id": "rain", "title": "Weather"}
    assert rain["reasoning_tokens"] == 1 and "reasoning" in rain and rain["ended"] in ("forced", "forced_eos", "answered")
    assert rain["truncated"]  # Cohere's max_tokens_per_doc lowered the passage cap to 3 tokens
    assert answer.json()["id"] == answer.headers["x-request-id"]


def test_tei_routes(http: httpx.Client, grpc_client: Client, http_server: LocalServer) -> None:
    vectors = http.post("/embed", json={"inputs": ["rain falls", "cats purr"]}).json()
    expected = [item.values for item in grpc_client.embed(["rain falls", "cats purr"])]
    assert np.abs(np.array(vectors) - np.array(expected)).max() < 1e-6
    raw = http.post("/embed", json={"inputs": "rain falls", "normalize": False}).json()[0]
    assert np.linalg.norm(raw) != pytest.approx(1.0, abs=1e-3)
    ranked = http.post("/rerank", json={"query": "what causes rain", "texts": PASSAGES, "return_text": True}).json()
    assert [item["score"] for item in ranked] == sorted((item["score"] for item in ranked), reverse=True)
    assert {item["text"] for item in ranked} == set(PASSAGES)
    info = http.get("/info").json()
    assert info["model_id"] == "all-MiniLM-L6-v2" and info["max_input_length"] == 256
    assert httpx.get(f"{http_server.http}/health").status_code == 200  # type: ignore[attr-defined]  # no key needed


@pytest.mark.parametrize(("route", "body", "status", "needle"), [
    ("/embed", {"inputs": "word " * 400}, 422, "256"),                      # too long without truncate: Validation
    ("/embed", {"inputs": []}, 422, "inputs"),
    ("/embed", {"inputs": "a", "truncation_direction": "Left"}, 422, "Right"),
    ("/rerank", {"query": "q"}, 422, "texts"),
])
def test_tei_errors_have_its_body_and_statuses(http: httpx.Client, route: str, body: dict, status: int, needle: str) -> None:
    answer = http.post(route, json=body)
    assert answer.status_code == status, answer.text
    assert set(answer.json()) == {"error", "error_type"} and needle in answer.json()["error"]
    assert answer.json()["error_type"] == "Validation" and answer.headers["x-request-id"]


def test_oversized_bodies_bad_json_unknown_routes_and_keys_get_each_dialects_error(http: httpx.Client,
                                                                                  http_server: LocalServer) -> None:
    huge = {"input": "x" * (2 * 1024 * 1024)}  # the server was started with --max-message-mb 1
    too_large = http.post("/v1/embeddings", json=huge)
    assert too_large.status_code == 413 and "1 MiB" in too_large.json()["error"]["message"]
    assert http.post("/embed", json={"inputs": huge["input"]}).status_code == 413
    bad_json = http.post("/v2/rerank", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["message"]
    wrong_type = http.post("/irgate.v1.Search/Search", json={"collection": "c", "query": "q", "k": "many"})
    assert wrong_type.status_code == 400 and wrong_type.json()["error"]["status"] == "INVALID_ARGUMENT"
    unknown = http.get("/v3/nothing")
    assert unknown.status_code == 404 and "openapi.json" in unknown.json()["error"]["message"]
    assert http.get("/v1/embeddings").status_code == 405
    without_key = httpx.post(f"{http_server.http}/v1/embeddings", json={"input": "a"})  # type: ignore[attr-defined]
    assert without_key.status_code == 401 and without_key.json()["error"]["code"] == "API_KEY_MISSING"
    for answer in (too_large, bad_json, wrong_type, unknown, without_key):
        assert answer.headers["x-request-id"]
    log = "".join(http_server.output)
    assert "Traceback" not in log and " 500" not in log


def test_every_rpc_as_json(http: httpx.Client, grpc_client: Client) -> None:
    def call(method: str, body: object) -> dict:
        answer = http.post(f"/irgate.v1.{method}", json=body)
        assert answer.status_code == 200, answer.text
        return answer.json()

    assert call("Info/GetInfo", {})["embedder"]["dimension"] == 384
    assert call("Collections/CreateCollection", {"name": "web"})["name"] == "web"
    upserted = call("Collections/UpsertDocuments", [
        {"collection": "web", "documents": [{"id": "rain", "text": PASSAGES[0], "metadata": {"year": 2021}}]},
        {"collection": "web", "documents": [{"id": "cats", "text": PASSAGES[1]}]},
    ])
    assert upserted["upserted"] == "2"  # canonical JSON writes 64-bit integers as strings
    assert [item["name"] for item in call("Collections/ListCollections", {})["collections"]] == ["web"]
    assert call("Collections/DescribeCollection", {"name": "web"})["documents"] == "2"
    assert call("Collections/GetDocuments", {"collection": "web", "ids": ["rain"]})["documents"][0]["text"] == PASSAGES[0]
    found = call("Search/Search", {"collection": "web", "query": "what causes rain", "k": 2, "rerank": {"topN": 1}})
    over_grpc = grpc_client.search("web", "what causes rain", k=2, rerank=1)
    assert [hit["id"] for hit in found["hits"]] == [hit.id for hit in over_grpc]
    assert found["hits"][0]["verdict"]["score"] == pytest.approx(over_grpc[0].verdict.score, abs=1e-5)
    judged = call("Judge/Judge", {"query": "q", "documents": [{"inline": {"text": "t"}}], "maxReasoningTokens": 1})
    assert judged["verdicts"][0]["reasoningTokens"] == 1
    assert call("Collections/DeleteDocuments", {"collection": "web", "ids": ["cats"]})["deleted"] == "1"
    assert call("Collections/DeleteCollection", {"name": "web"}) == {}
    missing = http.post("/irgate.v1.Collections/DescribeCollection", json={"name": "web"})
    assert missing.status_code == 404
    kinds = [detail["@type"].rsplit(".", 1)[-1] for detail in missing.json()["error"]["details"]]
    assert "ErrorInfo" in kinds and "ResourceInfo" in kinds


def test_judge_stream_as_server_sent_events(http: httpx.Client) -> None:
    body = {"query": "what causes rain", "documents": [{"inline": {"text": text}} for text in PASSAGES[:2]],
            "returnReasoning": True}
    with http.stream("POST", "/irgate.v1.Judge/JudgeStream", json=body) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line.removeprefix("data: ")) for line in answer.iter_lines() if line.startswith("data: ")]
    verdicts = [event["verdict"] for event in events if "verdict" in event]
    assert sorted(verdict["index"] for verdict in verdicts) == [0, 1]
    assert any("reasoning" in event for event in events)
    refused = http.post("/irgate.v1.Judge/JudgeStream", json={"query": "", "documents": []})
    assert refused.status_code == 400 and refused.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_openapi_lists_every_rpc_and_dialect_route(http: httpx.Client) -> None:
    from irgate_client.v1 import irgate_pb2 as pb

    paths = http.get("/openapi.json").json()["paths"]
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            assert f"/{service.full_name}/{method.name}" in paths
    for route in ("/v1/embeddings", "/v1/models", "/v1/rerank", "/v2/rerank", "/embed", "/rerank", "/info", "/health"):
        assert route in paths
    assert [model["id"] for model in http.get("/v1/models").json()["data"]] == ["all-MiniLM-L6-v2", "smollm2-135m-hf"]


def test_every_grpc_code_has_an_http_status_in_each_dialect() -> None:
    import grpc

    from irgate.api.http.calls import CallFailed
    from irgate.api.http.status import Dialect, error_body, http_status

    for code in grpc.StatusCode:
        failure = CallFailed(code, "m", reason="R")
        for dialect in Dialect:
            status = http_status(failure, dialect)
            assert 200 <= status < 600 and error_body(failure, dialect, status)
    assert http_status(CallFailed(grpc.StatusCode.INVALID_ARGUMENT, "m"), Dialect.TEI) == 422
    assert http_status(CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, "m"), Dialect.TEI) == 429
    assert http_status(CallFailed(grpc.StatusCode.INTERNAL, "m"), Dialect.TEI) == 424
    assert http_status(CallFailed(grpc.StatusCode.UNAVAILABLE, "m"), Dialect.TEI) == 503
    assert http_status(CallFailed(grpc.StatusCode.RESOURCE_EXHAUSTED, "m"), Dialect.OPENAI) == 429


def test_bench_embed_http_runs_both_sides_on_equal_vectors(minilm_folder: Path) -> None:
    from embed import run_http_embed_benchmark, synthetic_texts  # benchmarks/embed.py, as `irgate bench` runs it

    report = run_http_embed_benchmark(minilm_folder, synthetic_texts(8, words=20))
    assert report["max_abs_diff_http_vs_grpc"] < 1e-6
    # The ratios' values are the benchmark's to report; here each side ran at both client counts.
    assert {f"{side}_docs_per_s_{clients}_clients" for side in ("grpc", "openai_http") for clients in (1, 16)} <= set(report)

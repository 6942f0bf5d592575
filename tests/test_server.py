"""The gRPC API end to end: a real `irgate serve` process on a loopback port, driven by the SDK."""

from __future__ import annotations

import asyncio
import math
import subprocess
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from irgate.errors import StartupError
from irgate.local_server import LocalServer
from irgate_client import AsyncClient, Client, Document, IrgateError, Query
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

PAPERS = [
    Document(id="rain", title="Precipitation", text="Rain forms when water vapour condenses into droplets that fall.",
             metadata={"field": "physics", "year": 2001}),
    Document(id="cats", title="Felines", text="Cats are small domesticated carnivorous mammals kept as pets.",
             metadata={"field": "biology", "year": 2010}),
    Document(id="volcano", title="Volcanoes", text="Magma rising through the crust erupts as lava from volcanoes.",
             metadata={"field": "geology", "year": 2001}),
    Document(id="insulin", title="Insulin", text="Insulin regulates blood glucose by promoting uptake into cells.",
             metadata={"field": "biology", "year": 2015}),
]


@pytest.fixture
def papers(client: Client) -> str:
    """A fresh collection holding PAPERS."""
    name = f"papers-{uuid.uuid4().hex[:12]}"
    client.create_collection(name)
    client.upsert(name, PAPERS)
    yield name
    client.delete_collection(name)


def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(IrgateError) as raised:
        call()
    return raised.value.code, raised.value.message


def test_health_reports_serving_per_service(server: LocalServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "irgate.v1.Embed", "irgate.v1.Collections", "irgate.v1.Search"):
            assert stub.Check(health_pb2.HealthCheckRequest(service=service)).status == health_pb2.HealthCheckResponse.SERVING
        judge = stub.Check(health_pb2.HealthCheckRequest(service="irgate.v1.Judge")).status
        assert judge == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_every_service(server: LocalServer) -> None:
    with grpc.insecure_channel(server.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {service.name for response in responses for service in response.list_services_response.service}
    assert {"irgate.v1.Embed", "irgate.v1.Collections", "irgate.v1.Search", "irgate.v1.Judge",
            "irgate.v1.Info", "grpc.health.v1.Health"} <= names


def test_info_describes_the_default_embedder(client: Client) -> None:
    info = client.info()
    assert (info.model, info.dimension, info.max_tokens, info.pooling) == ("all-MiniLM-L6-v2", 384, 256, "mean")
    assert info.backend.startswith("onnx:")
    assert (info.max_batch_size, info.max_k) == (8, 100)


def test_embed_returns_unit_vectors_with_token_counts(client: Client) -> None:
    embeddings = client.embed(["Rain forms when vapour condenses.", Query("what causes rain")])
    assert [len(item.values) for item in embeddings] == [384, 384]
    assert all(math.isclose(math.fsum(v * v for v in item.values), 1.0, rel_tol=1e-5) for item in embeddings)
    assert all(item.tokens > 2 and not item.truncated for item in embeddings)


def test_raw_embeddings_are_not_normalised(client: Client) -> None:
    raw = client.embed(["Rain forms when vapour condenses."], raw=True)[0].values
    unit = client.embed(["Rain forms when vapour condenses."])[0].values
    norm = math.sqrt(math.fsum(v * v for v in raw))
    assert abs(norm - 1.0) > 1e-3
    assert max(abs(r / norm - u) for r, u in zip(raw, unit, strict=True)) < 1e-5


def test_plain_models_take_the_instruction_after_the_query(client: Client) -> None:
    with_instruction = client.embed([Query("what causes rain", instruction="prefer physics papers")])[0].values
    joined = client.embed([Query("what causes rain prefer physics papers")])[0].values
    plain = client.embed([Query("what causes rain")])[0].values
    assert max(abs(a - b) for a, b in zip(with_instruction, joined, strict=True)) < 1e-6
    assert max(abs(a - b) for a, b in zip(with_instruction, plain, strict=True)) > 1e-3


def test_long_text_is_truncated_by_default_and_rejected_on_request(client: Client) -> None:
    long_text = "condensation " * 600
    embedding = client.embed([long_text])[0]
    assert embedding.truncated and embedding.tokens == 256
    code, message = status_of(lambda: client.embed([long_text], truncate=False))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "text 0 has" in message and "at most 256" in message


def test_concurrent_requests_are_batched_without_mixing_results(server: LocalServer, client: Client) -> None:
    texts = [f"document number {i} about {'rain ' * (i % 7)}" for i in range(24)]
    alone = [client.embed([text])[0].values for text in texts]

    async def together() -> list[list[float]]:
        async with AsyncClient(server.address) as concurrent:
            results = await asyncio.gather(*(concurrent.embed([text]) for text in texts))
        return [result[0].values for result in results]

    for expected, got in zip(alone, asyncio.run(together()), strict=True):
        assert max(abs(a - b) for a, b in zip(expected, got, strict=True)) < 1e-5


@pytest.mark.parametrize(
    ("inputs", "expected"),
    [
        ([], "inputs has 0 entries; send 1 to 8"),
        ([pb.EmbedInput(text="x")] * 9, "inputs has 9 entries; send 1 to 8"),
        ([pb.EmbedInput(text="   ")], "inputs[0].text is empty"),
        ([pb.EmbedInput(text="doc", instruction="be strict")], "inputs[0] has an instruction but is not a query"),
        ([pb.EmbedInput(kind=pb.TEXT_KIND_QUERY, text="q", title="t")], "inputs[0] has a title but is a query"),
        ([pb.EmbedInput(kind=7, text="q")], "inputs[0].kind is 7"),
    ],
)
def test_embed_rejects_bad_input(server: LocalServer, inputs: list[pb.EmbedInput], expected: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.EmbedStub(channel).Embed(pb.EmbedRequest(inputs=inputs))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert expected in raised.value.details()


def test_collection_lifecycle(client: Client) -> None:
    created = client.create_collection("lifecycle")
    assert (created.name, created.documents, created.dimension, created.precision) == ("lifecycle", 0, 384, "f16")
    assert "lifecycle" in [info.name for info in client.list_collections()]
    assert status_of(lambda: client.create_collection("lifecycle"))[0] == grpc.StatusCode.ALREADY_EXISTS
    client.delete_collection("lifecycle")
    assert status_of(lambda: client.describe_collection("lifecycle"))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(lambda: client.delete_collection("lifecycle"))[0] == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["../x", "", "a b", "x" * 65, "-leading", "dots.are.not.allowed"])
def test_collection_names_must_be_plain_identifiers(client: Client, name: str) -> None:
    code, message = status_of(lambda: client.create_collection(name))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "letters, digits" in message


def test_search_finds_the_relevant_document(client: Client, papers: str) -> None:
    hits = client.search(papers, "what causes rain", k=4, include_documents=True)
    assert [hit.id for hit in hits][0] == "rain"
    assert len(hits) == 4 and hits[0].score > hits[1].score >= hits[-1].score
    assert hits[0].dense_score == hits[0].score
    assert hits[0].document is not None and hits[0].document.title == "Precipitation"
    assert hits[0].document.metadata == {"field": "physics", "year": 2001}


def test_search_without_documents_returns_ids_and_scores_only(client: Client, papers: str) -> None:
    hit = client.search(papers, "lava and magma", k=1)[0]
    assert hit.id == "volcano" and hit.document is None


def test_metadata_filter_keeps_matching_documents_only(client: Client, papers: str) -> None:
    hits = client.search(papers, "what causes rain", k=4, filter={"field": "biology"})
    assert {hit.id for hit in hits} == {"cats", "insulin"}
    hits = client.search(papers, "what causes rain", k=4, filter={"year": 2001, "field": "geology"})
    assert [hit.id for hit in hits] == ["volcano"]


def test_search_checks_its_arguments(server: LocalServer, client: Client, papers: str) -> None:
    assert status_of(lambda: client.search(papers, "rain", k=101)) == (
        grpc.StatusCode.INVALID_ARGUMENT, "k is 101; it must be between 1 and 100")
    assert status_of(lambda: client.search(papers, "  "))[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = status_of(lambda: client.search("no-such-collection", "rain"))
    assert code == grpc.StatusCode.NOT_FOUND and "no-such-collection" in message
    with grpc.insecure_channel(server.address) as channel:  # in the proto, k 0 means the default, 10
        assert len(pb_grpc.SearchStub(channel).Search(pb.SearchRequest(collection=papers, query="rain")).hits) == 4
    assert status_of(lambda: client.search(papers, "rain", k=0))[0] == grpc.StatusCode.INVALID_ARGUMENT  # the SDK says


def test_rerank_without_a_judge_is_a_failed_precondition(server: LocalServer, papers: str) -> None:
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.SearchStub(channel).Search(
                pb.SearchRequest(collection=papers, query="rain", rerank=pb.RerankOptions(top_n=3)))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_judge_needs_a_judge_backend(server: LocalServer) -> None:
    request = pb.JudgeRequest(query="rain", documents=[pb.JudgeDocument(inline=pb.InlineDocument(text="Rain falls."))])
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.JudgeStub(channel)
        for call in (lambda: stub.Judge(request), lambda: list(stub.JudgeStream(request))):
            with pytest.raises(grpc.RpcError) as raised:
                call()
            assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--judge" in raised.value.details()


def test_get_and_delete_documents(client: Client, papers: str) -> None:
    documents, missing = client.get(papers, ["insulin", "rain"], include_vectors=True)
    assert [document.id for document in documents] == ["insulin", "rain"] and missing == []
    assert len(documents[0].vector) == 384
    documents, missing = client.get(papers, ["rain", "missing", "insulin"])  # like Delete: reported, not an error
    assert [document.id for document in documents] == ["rain", "insulin"] and missing == ["missing"]
    assert client.delete(papers, ["rain", "missing"]) == (1, 1)
    assert "rain" not in [hit.id for hit in client.search(papers, "what causes rain", k=4)]
    assert client.describe_collection(papers).documents == 3


def test_upsert_replaces_existing_ids(client: Client, papers: str) -> None:
    result = client.upsert(papers, [Document(id="rain", text="Snow is frozen precipitation made of ice crystals.")])
    assert (result.upserted, result.replaced, result.documents) == (1, 1, 4)
    assert client.get(papers, ["rain"])[0][0].text.startswith("Snow")


def test_upsert_accepts_client_vectors(client: Client, papers: str) -> None:
    vector = client.embed(["Tectonic plates collide and form mountains."])[0].values
    result = client.upsert(papers, [Document(id="plates", text="(stored text)", vector=[2 * v for v in vector])])
    assert result.total_tokens == 0  # nothing was embedded
    assert client.search(papers, "Tectonic plates collide and form mountains.", k=1)[0].id == "plates"


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (Document(id="", text="x"), "documents[0].id is empty"),
        (Document(id="short", vector=[0.1] * 12), "documents[0].vector (document 'short') has 12 values"),
        (Document(id="x" * 257, text="x"), "256"),
    ],
)
def test_upsert_rejects_bad_documents(client: Client, papers: str, document: Document, expected: str) -> None:
    code, message = status_of(lambda: client.upsert(papers, [document]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and expected in message
    assert client.describe_collection(papers).documents == len(PAPERS)


def test_upsert_stream_reports_what_was_committed_before_an_error(server: LocalServer, client: Client, papers: str) -> None:
    messages = [
        pb.UpsertDocumentsRequest(collection=papers, documents=[pb.Document(id="new", text="Comets are icy bodies.")]),
        pb.UpsertDocumentsRequest(collection="other", documents=[pb.Document(id="x", text="y")]),
    ]
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.CollectionsStub(channel).UpsertDocuments(iter(messages))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "one stream per collection" in raised.value.details() and "1 documents" in raised.value.details()
    assert client.get(papers, ["new"])[0][0].text == "Comets are icy bodies."


def test_metrics_count_requests(client: Client, metrics_port: int) -> None:
    client.info()
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    assert 'irgate_requests_total{code="OK",method="GetInfo"}' in body


def test_api_key_is_required_when_configured(minilm_folder: Path, tmp_path: Path) -> None:
    with LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"], env={"IRGATE_API_KEY": "s3cret"}) as secured:
        with Client(secured.address) as anonymous:
            code, message = status_of(anonymous.info)
            assert code == grpc.StatusCode.UNAUTHENTICATED and "Bearer" in message
        with Client(secured.address, api_key="wrong") as wrong:
            assert status_of(wrong.info)[0] == grpc.StatusCode.UNAUTHENTICATED
        with Client(secured.address, api_key="s3cret") as authorised:
            assert authorised.info().dimension == 384
            assert status_of(lambda: authorised.upsert("missing", [Document(id="a", text="b")]))[0] == grpc.StatusCode.NOT_FOUND
        with grpc.insecure_channel(secured.address) as channel:  # orchestrators probe health without a key
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("stop", ["graceful", "crash"])
def test_documents_survive_a_restart(minilm_folder: Path, tmp_path: Path, stop: str) -> None:
    """Index, stop the process (SIGTERM, or SIGKILL as a crash), start a new one on the same directory."""
    documents = [Document(id=f"doc-{i}", text=f"Observation {i}: sample {i} showed property {i * 7 % 13}.")
                 for i in range(300)]
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"]
    first = LocalServer(tmp_path, args).start()
    try:
        with Client(first.address) as client:
            client.create_collection("notes")
            assert client.upsert("notes", documents, batch_size=64).documents == 300
    finally:
        first.kill() if stop == "crash" else first.stop()
    with LocalServer(tmp_path, args) as second, Client(second.address) as client:
        assert client.describe_collection("notes").documents == 300
        assert len(client.get("notes", [document.id for document in documents[:200]])[0]) == 200
        for document in documents[::37]:
            assert client.search("notes", document.text, k=1)[0].id == document.id


def test_tls_end_to_end(minilm_folder: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--tls-cert", str(cert), "--tls-key", str(key)]
    with LocalServer(tmp_path / "data", args) as secured:
        with Client(secured.address, root_certificates=cert.read_bytes()) as client:
            assert client.info().dimension == 384
        with Client(secured.address, timeout=5) as plaintext:
            assert status_of(plaintext.info)[0] == grpc.StatusCode.UNAVAILABLE


def test_bytes_that_are_not_a_valid_message_are_invalid_argument(server: LocalServer) -> None:
    # SearchRequest{collection: "x", query: <bytes ff fe, not UTF-8>}, encoded by hand.
    payload = b"\x0a\x01x" + b"\x12\x02\xff\xfe"
    with grpc.insecure_channel(server.address) as channel:
        search = channel.unary_unary("/irgate.v1.Search/Search")
        with pytest.raises(grpc.RpcError) as raised:
            search(payload, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "UTF-8" in raised.value.details()
        upsert = channel.stream_unary("/irgate.v1.Collections/UpsertDocuments")
        with pytest.raises(grpc.RpcError) as raised:
            upsert(iter([b"\x0a\x02\xff\xfe"]), timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        stream = channel.unary_stream("/irgate.v1.Judge/JudgeStream")
        with pytest.raises(grpc.RpcError) as raised:
            list(stream(b"\x0a\x02\xff\xfe", timeout=10))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_sdk_reports_a_document_it_cannot_encode(client: Client, papers: str) -> None:
    documents = [Document(id="fine", text="Comets are icy."), Document(id="bad", text="x", metadata={"when": object()})]
    with pytest.raises(IrgateError, match="document 2 could not be encoded.*the 1 documents sent before it were committed"):
        client.upsert(papers, documents, batch_size=1)
    assert client.get(papers, ["fine"])[0][0].text == "Comets are icy."
    with pytest.raises(IrgateError, match="precision 'f8'"):
        client.create_collection("never", precision="f8")


def test_titles_are_embedded_with_the_text(client: Client) -> None:
    titled = client.embed([Document(id="", title="Precipitation", text="Rain forms when vapour condenses.")])[0]
    joined = client.embed(["Precipitation Rain forms when vapour condenses."])[0]
    assert max(abs(a - b) for a, b in zip(titled.values, joined.values, strict=True)) < 1e-6


def test_info_reports_limits(client: Client) -> None:
    info = client.info()
    assert (info.max_concurrent_requests, info.max_judge_documents) == (512, 100)
    assert info.judge_model == "" and info.max_reasoning_tokens == 0  # this server runs without a judge


def test_a_second_server_on_the_same_data_dir_is_refused(minilm_folder: Path, tmp_path: Path) -> None:
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"]
    with LocalServer(tmp_path, args):
        second = LocalServer(tmp_path, args, start_timeout=60)
        with pytest.raises(StartupError) as raised:
            second.start()
        assert "in use by another irgate process" in str(raised.value)


def test_a_taken_port_is_refused_not_shared(server: LocalServer, minilm_folder: Path, tmp_path: Path) -> None:
    port = server.address.rsplit(":", 1)[1]
    second = LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--port", port],
                         start_timeout=60)
    with pytest.raises(StartupError) as raised:
        second.start()
    assert f"cannot listen on 127.0.0.1:{port}" in str(raised.value)

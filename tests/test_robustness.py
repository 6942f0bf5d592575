"""Robustness against hostile and broken input: malformed requests, control characters, huge and
non-finite values, races, damaged files, idle and unread streams, oversized answers and bad settings,
each against a real `irgate serve` process or, where the behaviour lives in one layer, that layer with
real parts."""

from __future__ import annotations

import asyncio
import logging
import math
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, IrgateError
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc
from support import wait_for

DIMENSION = 384


def rpc_error(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


@pytest.fixture
def channel(server: LocalServer):
    with grpc.insecure_channel(server.address) as opened:
        yield opened


@pytest.fixture
def collection(channel: grpc.Channel) -> str:
    name = f"hard-{uuid.uuid4().hex[:12]}"
    stub = pb_grpc.CollectionsStub(channel)
    stub.CreateCollection(pb.CreateCollectionRequest(name=name))
    yield name
    stub.DeleteCollection(pb.DeleteCollectionRequest(name=name))


def upsert(channel: grpc.Channel, collection: str, *documents: pb.Document) -> pb.UpsertDocumentsResponse:
    request = pb.UpsertDocumentsRequest(collection=collection, documents=list(documents))
    return pb_grpc.CollectionsStub(channel).UpsertDocuments(iter([request]), timeout=60)


def unit_vector(seed: int) -> list[float]:
    vector = np.random.default_rng(seed).standard_normal(DIMENSION)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


def metadata(**values: object) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


# --- 1. grpc.health.v1.Health/Watch ------------------------------------------------------------


def test_health_watch_streams_the_serving_status(channel: grpc.Channel) -> None:
    """Watch is a coroutine that writes with context.write(); the malformed-request interceptor
    used to wrap it as an async generator, which answered UNKNOWN on every server."""
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service="irgate.v1.Search"), timeout=10)
    first = next(watch)
    watch.cancel()
    assert first.status == health_pb2.HealthCheckResponse.SERVING


# --- 2. control characters in ids, names and keys ---------------------------------------------


@pytest.mark.parametrize("bad_id", ["a\x00b", "tab\there", "\x7f", "next\x85line", "\x1b[31m"])
def test_ids_with_control_characters_are_refused_everywhere(channel: grpc.Channel, collection: str, bad_id: str) -> None:
    stub = pb_grpc.CollectionsStub(channel)
    calls = {
        "upsert": lambda: upsert(channel, collection, pb.Document(id=bad_id, text="x")),
        "get": lambda: stub.GetDocuments(pb.GetDocumentsRequest(collection=collection, ids=["fine", bad_id])),
        "delete": lambda: stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection=collection, ids=[bad_id])),
    }
    for call in calls.values():
        error = rpc_error(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "control character" in error.details() and "U+00" in error.details()
        assert bad_id not in error.details()  # shown escaped, never raw
    assert stub.DescribeCollection(pb.DescribeCollectionRequest(name=collection)).documents == 0


def test_collection_names_and_metadata_keys_follow_the_same_rule(channel: grpc.Channel, collection: str) -> None:
    stub = pb_grpc.CollectionsStub(channel)
    error = rpc_error(lambda: stub.CreateCollection(pb.CreateCollectionRequest(name="bad\x00name")))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "\\u0000" in error.details()
    document = pb.Document(id="doc", text="x", metadata=metadata(**{"key\x00": 1}))
    error = rpc_error(lambda: upsert(channel, collection, document))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[0].metadata" in error.details() and "control character" in error.details()
    search = pb.SearchRequest(collection=collection, query="x", filter=metadata(**{"year\x01": 2001}))
    error = rpc_error(lambda: pb_grpc.SearchStub(channel).Search(search))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "filter" in error.details()


def test_stored_text_title_and_metadata_round_trip_exactly(channel: grpc.Channel, collection: str) -> None:
    odd = "nul\x00 tab\t bell\x07 del\x7f c1\x85 emoji \U0001f600 rtl \u202e combining e\u0301 '\"; --"
    document = pb.Document(
        id="ünïcode ✓ id with spaces",
        text=odd,
        title=odd[::-1],
        # The numbers at the edges a Struct's doubles keep exact (beyond +-(2^53 - 1) is refused).
        metadata=metadata(text=odd, nested={"list": [1, -0.0, -(2**53 - 1), 2.5e-300, None, True, "x\x00y"]},
                          big=2**53 - 1),
        vector=unit_vector(1),
    )
    upsert(channel, collection, document)
    stored = pb_grpc.CollectionsStub(channel).GetDocuments(
        pb.GetDocumentsRequest(collection=collection, ids=[document.id], include_vectors=True)
    ).documents[0]
    assert stored == document
    nested = stored.metadata["nested"]["list"]
    assert math.copysign(1.0, nested[1]) == -1.0  # -0.0 stays negative zero
    hits = pb_grpc.SearchStub(channel).Search(
        pb.SearchRequest(collection=collection, query="emoji", include_documents=True)
    ).hits
    without_vector = pb.Document()
    without_vector.CopyFrom(stored)
    without_vector.ClearField("vector")  # search returns documents without their vectors
    assert [hit.document for hit in hits] == [without_vector]


# --- 3. NaN and infinity in metadata and filters -----------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_invalid_arguments_naming_the_field(channel: grpc.Channel, collection: str, value: float) -> None:
    document = pb.Document(id="doc", text="x", metadata=metadata(scores={"recall": [0.5, value]}))
    error = rpc_error(lambda: upsert(channel, collection, document))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "documents[0].metadata.scores.recall[1]" in error.details() and "finite" in error.details()

    search = pb.SearchRequest(collection=collection, query="x", filter=metadata(year=value))
    error = rpc_error(lambda: pb_grpc.SearchStub(channel).Search(search))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "filter.year" in error.details() and "finite" in error.details()

    vector = unit_vector(2)
    vector[7] = value
    error = rpc_error(lambda: upsert(channel, collection, pb.Document(id="doc", vector=vector)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "documents[0].vector" in error.details()


# --- 4. create/delete races, and INTERNAL messages ---------------------------------------------


def test_create_and_delete_of_one_name_racing_with_upserts_never_fail_internally(server: LocalServer) -> None:
    """Delete used to close the collection (waiting for writes in flight) while a create of the
    same name renamed its new folder onto the old one: INTERNAL, ENOTEMPTY, the server's path."""
    name = f"race-{uuid.uuid4().hex[:8]}"
    codes: list[grpc.StatusCode] = []
    details: list[str] = []

    async def call(coroutine) -> None:
        try:
            await coroutine
            codes.append(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
            details.append(error.details() or "")

    async def writer(stub: pb_grpc.CollectionsStub, seed: int) -> None:
        # One message per stream: when the server ends a stream early (NOT_FOUND), grpc's client reports
        # its own unsent messages as INTERNAL ("Internal error from Core"), which is not the server's answer.
        for round_ in range(120):
            documents = [pb.Document(id=f"w{seed}-{i}", vector=unit_vector(seed * 1000 + i)) for i in range(8)]
            await call(stub.UpsertDocuments(iter([pb.UpsertDocumentsRequest(collection=name, documents=documents)])))

    async def churn(stub: pb_grpc.CollectionsStub) -> None:
        for _ in range(40):
            await call(stub.CreateCollection(pb.CreateCollectionRequest(name=name)))
            await call(stub.DeleteCollection(pb.DeleteCollectionRequest(name=name)))

    async def run() -> None:
        async with grpc.aio.insecure_channel(server.address) as aio_channel:
            stub = pb_grpc.CollectionsStub(aio_channel)
            await asyncio.gather(churn(stub), churn(stub), *(writer(stub, seed) for seed in range(4)))

    asyncio.run(run())
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS}, [
        d for d in details if "does not exist" not in d and "already exists" not in d]
    assert codes.count(grpc.StatusCode.OK) > 40


def test_an_internal_error_tells_the_client_a_request_id_and_logs_the_details(caplog: pytest.LogCaptureFixture) -> None:
    from irgate.api.rpc import Admission, unary

    class Context:  # the parts of grpc.aio.ServicerContext a handler's wrapper uses
        status = details = None

        def invocation_metadata(self) -> tuple:
            return ()

        def set_trailing_metadata(self, metadata: tuple) -> None:
            pass

        def peer(self) -> str:
            return "ipv4:127.0.0.1:1"

        def code(self) -> grpc.StatusCode | None:
            return self.status

        async def abort(self, code: grpc.StatusCode, details: str, trailing_metadata: tuple = ()) -> None:
            self.status, self.details, self.trailers = code, details, trailing_metadata
            raise grpc.aio.AbortError()

    class Servicer:
        admission = Admission(4, max_message_bytes=1 << 20, stream_send_timeout_s=30)

        @unary("Explode")
        async def Explode(self, request: object, context: Context) -> None:
            raise OSError(39, "Directory not empty", "/srv/secret/data/collections/x")

    context = Context()
    with caplog.at_level(logging.ERROR, logger="irgate.api"), pytest.raises(grpc.aio.AbortError):
        asyncio.run(Servicer().Explode(None, context))
    assert context.status == grpc.StatusCode.INTERNAL
    assert "/srv" not in context.details and "OSError" not in context.details
    request_id = context.details.split("request id ")[1].split(";")[0]
    assert len(request_id) == 16
    assert any(request_id in record.getMessage() and record.exc_info for record in caplog.records)
    assert ("x-request-id", request_id) in context.trailers
    status = status_pb2.Status.FromString(dict(context.trailers)["grpc-status-details-bin"])
    info = error_details_pb2.ErrorInfo()
    assert len(status.details) == 1 and status.details[0].Unpack(info)
    assert (info.reason, info.domain, info.metadata["request_id"]) == ("INTERNAL", "irgate.dev", request_id)


# --- 5. idle client streams --------------------------------------------------------------------


def test_idle_client_streams_neither_starve_other_calls_nor_live_forever(minilm_folder: Path, tmp_path: Path) -> None:
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none",
            "--max-concurrent-requests", "2", "--stream-idle-s", "3"]
    with LocalServer(tmp_path, args) as running, grpc.insecure_channel(running.address) as channel:
        pb_grpc.CollectionsStub(channel).CreateCollection(pb.CreateCollectionRequest(name="idle"))
        release = [asyncio.Event() for _ in range(4)]

        async def idle_stream(index: int, stub: pb_grpc.CollectionsStub) -> grpc.StatusCode | str:
            async def messages():
                document = pb.Document(id=f"s{index}", vector=unit_vector(index))
                yield pb.UpsertDocumentsRequest(collection="idle", documents=[document])
                await release[index].wait()  # open, sent one message, then silent

            try:
                await stub.UpsertDocuments(messages(), timeout=60)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"

        async def run() -> tuple[list[object], list[int], float]:
            async with grpc.aio.insecure_channel(running.address) as aio_channel:
                stub = pb_grpc.CollectionsStub(aio_channel)
                streams = []
                for index in range(4):  # four streams open and idle, twice the admission limit
                    streams.append(asyncio.create_task(idle_stream(index, stub)))
                    await asyncio.sleep(0.3)
                info = pb_grpc.InfoStub(aio_channel)
                answered = [(await info.GetInfo(pb.GetInfoRequest(), timeout=10)).limits.max_k for _ in range(5)]
                started = time.monotonic()
                outcomes = await asyncio.gather(*streams)
                return outcomes, answered, time.monotonic() - started

        outcomes, answered, waited = asyncio.run(run())
        assert answered == [1000] * 5
        for outcome in outcomes:
            assert isinstance(outcome, str) and outcome.startswith("DEADLINE_EXCEEDED")
            assert "--stream-idle-s" in outcome and "1 documents of earlier messages were committed" in outcome
        assert waited < 30
        stored = pb_grpc.CollectionsStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name="idle"))
        assert stored.documents == 4


# --- 6. snapshot checksums ---------------------------------------------------------------------


def test_a_snapshot_with_damaged_vectors_is_rebuilt_from_the_database(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from irgate.domain.documents import Document
    from irgate.index.collection import Collection

    vectors = np.random.default_rng(0).standard_normal((300, 32)).astype(np.float32)
    collection = Collection.create(tmp_path / "books", dimension=32, model="m")
    collection.upsert([Document(id=f"d{i}") for i in range(300)], vectors)
    collection.close()
    snapshot = tmp_path / "books" / "index.usearch"
    damaged = bytearray(snapshot.read_bytes())
    middle = len(damaged) // 2  # the vectors: header, count and size stay intact
    damaged[middle : middle + 4000] = np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    snapshot.write_bytes(bytes(damaged))

    with caplog.at_level(logging.WARNING, logger="irgate.index"):
        reopened = Collection(tmp_path / "books")
    try:
        assert "fails its checksum" in reopened.index_source
        assert any("books" in record.getMessage() and "checksum" in record.getMessage() for record in caplog.records)
        assert all(reopened.search(vectors[i], k=1)[0].id == f"d{i}" for i in range(300))
        assert reopened.verify() == [f"the index snapshot was not usable ({reopened.index_source}); a restart rebuilds it"]
    finally:
        reopened.close()
    again = Collection(tmp_path / "books")  # closing saved a good snapshot
    assert again.index_source == "snapshot" and again.verify() == []
    again.close()


# --- 7. a damaged SQLite file ------------------------------------------------------------------


def irgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, timeout=120)


def test_a_damaged_database_takes_down_its_collection_only(minilm_folder: Path, tmp_path: Path) -> None:
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"]
    with LocalServer(tmp_path, args) as first, grpc.insecure_channel(first.address) as channel:
        for name in ("good", "bad"):
            pb_grpc.CollectionsStub(channel).CreateCollection(pb.CreateCollectionRequest(name=name))
            upsert(channel, name, *(pb.Document(id=f"d{i}", text=f"note {i} on {name}") for i in range(50)))
    assert irgate("collection", "check", "good", "--data-dir", str(tmp_path)).returncode == 0
    database = tmp_path / "collections" / "bad" / "documents.sqlite"
    damaged = bytearray(database.read_bytes())
    damaged[0:4096] = b"\xa5" * 4096  # the header and the schema page
    database.write_bytes(bytes(damaged))

    checked = irgate("collection", "check", "bad", "--data-dir", str(tmp_path))
    assert checked.returncode == 1 and "documents.sqlite is damaged" in checked.stdout

    with LocalServer(tmp_path, args) as second, grpc.insecure_channel(second.address) as channel:
        stub = pb_grpc.CollectionsStub(channel)
        assert stub.DescribeCollection(pb.DescribeCollectionRequest(name="good")).documents == 50
        hits = pb_grpc.SearchStub(channel).Search(pb.SearchRequest(collection="good", query="note 7 on good", k=1)).hits
        assert hits[0].id == "d7"
        for call in (lambda: stub.DescribeCollection(pb.DescribeCollectionRequest(name="bad")),
                     lambda: pb_grpc.SearchStub(channel).Search(pb.SearchRequest(collection="bad", query="x"))):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.DATA_LOSS
            assert "'bad'" in error.details() and "collections/bad/documents.sqlite" in error.details()
            assert str(tmp_path) not in error.details()
        listed = {info.name: info for info in stub.ListCollections(pb.ListCollectionsRequest()).collections}
        assert list(listed) == ["bad", "good"]  # sorted by name, the damaged one too
        assert (listed["good"].state, listed["good"].documents) == (pb.COLLECTION_STATE_READY, 50)
        assert listed["bad"].state == pb.COLLECTION_STATE_DAMAGED
        assert "collections/bad/documents.sqlite" in listed["bad"].damage and str(tmp_path) not in listed["bad"].damage
        with Client(second.address) as client:
            assert [(info.name, info.state, info.precision) for info in client.list_collections()] == [
                ("bad", "DAMAGED", ""), ("good", "READY", "f16")
            ]
        listed = irgate("collection", "list", "--server", second.address)
        assert listed.returncode == 0, listed.stderr
        cells = [re.findall(r"\w+", line)[:2] for line in listed.stdout.splitlines()]  # whatever the borders
        assert [row for row in cells if row[:1] in (["bad"], ["good"])] == [["bad", "damaged"], ["good", "50"]]
        assert "collection 'bad' is unavailable" in listed.stderr
        stub.DeleteCollection(pb.DeleteCollectionRequest(name="bad"))  # how a damaged collection is dropped
        stub.CreateCollection(pb.CreateCollectionRequest(name="bad"))
        assert stub.DescribeCollection(pb.DescribeCollectionRequest(name="bad")).documents == 0
    assert any("collection 'bad' is unavailable" in line for line in second.output)


def test_collection_check_reports_an_index_that_disagrees_with_the_store(tmp_path: Path) -> None:
    from irgate.domain.documents import Document
    from irgate.index.collection import Collection

    vectors = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    (tmp_path / "collections").mkdir()
    collection = Collection.create(tmp_path / "collections" / "notes", dimension=8, model="m")
    collection.upsert([Document(id=f"d{i}") for i in range(20)], vectors)
    collection._index.remove([1, 2])  # an index that lost two documents the store holds
    problems = collection.verify()
    collection.close(snapshot=False)
    assert problems == ["2 stored documents are missing from the index"]
    assert irgate("collection", "check", "notes", "--data-dir", str(tmp_path)).stdout.strip().endswith("agree")


# --- 8. settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "115703"], "--port"),
        (["--metrics-port", "-1"], "--metrics-port"),
        (["--snapshot-every", "0"], "--snapshot-every"),
        (["--max-k", "0"], "--max-k"),
        (["--max-concurrent-requests", "0"], "--max-concurrent-requests"),
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens"),
        (["--max-message-mb", "0"], "--max-message-mb"),
        (["--max-message-mb", "4096"], "--max-message-mb"),
        (["--stream-idle-s", "0"], "--stream-idle-s"),
        (["--threads", "-2"], "--threads"),
        (["--api-key-file", "/nonexistent/key"], "--api-key-file"),
        (["--api-key", "a", "--api-key-file", "/etc/hostname"], "--api-key-file"),
        (["--tls-cert", "cert.pem"], "--tls-key"),
    ],
)
def test_nonsense_settings_are_refused_naming_the_flag(flags: list[str], named: str) -> None:
    import argparse

    from irgate.config import add_arguments, settings_from
    from irgate.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ConfigError) as raised:
        settings_from(parser.parse_args(flags), environ={}).validated()
    assert named in str(raised.value) and "\n" not in str(raised.value)


def test_serve_refuses_a_bad_setting_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    refused = irgate("serve", "--data-dir", str(tmp_path), "--port", "115703")
    assert refused.returncode == 2
    assert "--port" in refused.stderr and "65535" in refused.stderr and "Traceback" not in refused.stderr
    from_environment = subprocess.run([sys.executable, "-m", "irgate", "serve", "--data-dir", str(tmp_path)],
                                      capture_output=True, text=True, timeout=120,
                                      env={**__import__("os").environ, "IRGATE_MAX_K": "lots"})
    assert from_environment.returncode == 2 and "IRGATE_MAX_K" in from_environment.stderr


# --- 9. oversized text -------------------------------------------------------------------------


def test_oversized_text_is_cut_by_characters_before_it_is_tokenised(minilm_folder: Path) -> None:
    from irgate.core.tokenization import TextEncoder
    from irgate.models.manifest import EmbedderManifest

    encoder = TextEncoder(EmbedderManifest.load(minilm_folder), minilm_folder)
    seen: list[int] = []
    tokenizer = encoder._tokenizer

    class Recording:
        def __getattr__(self, name: str):
            return getattr(tokenizer, name)

        def encode_batch_fast(self, texts: list[str], **kwargs):
            seen.extend(len(text) for text in texts)
            return tokenizer.encode_batch_fast(texts, **kwargs)

    encoder._tokenizer = Recording()
    huge = "Condensation forms droplets. " * 200_000  # 5.8 MB
    [cut, short] = encoder.encode([huge, "Condensation forms droplets."])
    assert max(seen) <= encoder.max_characters < 100_000
    assert cut.truncated and len(cut.ids) == 256 and not short.truncated
    assert cut.ids == encoder.encode([huge[:20_000]])[0].ids  # the model reads the same first tokens


def test_a_huge_embed_request_is_truncated_or_refused(channel: grpc.Channel) -> None:
    huge = "Magma rises through the crust. " * 160_000  # 5 MB
    embed = pb_grpc.EmbedStub(channel).Embed
    embedding = embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=huge)]), timeout=60).embeddings[0]
    assert embedding.truncated and embedding.tokens == 256
    error = rpc_error(lambda: embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=huge)], truncation=pb.TRUNCATION_NONE)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 256" in error.details()


# --- 10. API key file, duplicate headers, /metrics, CLI --ca-cert ------------------------------


def test_a_keyed_tls_server_guards_every_door(minilm_folder: Path, tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    secret = f"k-{uuid.uuid4().hex}"
    (tmp_path / "api-key").write_text(secret + "\n")
    metrics_port = free_port()
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--api-key-file", str(tmp_path / "api-key"),
            "--tls-cert", str(cert), "--tls-key", str(key), "--metrics-port", str(metrics_port)]
    with LocalServer(tmp_path / "data", args) as running:
        assert secret not in Path(f"/proc/{running.pid}/cmdline").read_text()
        credentials = grpc.ssl_channel_credentials(cert.read_bytes())
        with grpc.secure_channel(running.address, credentials) as channel:
            info = pb_grpc.InfoStub(channel).GetInfo
            assert info(pb.GetInfoRequest(), metadata=[("authorization", f"Bearer {secret}")]).limits.max_k == 1000
            for headers in ([("authorization", f"Bearer {secret}")] * 2,
                            [("authorization", "Bearer wrong"), ("authorization", f"Bearer {secret}")]):
                error = rpc_error(lambda: info(pb.GetInfoRequest(), metadata=headers))
                assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "exactly one" in error.details()
            for headers, reason in (([], "API_KEY_MISSING"), ([("authorization", "Bearer wrong")], "API_KEY_INVALID"),
                                    ([("authorization", f"Bearer {secret}")] * 2, "API_KEY_REPEATED")):
                error = rpc_error(lambda: info(pb.GetInfoRequest(), metadata=headers))
                info_detail = error_details_pb2.ErrorInfo()
                assert rpc_status.from_call(error).details[0].Unpack(info_detail) and info_detail.reason == reason
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(), timeout=10)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING  # probes need no key
            watch.cancel()

        import ssl

        context = ssl.create_default_context(cafile=str(cert))
        url = f"https://127.0.0.1:{metrics_port}/metrics"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, context=context, timeout=10)
        assert refused.value.code == 401
        scrape = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"})
        assert b"irgate_requests_total" in urllib.request.urlopen(scrape, context=context, timeout=10).read()

        listed = irgate("collection", "list", "--server", running.address, "--ca-cert", str(cert), "--api-key", secret)
        assert listed.returncode == 0, listed.stderr
        untrusted = irgate("collection", "list", "--server", running.address, "--tls", "--api-key", secret,
                           "--timeout", "5")
        assert untrusted.returncode != 0


# --- 11. answers over the message limit, forged access lines (issue 20) -------------------------


def test_an_answer_over_the_message_limit_is_refused_saying_how_big_and_what_to_ask_for(
    minilm_folder: Path, tmp_path: Path
) -> None:
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-message-mb", "1", "--max-batch-size", "1000"]
    with LocalServer(tmp_path, args) as running, grpc.insecure_channel(running.address) as channel:
        inputs = [pb.EmbedInput(text=f"note {i}") for i in range(1000)]  # 10 kB asked, 1.5 MiB of vectors to answer
        error = rpc_error(lambda: pb_grpc.EmbedStub(channel).Embed(pb.EmbedRequest(inputs=inputs), timeout=300))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the Embed answer is" in error.details()
        assert "fewer inputs" in error.details()
        collections = pb_grpc.CollectionsStub(channel)
        collections.CreateCollection(pb.CreateCollectionRequest(name="long"))
        text = "Rain forms when water vapour condenses. " * 3000  # 120 kB each: 16 answer 1.9 MiB
        for first in range(0, 16, 4):  # four per message: each request stays under the 1 MiB limit
            upsert(channel, "long", *(pb.Document(id=f"d{i}", text=text) for i in range(first, first + 4)))
        search = pb_grpc.SearchStub(channel).Search

        error = rpc_error(lambda: search(pb.SearchRequest(collection="long", query="rain", k=16, include_documents=True)))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the Search answer is 19" in error.details() and "over the message limit of 1048576 bytes" in error.details()
        assert "fewer hits" in error.details() and "include_documents" in error.details()
        info = error_details_pb2.ErrorInfo()
        assert rpc_status.from_call(error).details[0].Unpack(info) and info.reason == "RESPONSE_TOO_LARGE"
        assert len(rpc_status.from_call(error).details) == 1  # no RetryInfo: the same request fails again

        assert len(search(pb.SearchRequest(collection="long", query="rain", k=16)).hits) == 16
        assert len(search(pb.SearchRequest(collection="long", query="rain", k=4, include_documents=True)).hits) == 4

        get = pb.GetDocumentsRequest(collection="long", ids=[f"d{i}" for i in range(16)])
        error = rpc_error(lambda: collections.GetDocuments(get))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "the GetDocuments answer is" in error.details()
        assert "fewer ids" in error.details()

    access = [line for line in running.output if "irgate.access" in line and "RESOURCE_EXHAUSTED" in line]
    assert {"Embed", "Search", "GetDocuments"} <= {line.split("irgate.access: ")[1].split()[0] for line in access}
    assert not any("ExecuteBatchError" in line or "Traceback" in line for line in running.output)


def test_a_collection_name_cannot_forge_access_log_lines(server: LocalServer, channel: grpc.Channel) -> None:
    forged = "x\n2026-01-01 00:00:00,000 INFO irgate.access: Search OK method=Search status=OK"
    coloured = "red\x1b[2J\x07"  # no space: the log would not quote it
    for name in (forged, coloured):
        error = rpc_error(lambda: pb_grpc.SearchStub(channel).Search(pb.SearchRequest(collection=name, query="rain")))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    wait_for(lambda: any("INVALID_ARGUMENT" in line and "collection=red\\u001b[2J\\u0007" in line for line in server.output),
             10, "an escaped access line for the refused Search")
    assert any("INVALID_ARGUMENT" in line and "u000a2026" in line for line in server.output)
    assert not any(line.startswith("2026-01-01") or "\x1b" in line or "\x07" in line for line in server.output)


def test_a_server_stream_whose_client_stops_reading_is_ended_and_frees_its_slot(
    minilm_folder: Path, judge_folder: Path, tmp_path: Path
) -> None:
    metrics_port = free_port()
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", f"local:{judge_folder}", "--max-concurrent-requests", "1",
            "--stream-send-timeout-s", "2", "--max-reasoning-tokens", "4000", "--max-judge-documents", "16",
            "--metrics-port", str(metrics_port)]
    counting = pb.JudgeRequest(  # SmolLM2 keeps counting until its budget: deltas without end
        query="List the numbers from 1 to 2000, one per line.", return_reasoning=True,
        documents=[pb.JudgeDocument(inline=pb.InlineDocument(text="1\n2\n3\n4"))] * 16,
    )
    with LocalServer(tmp_path, args) as running, grpc.insecure_channel(running.address) as channel:
        # A small receive window and no window growth: the server's writes block within seconds.
        with grpc.insecure_channel(running.address, [("grpc.http2.lookahead_bytes", 1024),
                                                     ("grpc.http2.bdp_probe", 0)]) as unread:
            stream = pb_grpc.JudgeStub(unread).JudgeStream(counting, timeout=300)
            assert next(stream).HasField("reasoning")  # then nothing more is read
            info = pb_grpc.InfoStub(channel).GetInfo
            busy = rpc_error(lambda: info(pb.GetInfoRequest(), timeout=10))
            assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            details = {packed.TypeName(): packed for packed in rpc_status.from_call(busy).details}
            retry = error_details_pb2.RetryInfo()
            assert details["google.rpc.RetryInfo"].Unpack(retry) and retry.retry_delay.seconds == 1
            with Client(running.address) as client, pytest.raises(IrgateError) as refused:
                client.info()
            assert (refused.value.reason, refused.value.retry_after) == ("SERVER_BUSY", 1.0)

            deadline = time.monotonic() + 240
            while True:
                try:
                    info(pb.GetInfoRequest(), timeout=10)
                    break
                except grpc.RpcError as error:
                    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
                    assert time.monotonic() < deadline, "the unread stream still holds the only slot after 240 s"
                    time.sleep(0.5)
            with pytest.raises(grpc.RpcError) as ended:
                for _ in stream:  # what the server had queued, then its status
                    pass
            assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "--stream-send-timeout-s" in ended.value.details()
        wait_for(lambda: metric(metrics_port, "irgate_judge_busy") == 0.0, 10, "the judge stopping with the stream")
    assert any("JudgeStream DEADLINE_EXCEEDED" in line for line in running.output)


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(f"{name} "))

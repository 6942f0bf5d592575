"""What an operator meets first: the startup summary, one access line per request, metrics, the HTTP
health path and `make serve`, against real server processes."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from irgate.local_server import READY_PREFIX, LocalServer
from irgate.logs import ready_address
from irgate.processes import free_port
from irgate_client import Client, Document, IrgateError
from irgate_client.v1 import irgate_pb2 as pb
from support import REPO, wait_for


@pytest.fixture(scope="module")
def ops_server(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """No judge, JSON logs."""
    with LocalServer(tmp_path_factory.mktemp("ops-data"), ["--embedder", f"onnx:{minilm_folder}", "--judge", "none",
                                                           "--log-format", "json", "--max-batch-size", "8"]) as running:
        yield running


def json_logs(server: LocalServer) -> list[dict]:
    entries = []
    for line in server.output:
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def access_lines(server: LocalServer, request_id: str) -> list[dict]:
    return [entry for entry in json_logs(server) if entry["logger"] == "irgate.access" and entry["request_id"] == request_id]


def logged(entries: Callable[[], list[dict]], what: str) -> list[dict]:
    """The log entries `entries` finds, once it finds some: a line is written as its call ends, a moment
    after the client has its answer."""
    wait_for(lambda: bool(entries()), 10, what)
    return entries()


# ---------------------------------------------------------------------------
# logs
# ---------------------------------------------------------------------------


def test_startup_summary_says_where_it_listens_what_runs_and_what_it_holds(ops_server: LocalServer) -> None:
    messages = [entry["message"] for entry in json_logs(ops_server)]
    assert any(message.startswith("irgate ") and f"gRPC on {ops_server.address}" in message for message in messages)
    assert any(message.startswith("embedder: all-MiniLM-L6-v2 on onnx:") for message in messages)
    assert any(re.match(r"ONNX Runtime \S+ runs all-MiniLM-L6-v2 with .*CPUExecutionProvider", message) for message in messages)
    assert any(message.startswith("judge: none") for message in messages)
    assert any(message.startswith("collections under ") and message.endswith("none yet") for message in messages)
    assert any(message.startswith("limits: 8 texts per Embed or upsert message, k up to 1000") for message in messages)


def test_json_logs_are_json_down_to_the_line_that_says_where_it_listens(ops_server: LocalServer) -> None:
    with Client(ops_server.address, timeout=30) as client:
        client.create_collection("json-only")
    logged(lambda: access_lines_of(ops_server, "CreateCollection"), "the CreateCollection access line")
    plain = [line for line in ops_server.output if line.strip() and not line.startswith("{")]
    assert plain == []
    [ready] = [entry for entry in json_logs(ops_server) if entry["message"].startswith(READY_PREFIX)]
    assert ready["address"] == ops_server.address and ready["pid"] == ops_server.pid
    # A new collection is made aside under an internal name and has no index to rebuild: neither is worth a line.
    messages = " ".join(entry["message"] for entry in json_logs(ops_server))
    assert ".creating-" not in messages and "rebuilding its index" not in messages


def access_lines_of(server: LocalServer, method: str) -> list[dict]:
    return [entry for entry in json_logs(server) if entry["logger"] == "irgate.access" and entry["method"] == method]


def test_one_access_line_per_request_with_the_callers_request_id(ops_server: LocalServer) -> None:
    with grpc.insecure_channel(ops_server.address) as channel:
        create = channel.unary_unary("/irgate.v1.Collections/CreateCollection",
                                     request_serializer=pb.CreateCollectionRequest.SerializeToString,
                                     response_deserializer=pb.CollectionInfo.FromString)
        create(pb.CreateCollectionRequest(name="logged"), metadata=(("x-request-id", "create-1"),), timeout=30)
        search = channel.unary_unary("/irgate.v1.Search/Search", request_serializer=pb.SearchRequest.SerializeToString,
                                     response_deserializer=pb.SearchResponse.FromString)
        _, call = search.with_call(pb.SearchRequest(collection="logged", query="rain", k=3),
                                   metadata=(("x-request-id", "search-1"),), timeout=30)
        assert ("x-request-id", "search-1") in call.trailing_metadata()
        with pytest.raises(grpc.RpcError) as missing:
            search(pb.SearchRequest(collection="nowhere", query="rain"), metadata=(("x-request-id", "search-2"),), timeout=30)
        assert ("x-request-id", "search-2") in missing.value.trailing_metadata()
    [searched] = logged(lambda: access_lines(ops_server, "search-1"), "the access line of search-1")
    assert {key: searched[key] for key in ("method", "collection", "k", "rerank", "status")} == {
        "method": "Search", "collection": "logged", "k": 3, "rerank": 0, "status": "OK"}
    assert searched["ms"] > 0 and searched["peer"].startswith("ipv")
    [failed] = logged(lambda: access_lines(ops_server, "search-2"), "the access line of search-2")
    assert (failed["status"], failed["collection"]) == ("NOT_FOUND", "nowhere")
    assert len(access_lines(ops_server, "create-1")) == 1


def test_upsert_streams_log_their_collection_and_counts(ops_server: LocalServer) -> None:
    with Client(ops_server.address) as client:
        client.create_collection("logged-upsert")
        client.upsert("logged-upsert", [Document(id=str(i), text=f"Note {i}.") for i in range(5)], batch_size=2)
    entries = logged(lambda: [entry for entry in json_logs(ops_server)
                              if entry["logger"] == "irgate.access" and entry.get("collection") == "logged-upsert"
                              and entry["method"] == "UpsertDocuments"], "the UpsertDocuments access line")
    assert [(entry["upserted"], entry["unchanged"], entry["status"]) for entry in entries] == [(5, 0, "OK")]


def test_text_log_lines_carry_the_fields_as_key_value_pairs() -> None:
    from irgate.logs import TextFormatter

    record = logging.LogRecord("irgate.access", logging.INFO, __file__, 1, "%s %s", ("Search", "OK"), None)
    record.fields = {"method": "Search", "collection": "my docs", "k": 10, "status": "OK", "ms": 1.5}
    line = TextFormatter().format(record)
    assert line.endswith('irgate.access: Search OK method=Search collection="my docs" k=10 status=OK ms=1.5')


# ---------------------------------------------------------------------------
# metrics and HTTP health
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def metrics_url(minilm_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    port = free_port()
    data_dir = tmp_path_factory.mktemp("metrics-data")
    # LocalServer passes --metrics-port 0; the later flag wins.
    with LocalServer(data_dir, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-batch-size", "8",
                                "--metrics-port", str(port)]) as running:
        yield running, f"http://127.0.0.1:{port}"


def scrape(url: str) -> str:
    return urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()


def scrape_until(url: str, expected: str) -> str:
    """The metrics once they hold `expected`: a call is counted as it ends, a moment after the client has its answer."""
    wait_for(lambda: expected in scrape(url), 10, f"{expected!r} in the metrics")
    return scrape(url)


def test_a_client_deadline_counts_as_deadline_exceeded(metrics_url) -> None:
    server, url = metrics_url
    documents = [Document(id=str(i), text=" ".join(["Long field notes about rain and rivers."] * 30)) for i in range(64)]
    with Client(server.address) as client:
        client.create_collection("deadlines")
        with pytest.raises(IrgateError) as raised:
            client.upsert("deadlines", documents, batch_size=8, timeout=0.3)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    counted = 'irgate_requests_total{code="DEADLINE_EXCEEDED",method="UpsertDocuments"} 1.0'
    body = scrape_until(url, counted)
    assert counted in body and 'code="CANCELLED"' not in body


def test_rerank_searches_are_a_series_of_their_own(metrics_url) -> None:
    server, url = metrics_url
    with Client(server.address) as client:
        client.create_collection("series")
        client.upsert("series", [Document(id="a", text="Rain forms when vapour condenses.")])
        client.search("series", "rain")
        with pytest.raises(IrgateError):  # no judge here: FAILED_PRECONDITION, counted under Search+rerank
            client.search("series", "rain", rerank=1)
    counted = 'irgate_requests_total{code="FAILED_PRECONDITION",method="Search+rerank"} 1.0'
    body = scrape_until(url, counted)
    assert counted in body
    assert re.search(r'irgate_requests_total\{code="OK",method="Search"\} [1-9]', body)
    assert 'irgate_requests_total{code="FAILED_PRECONDITION",method="Search"}' not in body
    assert 'irgate_request_seconds_bucket{le="3600.0",method="Search"}' in body  # up to the longest calls


def test_document_counts_per_collection(metrics_url) -> None:
    server, url = metrics_url
    with Client(server.address) as client:
        client.create_collection("counted")
        client.upsert("counted", [Document(id=str(i), text=f"Note {i}.") for i in range(3)])
        assert 'irgate_collection_documents{collection="counted"} 3.0' in scrape(url)
        client.delete_collection("counted")
    assert 'collection="counted"' not in scrape(url)


def test_the_metrics_port_serves_metrics_and_health_and_nothing_else(metrics_url) -> None:
    _, url = metrics_url

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    assert get("/health") == (200, "SERVING\n")
    assert get("/health/irgate.v1.Search") == (200, "SERVING\n")
    assert get("/health/irgate.v1.Judge") == (503, "NOT_SERVING\n")  # this server runs without a judge
    assert get("/health/Search")[0] == 404
    assert get("/")[0] == 404 and get("/metrics/extra")[0] == 404 and get("/favicon.ico")[0] == 404
    assert get("/metrics")[0] == 200


# ---------------------------------------------------------------------------
# make serve
# ---------------------------------------------------------------------------


def test_make_serve_honours_irgate_variables_and_passes_args(tmp_path: Path) -> None:
    environment = {**os.environ, "IRGATE_JUDGE": "none"}
    args = f"--port 0 --metrics-port 0 --http-port 0 --data-dir {tmp_path} --log-format json"
    # -o: the installed virtualenv counts as up to date (make test made it).
    process = subprocess.Popen(["make", "-s", "-o", ".venv/.installed-stamp", "serve", f"ARGS={args}"], cwd=REPO,
                               env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    lines: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if ready_address(line):
                break
        assert lines and ready_address(lines[-1]), "".join(lines[-30:])
        summary = [json.loads(line)["message"] for line in lines if line.startswith("{")]
        assert any(message.startswith("judge: none") for message in summary), summary
        assert any(message.endswith("metrics off") for message in summary), summary
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the session started above: make and the server it runs
        process.wait(timeout=60)

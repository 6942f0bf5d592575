"""What a new user reads first: the configuration table, the sample data and the documented examples
(README, SDK README, grpcurl page), checked against `--help` and run against real server processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2

from irgate.local_server import LocalServer
from irgate_client import Client, Document
from irgate_client.v1 import irgate_pb2 as pb
from support import REPO


def irgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def judge_server(minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The examples run as written, the judge's included."""
    with LocalServer(tmp_path_factory.mktemp("docs-data"), ["--embedder", f"onnx:{minilm_folder}",
                                                            "--judge", f"local:{judge_folder}"]) as running:
        yield running


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


def serve_help_entries() -> dict[str, tuple[str, str]]:
    """flag -> (variable, default) as `irgate serve --help` prints them (no IRGATE_* set)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IRGATE_")}
    text = subprocess.run([sys.executable, "-m", "irgate", "serve", "--help"], capture_output=True, text=True, check=True,
                          env={**environment, "COLUMNS": "200"}).stdout
    entries = {}
    for entry in re.split(r"\n(?=  -)", text.split("options:", 1)[1]):
        entry = " ".join(entry.split())
        if not entry.startswith("--") or entry.startswith("--help"):
            continue
        flag = entry.split()[0]
        variable = re.search(r"env (IRGATE_\w+)", entry)
        default = re.search(r"default: ([^)]*)\)$", entry)
        assert variable, f"{flag} names no IRGATE_* variable in --help"
        entries[flag] = (variable.group(1), (default.group(1).strip() if default else "") or "none")
    return entries


def readme_table_rows() -> dict[str, tuple[str, str]]:
    section = (REPO / "README.md").read_text().split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = (cells[1].strip("`"), cells[2].strip("`"))
    return rows


def test_readme_configuration_table_matches_serve_help() -> None:
    help_entries = serve_help_entries()
    table = readme_table_rows()
    assert sorted(set(help_entries) - set(table)) == [], "flags missing from the README table"
    assert sorted(set(table) - set(help_entries)) == [], "README rows for flags that do not exist"
    differing = {flag: (table[flag], help_entries[flag]) for flag in table if table[flag] != help_entries[flag]}
    assert differing == {}, "README (variable, default) vs --help"


def test_no_help_shows_an_empty_default() -> None:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("IRGATE_")}
    for command in (["serve"], ["search"], ["index"], ["judge"], ["collection", "create"]):
        text = subprocess.run([sys.executable, "-m", "irgate", *command, "--help"], capture_output=True, text=True,
                              check=True, env={**environment, "COLUMNS": "200"}).stdout
        assert "default: )" not in text, command


def readme_exit_codes() -> dict[int, str]:
    section = (REPO / "README.md").read_text().split("### Exit codes", 1)[1].split("\n#", 1)[0]
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in section.splitlines()
            if re.match(r"\|\s*\d+\s*\|", line)]
    return {int(code): meaning for code, meaning in rows}


def test_readme_exit_codes_are_the_ones_the_cli_uses() -> None:
    from irgate.cli import EXIT_CODES

    assert readme_exit_codes() == EXIT_CODES


def test_irgate_server_is_documented_where_help_names_it() -> None:
    assert "IRGATE_SERVER" in irgate("search", "--help").stdout and "IRGATE_SERVER" in irgate("--help").stdout
    assert "`IRGATE_SERVER`" in (REPO / "README.md").read_text()
    assert "`IRGATE_SERVER`" in (REPO / "clients" / "python" / "README.md").read_text()


# ---------------------------------------------------------------------------
# docs and sample data
# ---------------------------------------------------------------------------


def project_docs() -> list[Path]:
    tracked = subprocess.run(["git", "ls-files", "*.md"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in tracked] + [REPO / "clients" / "python" / "README.md", REPO / "docs" / "grpcurl.md"]


def test_project_docs_point_nowhere_outside_the_repository() -> None:
    outside = re.compile(r"\.\./shared|shared/(REFERENCE|DESIGN)|REFERENCE\.md|REFERENCE section")
    offenders = {str(path.relative_to(REPO)): match.group(0) for path in project_docs()
                 if path.exists() and (match := outside.search(path.read_text()))}
    assert offenders == {}


def test_the_license_file_is_the_one_pyproject_declares() -> None:
    assert 'license = "Apache-2.0"' in (REPO / "pyproject.toml").read_text()
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text


def test_the_sample_corpus_is_a_beir_set_the_quickstart_evaluates(judge_server: LocalServer) -> None:
    from irgate.eval.beir import load_beir

    examples = REPO / "examples"
    data = load_beir(examples)
    assert len(data.corpus) >= 20 and len(data.queries) >= 10
    assert all(doc in data.corpus for judged in data.qrels.values() for doc in judged)
    report = json.loads(irgate("eval", "beir", "--data", str(examples), "--json", "--server", judge_server.address).stdout)
    assert report["empty_docs"] == 1 and report["queries"] == len(data.queries)
    assert report["ndcg@10"] >= 0.8, report  # the queries were written to be answerable by a small model


def grpcurl_commands() -> list[list[str]]:
    text = (REPO / "docs" / "grpcurl.md").read_text()
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for command in re.split(r"\n(?=grpcurl )", block.replace("\\\n", " ").strip()):
            commands.append(shlex.split(command))
    return commands


def messages_of(payload: str, kind: type) -> list:
    decoder, position, messages = json.JSONDecoder(), 0, []
    while payload[position:].strip():
        position += len(payload[position:]) - len(payload[position:].lstrip())
        value, end = decoder.raw_decode(payload, position)
        messages.append(json_format.ParseDict(value, kind()))  # strict: an unknown field fails
        position = end
    return messages


def test_every_grpcurl_example_is_a_valid_request_the_server_answers(judge_server: LocalServer) -> None:
    services = {service.full_name: service for service in pb.DESCRIPTOR.services_by_name.values()}
    called = set()
    with grpc.insecure_channel(judge_server.address) as channel:
        for command in grpcurl_commands():
            assert command[0] == "grpcurl" and "-plaintext" in command, command
            if "list" in command or "describe" in command:
                continue
            target, method = command[-2], command[-1]
            assert target == "127.0.0.1:50051", command
            payload = command[command.index("-d") + 1]
            headers = [tuple(part.strip() for part in command[i + 1].split(":", 1)) for i, word in enumerate(command)
                       if word == "-H"]
            service_name, method_name = method.split("/")
            if service_name == "grpc.health.v1.Health":
                request_type, response_type, streaming = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse, (False, False)
            else:
                descriptor = services[service_name].methods_by_name[method_name]
                request_type = getattr(pb, descriptor.input_type.name)
                response_type = getattr(pb, descriptor.output_type.name)
                streaming = (descriptor.client_streaming, descriptor.server_streaming)
            requests = messages_of(payload, request_type)
            factory = {(False, False): channel.unary_unary, (True, False): channel.stream_unary,
                       (False, True): channel.unary_stream}[streaming]
            call = factory(f"/{method}", request_serializer=request_type.SerializeToString,
                           response_deserializer=response_type.FromString)
            request = iter(requests) if streaming[0] else requests[0]
            response = call(request, metadata=headers or None, timeout=300)
            if streaming[1]:
                response = list(response)
                assert response, method
            called.add(method)
    every_rpc = {f"{service.full_name}/{method.name}" for service in services.values() for method in service.methods}
    assert every_rpc <= called, sorted(every_rpc - called)


def test_sdk_readme_examples_run_as_written(judge_server: LocalServer, tmp_path: Path) -> None:
    text = (REPO / "clients" / "python" / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 7
    for number, block in enumerate(blocks, 1):
        script = tmp_path / f"example_{number}.py"
        script.write_text(block.replace("127.0.0.1:50051", judge_server.address))
        result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"example {number}:\n{block}\n{result.stderr}"


def test_search_after_rerank_shows_the_dense_score_and_the_verdict_apart(judge_server: LocalServer) -> None:
    with Client(judge_server.address) as client:
        client.create_collection("reranked")
        client.upsert("reranked", [Document(id="rain", text="Rain forms when water vapour condenses."),
                                   Document(id="cats", text="Cats are small mammals."),
                                   Document(id="lava", text="Magma erupts from volcanoes as lava.")])
    common = ["search", "reranked", "what causes rain", "--k", "3", "--rerank", "2", "--max-reasoning-tokens", "4",
              "--server", judge_server.address]
    hits = [json.loads(line) for line in irgate(*common, "--json").stdout.splitlines()]
    judged, unjudged = hits[:2], hits[2]
    for hit in judged:
        verdict = hit["verdict"]
        assert set(verdict) >= {"relevant", "score", "ended", "reasoning_tokens"} and "reasoning" not in verdict
        assert hit["score"] == verdict["score"] and 0 <= hit["dense_score"] <= 1
    assert unjudged["verdict"] is None and unjudged["score"] == unjudged["dense_score"]
    with_reasoning = [json.loads(line) for line in irgate(*common, "--json", "--reasoning").stdout.splitlines()]
    assert all("reasoning" in hit["verdict"] for hit in with_reasoning[:2])
    table = irgate(*common).stdout
    header = next(line for line in table.splitlines() if "rank" in line)
    assert all(column in header for column in ("dense", "relevant", "p(true)", "ended", "tokens"))


def test_judge_reasoning_prints_each_documents_whole_reasoning(judge_server: LocalServer) -> None:
    common = ["judge", "what causes rain", "--doc", "Rain forms when water vapour condenses.", "--doc", "Cats purr.",
              "--max-reasoning-tokens", "4", "--server", judge_server.address]
    table = irgate(*common).stdout
    reasoned = irgate(*common, "--reasoning").stdout
    assert "doc 0 (" not in table
    for index in (0, 1):
        assert re.search(rf"^doc {index} \(\d+ tokens, (answered|forced|forced_eos)\):$", reasoned, flags=re.M), reasoned

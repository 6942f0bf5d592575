"""The `irgate` command against a real server, as a user would run it."""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import SHARED, free_port
from irgate.local_server import LocalServer

CORPUS = [
    {"_id": "d1", "title": "Precipitation", "text": "Rain forms when water vapour condenses into droplets."},
    {"_id": "d2", "title": "Felines", "text": "Cats are small domesticated carnivorous mammals."},
    {"_id": "d3", "title": "Volcanoes", "text": "Magma rising through the crust erupts as lava."},
    {"_id": "d4", "title": "", "text": "Insulin regulates blood glucose levels."},
]
QUERIES = [
    {"_id": "q1", "text": "what makes it rain"},
    {"_id": "q2", "text": "how do volcanoes erupt"},
    {"_id": "q3", "text": "an unjudged query"},
]


def irgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, check=check, timeout=600)


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BEIR data set: gzipped corpus, plain queries, test qrels."""
    folder = tmp_path_factory.mktemp("beir")
    with gzip.open(folder / "corpus.jsonl.gz", "wt") as corpus:
        corpus.writelines(json.dumps(row) + "\n" for row in CORPUS)
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in QUERIES))
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n")
    return folder


def test_collection_commands(server: LocalServer) -> None:
    irgate("collection", "create", "cli-notes", "--server", server.address)
    assert "cli-notes" in irgate("collection", "list", "--server", server.address).stdout
    failed = irgate("collection", "create", "cli-notes", "--server", server.address, check=False)
    assert failed.returncode == 2 and "ALREADY_EXISTS" in failed.stderr
    irgate("collection", "delete", "cli-notes", "--server", server.address)
    assert "cli-notes" not in irgate("collection", "list", "--server", server.address).stdout


def test_index_then_search(server: LocalServer, beir_folder: Path) -> None:
    indexed = irgate("index", "cli-corpus", str(beir_folder / "corpus.jsonl.gz"), "--create", "--server", server.address)
    assert "upserted 4" in indexed.stderr
    lines = irgate("search", "cli-corpus", "how do volcanoes erupt", "--k", "2", "--json", "--server", server.address).stdout
    hits = [json.loads(line) for line in lines.splitlines()]
    assert [hit["rank"] for hit in hits] == [1, 2]
    assert hits[0]["id"] == "d3" and hits[0]["title"] == "Volcanoes"
    assert hits[0]["score"] > hits[1]["score"]


def test_health_command(server: LocalServer) -> None:
    assert irgate("health", "--server", server.address).stdout.strip() == "SERVING"


def test_eval_beir_against_a_running_server(server: LocalServer, beir_folder: Path) -> None:
    report = json.loads(irgate("eval", "beir", "--data", str(beir_folder), "--json", "--server", server.address).stdout)
    assert report["queries"] == 2 and report["docs"] == 4  # only judged queries count
    assert report["ndcg@10"] == 1.0 and report["recall@100"] == 1.0
    assert report["index_seconds"] > 0 and report["search_seconds"] > 0


def test_eval_beir_starts_its_own_server(minilm_folder: Path, beir_folder: Path) -> None:
    result = irgate("eval", "beir", "--data", str(beir_folder), "--json", "--embedder", f"onnx:{minilm_folder}", "--judge", "none")
    report = json.loads(result.stdout)
    assert set(report) >= {"ndcg@10", "recall@100", "queries", "docs", "index_seconds", "search_seconds"}


@pytest.mark.slow
def test_scifact_reproduces_the_published_minilm_score(minilm_folder: Path) -> None:
    """all-MiniLM-L6-v2 on BEIR SciFact: MTEB publishes nDCG@10 = 0.64508."""
    data = SHARED / "data" / "scifact"
    if not data.exists():
        pytest.skip(f"{data} is not here (shared/ lies beside the checkout)")
    report = json.loads(irgate("eval", "beir", "--data", str(data), "--json", "--embedder", f"onnx:{minilm_folder}", "--judge", "none").stdout)
    assert (report["queries"], report["docs"]) == (300, 5183)
    assert abs(report["ndcg@10"] - 0.64508) <= 0.005, report


def test_bench_embed_compares_irgate_with_the_raw_engine_and_sentence_transformers(minilm_folder: Path) -> None:
    report = json.loads(irgate("bench", "embed", "--model", str(minilm_folder), "--documents", "64", "--json").stdout)
    assert report["documents"] == 64
    assert report["irgate_vs_raw_onnxruntime"] > 0 and report["irgate_vs_sentence_transformers"] > 0
    assert report["max_abs_diff_vs_sentence_transformers"] < 1e-4  # same vectors, or the speed means nothing


# ---------------------------------------------------------------------------
# the first hour: every command a new user reaches for, and no tracebacks
# ---------------------------------------------------------------------------


def test_version() -> None:
    from irgate import __version__

    assert irgate("--version").stdout.strip() == f"irgate {__version__}"


def test_every_flag_has_help_that_shows_its_default() -> None:
    from irgate.cli import SECRETS, _parser

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    checked = 0
    for parser in parsers(_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
            if action.option_strings and action.dest not in SECRETS:
                assert "default" in formatter._get_help_string(action), f"{parser.prog} {action.option_strings[0]}"
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("command", ["info", "health", "collection list", "collection create x", "documents get c a",
                                     "documents delete c a", "index c f.jsonl", "embed t", "search c q", "judge q --doc d",
                                     "eval beir --data d"])
def test_every_client_command_takes_the_same_connection_flags(command: str) -> None:
    from irgate.cli import _parser

    args = _parser().parse_args([*command.split(), "--server", "h:1", "--api-key", "k", "--tls", "--ca-cert", "ca.pem",
                                 "--timeout", "5"])
    assert (args.server, args.api_key, args.tls, str(args.ca_cert), args.timeout) == ("h:1", "k", True, "ca.pem", 5.0)


def test_info_and_collection_list_as_json(server: LocalServer) -> None:
    info = json.loads(irgate("info", "--json", "--server", server.address).stdout)
    assert info["model"] == "all-MiniLM-L6-v2" and info["dimension"] == 384 and info["judge_model"] == ""
    irgate("collection", "create", "cli-json", "--server", server.address)
    irgate("collection", "create", "cli-json", "--exist-ok", "--server", server.address)  # a rerun is fine
    rows = [json.loads(line) for line in irgate("collection", "list", "--json", "--server", server.address).stdout.splitlines()]
    listed = {row["name"]: row for row in rows}
    assert listed["cli-json"]["documents"] == 0 and listed["cli-json"]["precision"] == "f16"


def test_documents_get_and_delete(server: LocalServer, beir_folder: Path) -> None:
    irgate("index", "cli-docs", str(beir_folder / "corpus.jsonl.gz"), "--create", "--server", server.address)
    got = irgate("documents", "get", "cli-docs", "d2", "nope", "--server", server.address, check=False)
    assert got.returncode == 1 and "not found in cli-docs: nope" in got.stderr
    assert [json.loads(line)["title"] for line in got.stdout.splitlines()] == ["Felines"]
    deleted = irgate("documents", "delete", "cli-docs", "d2", "nope", "--server", server.address)
    assert "deleted 1; 1 not found" in deleted.stderr


def test_embed_prints_vectors(server: LocalServer) -> None:
    lines = irgate("embed", "what makes it rain", "a second text", "--query", "--json", "--server", server.address).stdout
    rows = [json.loads(line) for line in lines.splitlines()]
    assert [row["text"] for row in rows] == ["what makes it rain", "a second text"]
    assert all(len(row["values"]) == 384 and row["tokens"] > 2 for row in rows)


def test_search_filter_and_json_fields(server: LocalServer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in [
        {"_id": "a", "text": "Rain forms when vapour condenses.", "metadata": {"field": "physics", "year": 2001}},
        {"_id": "b", "text": "Rain falls on the plain in Spain.", "metadata": {"field": "poetry", "year": 2001}},
    ]))
    irgate("index", "cli-filter", str(corpus), "--create", "--server", server.address)
    lines = irgate("search", "cli-filter", "rain", "--filter", "field=poetry", "--filter", "year=2001", "--json",
                   "--server", server.address).stdout
    hits = [json.loads(line) for line in lines.splitlines()]
    assert [hit["id"] for hit in hits] == ["b"]
    assert hits[0]["verdict"] is None and hits[0]["metadata"] == {"field": "poetry", "year": 2001}
    assert hits[0]["dense_score"] == hits[0]["score"]  # unjudged: the score is the dense one
    bad = irgate("search", "cli-filter", "rain", "--filter", "field", "--server", server.address, check=False)
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr


def test_index_reports_progress_without_a_terminal_and_a_rerun_skips_what_is_stored(server: LocalServer,
                                                                                     beir_folder: Path) -> None:
    first = irgate("index", "cli-resume", str(beir_folder / "corpus.jsonl.gz"), "--create", "--server", server.address)
    assert "indexing corpus.jsonl.gz: 4/4 docs" in first.stderr and "docs/s" in first.stderr
    again = irgate("index", "cli-resume", str(beir_folder / "corpus.jsonl.gz"), "--server", server.address)
    assert "upserted 0 (0 replaced), 4 unchanged and skipped, 0 tokens embedded" in again.stderr


def test_a_failed_index_says_what_the_collection_holds(server: LocalServer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "text": f"Note {i}."} for i in range(4)] + [{"_id": "x" * 300, "text": "An id too long."}]
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    failed = irgate("index", "cli-partial", str(corpus), "--create", "--batch-size", "2", "--server", server.address,
                    check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "INVALID_ARGUMENT" in failed.stderr and "cli-partial now holds 4 documents" in failed.stderr


def test_documents_without_title_and_text_are_counted_not_fatal(server: LocalServer, tmp_path: Path) -> None:
    folder = tmp_path / "blank-beir"
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(row) + "\n" for row in [*CORPUS, {"_id": "d5", "title": "", "text": ""}]))
    (folder / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in QUERIES))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    indexed = irgate("index", "cli-blank", str(folder / "corpus.jsonl"), "--create", "--server", server.address)
    assert "upserted 5" in indexed.stderr and "1 document without title and text: embedded as empty strings" in indexed.stderr
    report = json.loads(irgate("eval", "beir", "--data", str(folder), "--json", "--server", server.address).stdout)
    assert (report["docs"], report["empty_docs"]) == (5, 1)


def test_user_errors_and_an_unreachable_server_print_no_traceback(server: LocalServer) -> None:
    unknown = irgate("health", "--service", "Search", "--server", server.address, check=False)
    assert unknown.returncode == 2 and "irgate.v1.Search" in unknown.stderr and "Traceback" not in unknown.stderr
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["health"], ["info"], ["search", "c", "q"], ["collection", "list"]):
        failed = irgate(*command, "--server", nobody, check=False)
        assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
        assert f"cannot reach irgate at {nobody}" in failed.stderr
    # A long error stays on one line (a log or a grep finds it whole), whatever the terminal's width.
    deep = "/no/such/" + "folder/" * 20 + "corpus.jsonl"
    missing = irgate("index", "c", deep, "--server", server.address, check=False)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr and deep in missing.stderr


def test_a_deadline_says_how_to_raise_it(server: LocalServer) -> None:
    irgate("collection", "create", "cli-deadline", "--server", server.address)
    failed = irgate("embed", *[f"text number {i} " * 40 for i in range(8)], "--timeout", "0.001", "--server", server.address,
                    check=False)
    assert failed.returncode == 2 and "DEADLINE_EXCEEDED" in failed.stderr
    assert "--timeout SECONDS" in failed.stderr and "Traceback" not in failed.stderr

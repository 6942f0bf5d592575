"""The `irgate` command against a real server, as a user would run it."""

from __future__ import annotations

import argparse
import gzip
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from irgate.cli import EXIT_CODES, EXIT_INTERRUPTED, EXIT_NO, EXIT_NO_ANSWER, EXIT_NOT_STARTED, EXIT_REFUSED, EXIT_USAGE
from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client
from scifact_slice import SCIFACT, write_slice
from support import REPO, assert_ratio, wait_for

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


def irgate(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, check=check, timeout=timeout)


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
    assert failed.returncode == EXIT_REFUSED and "ALREADY_EXISTS" in failed.stderr
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
    started = time.monotonic()
    report = json.loads(irgate("eval", "beir", "--data", str(beir_folder), "--json", "--server", server.address).stdout)
    wall = time.monotonic() - started
    assert report["queries"] == 2 and report["docs"] == 4  # only judged queries count
    assert report["ndcg@10"] == 1.0 and report["recall@100"] == 1.0
    assert 0 < report["index_seconds"] and 0 < report["search_seconds"] and report["index_seconds"] + report["search_seconds"] < wall


def test_eval_beir_starts_its_own_server(minilm_folder: Path, beir_folder: Path) -> None:
    result = irgate("eval", "beir", "--data", str(beir_folder), "--json", "--embedder", f"onnx:{minilm_folder}", "--judge", "none")
    report = json.loads(result.stdout)
    assert set(report) >= {"ndcg@10", "recall@100", "queries", "docs", "index_seconds", "search_seconds"}


def test_scifact_slice_scores_as_sentence_transformers_ranks_it(minilm_folder: Path, tmp_path: Path) -> None:
    """`irgate eval beir` on 30 SciFact queries over 202 documents gives the nDCG@10 that
    sentence-transformers' own embeddings and a brute-force ranking give (f32 vectors: the same order)."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is not here (shared/ lies beside the checkout)")
    import ir_measures
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from irgate.models.sources import minilm_checkpoint

    data = write_slice(tmp_path / "slice")
    report = json.loads(irgate("eval", "beir", "--data", str(data), "--json", "--no-cache", "--precision", "f32",
                               "--embedder", f"onnx:{minilm_folder}", "--judge", "none").stdout)
    with gzip.open(data / "corpus.jsonl.gz", "rt") as lines:
        corpus = [json.loads(line) for line in lines]
    queries = [json.loads(line) for line in (data / "queries.jsonl").read_text().splitlines()]
    model = SentenceTransformer(str(minilm_checkpoint()), device="cpu")
    documents = model.encode([f"{row['title']} {row['text']}" for row in corpus], normalize_embeddings=True)
    scores = model.encode([row["text"] for row in queries], normalize_embeddings=True) @ documents.T
    run = [ir_measures.ScoredDoc(query["_id"], corpus[i]["_id"], float(row[i]))
           for query, row in zip(queries, scores, strict=True) for i in np.argsort(-row)[:100]]
    qrels = [ir_measures.Qrel(*line.split("\t")[:2], 1) for line in (data / "qrels" / "test.tsv").read_text().splitlines()[1:]]
    reference = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert (report["queries"], report["docs"]) == (30, 202)
    assert abs(report["ndcg@10"] - reference) <= 1e-3, (report, reference)


@pytest.mark.skipif(os.environ.get("IRGATE_SOAK_SCIFACT") != "1", reason="5,183 documents, minutes: make soak runs it")
def test_scifact_reproduces_the_published_minilm_score(minilm_folder: Path) -> None:
    """all-MiniLM-L6-v2 on BEIR SciFact: MTEB publishes nDCG@10 = 0.64508."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is not here (shared/ lies beside the checkout)")
    report = json.loads(irgate("eval", "beir", "--data", str(SCIFACT), "--json", "--embedder", f"onnx:{minilm_folder}", "--judge", "none",
                               timeout=2400).stdout)
    assert (report["queries"], report["docs"]) == (300, 5183)
    assert abs(report["ndcg@10"] - 0.64508) <= 0.005, report


def test_bench_embed_compares_irgate_with_the_raw_engine_and_sentence_transformers_and_shows_its_steps(minilm_folder: Path) -> None:
    done = irgate("bench", "embed", "--model", str(minilm_folder), "--documents", "64", "--json")
    report = json.loads(done.stdout)  # stdout holds the JSON object only: the steps went to stderr
    assert "bench embed: 3/3 steps, " in done.stderr, done.stderr
    assert report["documents"] == 64
    assert_ratio(report, "irgate_vs_raw_onnxruntime", "irgate_docs_per_s", "raw_onnxruntime_docs_per_s")
    assert_ratio(report, "irgate_vs_sentence_transformers", "irgate_docs_per_s", "sentence_transformers_docs_per_s")
    assert report["max_abs_diff_vs_sentence_transformers"] < 1e-4  # same vectors, or the speed means nothing


@pytest.mark.parametrize("suite", ["judge", "embed"])
def test_bench_outside_a_source_checkout_says_it_needs_one(suite: str, tmp_path: Path) -> None:
    # The package alone, as a wheel installs it: no benchmarks/ folder beside it.
    shutil.copytree(REPO / "server" / "irgate", tmp_path / "site-packages" / "irgate",
                    ignore=shutil.ignore_patterns("__pycache__"))
    done = subprocess.run([sys.executable, "-m", "irgate", "bench", suite], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path / "site-packages")})
    assert done.returncode == EXIT_USAGE, done.stderr
    [line] = done.stderr.splitlines()  # one line, no traceback
    assert "runs from a source checkout" in line and str(tmp_path / "benchmarks" / f"{suite}.py") in line, line


# ---------------------------------------------------------------------------
# the first hour: every command a new user reaches for, and no tracebacks
# ---------------------------------------------------------------------------


def test_version() -> None:
    from irgate import __version__

    assert irgate("--version").stdout.strip() == f"irgate {__version__}"


def test_every_flag_has_help_that_shows_its_default() -> None:
    from irgate.cli import SECRETS, build_parser

    def parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    yield from parsers(child)

    checked = 0
    for parser in parsers(build_parser()):
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
    from irgate.cli import build_parser

    args = build_parser().parse_args([*command.split(), "--server", "h:1", "--api-key", "k", "--tls", "--ca-cert", "ca.pem",
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
    assert bad.returncode == EXIT_USAGE and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    # A JSON object is the filter language; it and KEY=VALUE pairs must all hold.
    lines = irgate("search", "cli-filter", "rain", "--filter", '{"field": {"$in": ["physics", "geology"]}}',
                   "--filter", "year=2001", "--json", "--server", server.address).stdout
    assert [json.loads(line)["id"] for line in lines.splitlines()] == ["a"]
    refused = irgate("search", "cli-filter", "rain", "--filter", '{"year": {"$after": 2000}}', "--server", server.address,
                     check=False)
    assert refused.returncode == EXIT_REFUSED and "filter.year.$after: unknown operator" in refused.stderr


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
    assert failed.returncode == EXIT_REFUSED and "Traceback" not in failed.stderr
    assert "INVALID_ARGUMENT" in failed.stderr and "cli-partial now holds 4 documents" in failed.stderr
    assert "4 of the 5 documents of corpus.jsonl were committed" in failed.stderr
    assert "indexing corpus.jsonl: 4/5 docs" in failed.stderr  # what was committed, not what was sent


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
    assert unknown.returncode == EXIT_REFUSED and "irgate.v1.Search" in unknown.stderr and "Traceback" not in unknown.stderr
    nobody = f"127.0.0.1:{free_port()}"
    for command in (["health"], ["info"], ["search", "c", "q"], ["collection", "list"]):
        failed = irgate(*command, "--server", nobody, check=False)
        assert failed.returncode == EXIT_NO_ANSWER and "Traceback" not in failed.stderr, failed.stderr
        assert f"cannot reach irgate at {nobody}" in failed.stderr
    # A long error stays on one line (a log or a grep finds it whole), whatever the terminal's width.
    deep = "/no/such/" + "folder/" * 20 + "corpus.jsonl"
    missing = irgate("index", "c", deep, "--server", server.address, check=False)
    assert missing.returncode == EXIT_USAGE and "Traceback" not in missing.stderr and deep in missing.stderr


def test_a_deadline_says_how_to_raise_it(server: LocalServer) -> None:
    irgate("collection", "create", "cli-deadline", "--server", server.address)
    failed = irgate("embed", *[f"text number {i} " * 40 for i in range(8)], "--timeout", "0.001", "--server", server.address,
                    check=False)
    assert failed.returncode == EXIT_NO_ANSWER and "DEADLINE_EXCEEDED" in failed.stderr
    assert "--timeout SECONDS" in failed.stderr and "Traceback" not in failed.stderr


# ---------------------------------------------------------------------------
# exit codes, indexing that counts what is committed, and the small things a first hour meets
# ---------------------------------------------------------------------------


def test_an_eval_whose_own_server_cannot_start_says_why_in_one_line(beir_folder: Path, tmp_path: Path) -> None:
    failed = irgate("eval", "beir", "--data", str(beir_folder), "--embedder", f"onnx:{tmp_path / 'nothing'}", check=False)
    assert failed.returncode == EXIT_NOT_STARTED and "Traceback" not in failed.stderr
    assert f"no prepared embedder at {tmp_path / 'nothing'}: run `irgate prepare` first" in failed.stderr


def test_each_exit_code_means_one_thing_and_help_lists_them_all(server: LocalServer, minilm_folder: Path) -> None:
    irgate("collection", "create", "cli-codes", "--server", server.address)
    outcomes = {
        0: irgate("health", "--server", server.address, check=False),
        EXIT_NO: irgate("health", "--service", "irgate.v1.Judge", "--server", server.address, check=False),  # no judge
        EXIT_USAGE: irgate("search", "cli-codes", "rain", "--k", "0", "--server", server.address, check=False),
        EXIT_REFUSED: irgate("collection", "describe", "cli-nowhere", "--server", server.address, check=False),
        EXIT_NO_ANSWER: irgate("health", "--server", f"127.0.0.1:{free_port()}", check=False),
        # The running server holds that data directory.
        EXIT_NOT_STARTED: irgate("serve", "--data-dir", str(server.data_dir), "--port", "0", "--metrics-port", "0",
                                 "--embedder", f"onnx:{minilm_folder}", "--judge", "none", check=False),
    }
    for code, result in outcomes.items():
        assert result.returncode == code, (code, result.args, result.stderr)
        assert "Traceback" not in result.stderr
    assert "NOT_SERVING" in outcomes[EXIT_NO].stdout and "NOT_FOUND" in outcomes[EXIT_REFUSED].stderr
    assert "in use by another irgate process" in outcomes[EXIT_NOT_STARTED].stderr
    help_text = irgate("--help").stdout
    listed = help_text.split("exit codes:", 1)[1]
    for code, meaning in EXIT_CODES.items():
        assert f"  {code:<4} {meaning.split()[0]}" in listed, code
    assert set(EXIT_CODES) == {*outcomes, EXIT_INTERRUPTED}


def test_ctrl_c_exits_130_without_a_traceback() -> None:
    with socket.socket() as silent:  # accepts connections and never answers: the call waits
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        # SIGINT as a terminal delivers it: a suite started in the background (`make test &`) ignores
        # SIGINT, and a child inherits that (it then waited out gRPC's 20 s connect timeout: exit 4).
        process = subprocess.Popen([sys.executable, "-m", "irgate", "health", "--timeout", "120",
                                    "--server", f"127.0.0.1:{silent.getsockname()[1]}"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: _connected(silent), 60, "the CLI connecting")
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED and "interrupted" in stderr and "Traceback" not in stderr, (
        process.returncode, stderr[-2000:])


def _connected(listening: socket.socket) -> bool:
    return bool(select.select([listening], [], [], 0)[0])


def test_index_into_a_missing_collection_says_how_to_create_it(server: LocalServer, beir_folder: Path) -> None:
    failed = irgate("index", "cli-missing", str(beir_folder / "corpus.jsonl.gz"), "--server", server.address, check=False)
    assert failed.returncode == EXIT_REFUSED and "NOT_FOUND" in failed.stderr
    assert "`irgate collection create cli-missing`" in failed.stderr and "--create" in failed.stderr
    assert "docs" not in failed.stderr  # refused before a document was read, so no progress to report


def test_index_counts_what_the_server_committed_when_it_stops_and_a_rerun_resumes(minilm_folder: Path,
                                                                                   tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": f"n{i}", "text": f"Field note {i} on rain and rivers."}) + "\n"
                              for i in range(2000)))
    data_dir = tmp_path / "data"
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none"]
    with LocalServer(data_dir, args) as running:
        irgate("collection", "create", "cli-stopped", "--server", running.address)
        indexing = subprocess.Popen([sys.executable, "-m", "irgate", "index", "cli-stopped", str(corpus), "--batch-size",
                                     "16", "--server", running.address], stderr=subprocess.PIPE, text=True)
        with Client(running.address, timeout=30) as client:
            wait_for(lambda: client.describe_collection("cli-stopped").documents >= 64, 300, "64 documents committed")
        running.kill()  # the server stops mid-index, as a crash would
        _, stderr = indexing.communicate(timeout=120)
    assert indexing.returncode == EXIT_NO_ANSWER and "Traceback" not in stderr, stderr
    committed = int(stderr.split(" of the 2000 documents of corpus.jsonl were committed")[0].rsplit(";", 1)[1])
    assert f"indexing corpus.jsonl: {committed}/2000 docs" in stderr  # the progress counted commits, not sends
    assert "how many documents cli-stopped holds now is unknown" in stderr and "rerun the same command" in stderr
    with LocalServer(data_dir, args) as restarted:
        with Client(restarted.address, timeout=30) as client:
            held = client.describe_collection("cli-stopped").documents
        # Every batch the CLI counted was acknowledged, so it is durable; one more may have been committed unanswered.
        assert committed <= held <= committed + 16 and committed >= 48
        again = irgate("index", "cli-stopped", str(corpus), "--batch-size", "256", "--server", restarted.address)
    assert f"upserted {2000 - held} (0 replaced), {held} unchanged and skipped" in again.stderr
    assert "cli-stopped holds 2000 documents" in again.stderr


def test_metadata_numbers_print_as_they_were_indexed(server: LocalServer, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"_id": "a", "text": "A paper.", "metadata": {"year": 2021, "score": 0.5, "pages": [3, 9]}})
                      + "\n")
    irgate("index", "cli-numbers", str(corpus), "--create", "--server", server.address)
    printed = irgate("documents", "get", "cli-numbers", "a", "--server", server.address).stdout
    metadata = json.loads(printed)["metadata"]  # JSON's 2021 reads as an int, 2021.0 as a float
    assert metadata == {"year": 2021, "score": 0.5, "pages": [3, 9]}
    assert [type(value) for value in (metadata["year"], metadata["score"], *metadata["pages"])] == [int, float, int, int]
    too_big = tmp_path / "too-big.jsonl"
    too_big.write_text(json.dumps({"_id": "b", "text": "An id.", "metadata": {"id": 9007199254740993}}) + "\n")
    refused = irgate("index", "cli-numbers", str(too_big), "--server", server.address, check=False)
    assert refused.returncode == EXIT_REFUSED and "INVALID_ARGUMENT" in refused.stderr
    assert "9007199254740993" in refused.stderr and "2^53 - 1" in refused.stderr and "as a string" in refused.stderr
    filtered = irgate("search", "cli-numbers", "paper", "--filter", "id=9007199254740993", "--server", server.address,
                      check=False)
    assert filtered.returncode == EXIT_REFUSED and "2^53 - 1" in filtered.stderr


def test_an_instruction_to_an_embedder_not_trained_with_them_is_warned_about(server: LocalServer) -> None:
    irgate("collection", "create", "cli-instructed", "--exist-ok", "--server", server.address)
    warned = irgate("search", "cli-instructed", "rain", "--instruction", "mountain weather only", "--server", server.address)
    assert "warning: the embedder all-MiniLM-L6-v2 was not trained with instructions" in warned.stderr
    assert "changes its vector and every dense score" in warned.stderr
    embedded = irgate("embed", "rain", "--query", "--instruction", "be strict", "--server", server.address)
    assert "not trained with instructions" in embedded.stderr
    plain = irgate("search", "cli-instructed", "rain", "--server", server.address)
    assert "warning" not in plain.stderr


def test_empty_results_say_so_on_stderr_and_print_no_json(server: LocalServer) -> None:
    irgate("collection", "create", "cli-empty", "--exist-ok", "--server", server.address)
    empty = irgate("search", "cli-empty", "rain", "--json", "--server", server.address)
    assert empty.stdout == "" and "no hits: cli-empty holds no document" in empty.stderr
    unmatched = irgate("search", "cli-empty", "rain", "--filter", "year=1", "--json", "--server", server.address)
    assert "that matches every --filter" in unmatched.stderr


def test_flags_are_checked_before_anything_is_printed_or_sent(server: LocalServer) -> None:
    for flags, said in ((["--k", "0"], "argument --k: 0 is out of range; it must be between 1 and the server's max_k"),
                        (["--k", "5000"], "k is 5000; it must be between 1 and 100"),
                        (["--rerank", "2", "--max-reasoning-tokens", "-5"], "argument --max-reasoning-tokens: -5 is out"),
                        (["--rerank", "-1"], "argument --rerank: -1 is out of range")):
        failed = irgate("search", "c", "rain", *flags, "--server", server.address, check=False)
        assert said in failed.stderr, (flags, failed.stderr)
        assert "info()" not in failed.stderr and "reranks the top" not in failed.stderr  # no banner, no SDK names
    assert "--reasoning" in irgate("judge", "--help").stdout


def test_tls_against_a_plaintext_server_says_so_without_grpc_core_lines(server: LocalServer) -> None:
    failed = irgate("health", "--tls", "--timeout", "10", "--server", server.address, check=False)
    assert failed.returncode == EXIT_NO_ANSWER
    assert "no TLS handshake with" in failed.stderr and "drop --tls for a plaintext server" in failed.stderr
    assert all(line.startswith(("error: ", "cannot reach")) for line in failed.stderr.splitlines()), failed.stderr


def test_irgate_server_names_the_server_of_every_client_command(server: LocalServer) -> None:
    environment = {**os.environ, "IRGATE_SERVER": server.address}
    result = subprocess.run([sys.executable, "-m", "irgate", "health"], capture_output=True, text=True, timeout=120,
                            env=environment)
    assert result.returncode == 0 and result.stdout.strip() == "SERVING"

"""The `irgate` command against a real server, as a user would run it."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SHARED
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

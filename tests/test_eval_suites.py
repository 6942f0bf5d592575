"""`irgate eval prompts | followir | beir --rerank | derive-followir` against real server processes on
small data sets the tests write: the default embedder, and the SmolLM2 judge where reranking is tested."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from irgate.eval.followir import ORIGINAL_INSTRUCTION, standard_measure
from irgate.eval.pmrr import read_run
from irgate.eval.prompts import GENERIC_PROMPTS
from irgate.local_server import LocalServer
from irgate.processes import free_port

CORPUS = [
    {"_id": "rain", "title": "Precipitation", "text": "Rain forms when water vapour condenses into droplets."},
    {"_id": "snow", "title": "Snowfall", "text": "Snow forms when water vapour freezes into ice crystals in cold clouds."},
    {"_id": "cats", "title": "Felines", "text": "Cats are small domesticated carnivorous mammals."},
    {"_id": "lava", "title": "Volcanoes", "text": "Magma rising through the crust erupts as lava."},
    {"_id": "etna", "title": "Mount Etna in Sicily", "text": "Etna erupts often; its lava flows reach villages in Sicily."},
    {"_id": "iceland", "title": "Eruptions in Iceland", "text": "Icelandic volcanoes erupt under glaciers and melt the ice."},
    {"_id": "sugar", "title": "", "text": "Insulin regulates blood glucose levels."},
]
QUERIES = [
    {"_id": "q-rain", "text": "what makes it rain"},
    {"_id": "q-erupt", "text": "how do volcanoes erupt"},
    {"_id": "q-unjudged", "text": "an unjudged query"},
]
BEIR_QRELS = "query-id\tcorpus-id\tscore\nq-rain\train\t1\nq-rain\tsnow\t1\nq-erupt\tlava\t1\nq-erupt\tetna\t1\n"


def irgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, check=check, timeout=900)


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def beir_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("beir")
    _jsonl(folder / "corpus.jsonl", CORPUS)
    _jsonl(folder / "queries.jsonl", QUERIES)
    (folder / "qrels").mkdir()
    (folder / "qrels" / "test.tsv").write_text(BEIR_QRELS)
    return folder


@pytest.fixture(scope="module")
def followir_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """FollowIR layout: under the changed instructions Iceland and snow stop being relevant."""
    folder = tmp_path_factory.mktemp("followir")
    _jsonl(folder / "corpus.jsonl", CORPUS)
    _jsonl(folder / "queries.jsonl", [
        {"_id": "q-erupt", "text": "how do volcanoes erupt", "instruction_og": "Any volcano is relevant.",
         "instruction_changed": "Any volcano is relevant, except volcanoes in Iceland."},
        {"_id": "q-rain", "text": "what falls from clouds", "instruction_og": "Rain and snow are relevant.",
         "instruction_changed": "Only rain is relevant; snow is not."},
    ])
    for name, rows in (("qrels_og", [("q-erupt", "lava", 1), ("q-erupt", "etna", 1), ("q-erupt", "iceland", 1),
                                     ("q-rain", "rain", 1), ("q-rain", "snow", 1)]),
                       ("qrels_changed", [("q-erupt", "lava", 1), ("q-erupt", "etna", 1), ("q-erupt", "iceland", 0),
                                          ("q-rain", "rain", 1), ("q-rain", "snow", 0)])):
        (folder / name).mkdir()
        (folder / name / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows))
    # One query's list as one row with a list of ids, the other as one row per id (both forms occur).
    _jsonl(folder / "top_ranked.jsonl", [{"qid": "q-erupt", "pid": ["cats", "iceland", "lava", "etna", "sugar"]},
                                         {"qid": "q-rain", "pid": "snow"}, {"qid": "q-rain", "pid": "sugar"},
                                         {"qid": "q-rain", "pid": "rain"}, {"qid": "q-rain", "pid": "cats"}])
    return folder


@pytest.fixture(scope="module")
def judging_server(minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """The SmolLM2 judge with a small reasoning cap (the default budget), and 2 documents per judge call
    so that longer lists are judged in several calls."""
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", f"local:{judge_folder}", "--max-reasoning-tokens", "4",
            "--max-judge-documents", "2", "--metrics-port", str(free_port())]
    with LocalServer(tmp_path_factory.mktemp("judge-data"), args) as running:
        yield running


def _is_png(path: Path) -> bool:
    return path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


# ---------------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------------


def test_prompts_runs_no_prompt_and_the_ten_generic_prompts_and_writes_a_report(
        server: LocalServer, beir_folder: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = json.loads(irgate("eval", "prompts", "--data", str(beir_folder), "--server", server.address,
                               "--cache", str(tmp_path / "cache"), "--json", "--report", str(report_dir)).stdout)
    runs = result["runs"]
    assert [run["prompt"] for run in runs] == ["", *GENERIC_PROMPTS]
    assert [run["name"] for run in runs][:2] == ["no prompt", "prompt 1"] and len(GENERIC_PROMPTS) == 10
    assert result["queries"] == 2 and all(set(run["per_query"]) == {"q-rain", "q-erupt"} for run in runs)
    scores = [run["ndcg@10"] for run in runs[1:]]
    assert result["no_prompt"] == runs[0]["ndcg@10"]
    assert result["prompts"]["mean"] == pytest.approx(statistics.fmean(scores), abs=1e-5)
    assert result["prompts"]["std"] == pytest.approx(statistics.stdev(scores), abs=1e-5)
    assert result["prompts"]["spread"] == pytest.approx(max(scores) - min(scores), abs=1e-5)
    assert all(len(samples) == 2 and min(samples) > 0 for samples in result["latency_samples_ms"].values())

    assert json.loads((report_dir / "results.json").read_text()) == result
    for plot in ("prompts.png", "per_query_deltas.png", "latency.png"):
        assert _is_png(report_dir / plot)
    markdown = (report_dir / "report.md").read_text()
    assert "irgate eval prompts --data" in markdown and "standard deviation" in markdown
    assert "![prompts.png](prompts.png)" in markdown and GENERIC_PROMPTS[7] in markdown


def test_a_rerun_comes_from_the_cache_and_an_interrupted_one_resumes(
        server: LocalServer, beir_folder: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"

    def run(*more: str) -> dict:
        return json.loads(irgate("eval", "prompts", "--data", str(beir_folder), "--server", server.address,
                                 "--cache", str(cache), "--json", *more).stdout)

    first = run()
    assert first["cached_queries"] == 0 and first["index_seconds"] > 0
    again = run()
    assert again["cached_queries"] == 22 and again["index_seconds"] == 0  # 11 runs x 2 queries; nothing indexed
    assert [r["ndcg@10"] for r in again["runs"]] == [r["ndcg@10"] for r in first["runs"]]

    # A crash cut one run's file mid-line after its first query: that run redoes one query only.
    cut = sorted(cache.glob("*.jsonl"))[0]
    header, first_query, _ = cut.read_text().splitlines()
    cut.write_text(f"{header}\n{first_query}\n{{\"query_id\": \"q-")
    resumed = run()
    assert resumed["cached_queries"] == 21 and resumed["index_seconds"] > 0
    assert [r["ndcg@10"] for r in resumed["runs"]] == [r["ndcg@10"] for r in first["runs"]]
    assert run("--no-cache")["cached_queries"] == 0


def test_other_data_is_another_cache_key(server: LocalServer, beir_folder: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed"
    changed.mkdir()
    for name in ("corpus.jsonl", "queries.jsonl"):
        (changed / name).write_bytes((beir_folder / name).read_bytes())
    (changed / "qrels").mkdir()
    (changed / "qrels" / "test.tsv").write_text(BEIR_QRELS.replace("q-rain\tsnow\t1\n", ""))
    common = ["--server", server.address, "--cache", str(tmp_path / "cache"), "--json"]
    assert json.loads(irgate("eval", "prompts", "--data", str(beir_folder), *common).stdout)["cached_queries"] == 0
    assert json.loads(irgate("eval", "prompts", "--data", str(changed), *common).stdout)["cached_queries"] == 0


def test_another_index_engine_or_precision_is_another_cache_key(server: LocalServer, milvus, minilm_folder: Path,
                                                                  beir_folder: Path, tmp_path: Path) -> None:
    """The same model and data behind a Milvus-backed gateway, or in i8 vectors, run again: the cache
    key holds the server's index engine and the collection's precision, and the report says how
    many query runs came from the cache."""
    cache = tmp_path / "cache"

    def run(address: str, *more: str) -> dict:
        return json.loads(irgate("eval", "beir", "--data", str(beir_folder), "--server", address, "--cache", str(cache),
                                 "--json", *more).stdout)

    local = run(server.address)
    assert local["server"]["index_engine"] == "local" and local["server"]["index_address"] == ""
    assert (local["query_runs"], local["cached_queries"]) == (2, 0)
    report_dir = tmp_path / "report"
    again = run(server.address, "--report", str(report_dir))
    assert (again["query_runs"], again["cached_queries"]) == (2, 2) and again["ndcg@10"] == local["ndcg@10"]
    assert "2 of 2 query runs came from the cache (`--no-cache` runs every query again)" in (report_dir / "report.md").read_text()
    assert "index local, f16 vectors, embedder on onnx:" in (report_dir / "report.md").read_text()

    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-batch-size", "8", "--max-k", "100"]
    with LocalServer(tmp_path / "gateway", [*args, "--index", milvus.index_setting]) as gateway:
        on_milvus = run(gateway.address)
    assert on_milvus["server"]["index_engine"] == "milvus" and on_milvus["server"]["index_address"] == milvus.address
    assert on_milvus["model"] == local["model"] and on_milvus["cached_queries"] == 0 and on_milvus["index_seconds"] > 0
    in_i8 = run(server.address, "--precision", "i8")
    assert in_i8["server"]["precision"] == "i8" and in_i8["cached_queries"] == 0


# ---------------------------------------------------------------------------------------------
# followir and p-MRR
# ---------------------------------------------------------------------------------------------


def test_the_standard_score_follows_the_data_set() -> None:
    assert standard_measure("core17-instructions") == "nDCG@5"
    assert standard_measure("robust04-instructions") == "AP@1000" == standard_measure("news21")
    assert standard_measure("core17", "map@1000") == "AP@1000" and standard_measure("x", "ndcg@10") == "nDCG@10"
    with pytest.raises(ValueError):
        standard_measure("x", "no-such-measure@3")


def test_followir_searches_under_both_instructions_and_its_runs_give_the_same_p_mrr(
        server: LocalServer, followir_folder: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = json.loads(irgate("eval", "followir", "--data", str(followir_folder), "--server", server.address, "--k", "100",
                               "--no-cache", "--json", "--report", str(report_dir)).stdout)
    assert result["mode"] == "search" and result["measure"] == "AP@1000"
    assert (result["queries"], result["pmrr_queries"], result["pmrr_documents"]) == (2, 2, 2)  # iceland and snow
    assert -1 <= result["p-MRR"] <= 1 and set(result["per_query"]["p-MRR"]) == {"q-erupt", "q-rain"}
    assert 0 < result["original"] <= 1 and 0 < result["changed"] <= 1
    assert (report_dir / "changed_qrels.tsv").read_text().splitlines()[1:] == ["q-erupt\ticeland\t1", "q-rain\tsnow\t1"]
    assert _is_png(report_dir / "per_query_deltas.png") and _is_png(report_dir / "latency.png")

    again = json.loads(irgate("eval", "pmrr", "--run-og", str(report_dir / "run_og.trec"), "--run-changed",
                              str(report_dir / "run_changed.trec"), "--changed-qrels", str(report_dir / "changed_qrels.tsv"),
                              "--json").stdout)
    assert again["p-MRR"] == pytest.approx(result["p-MRR"], abs=1e-5)
    assert again["per_query"] == pytest.approx(result["per_query"]["p-MRR"], abs=1e-5)


def test_followir_judges_the_top_ranked_lists(judging_server: LocalServer, followir_folder: Path, tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = json.loads(irgate("eval", "followir", "--data", str(followir_folder), "--server", judging_server.address,
                               "--rerank", "3", "--max-reasoning-tokens", "0", "--no-cache", "--json",
                               "--report", str(report_dir)).stdout)
    assert result["mode"] == "judge top-ranked lists" and -1 <= result["p-MRR"] <= 1
    for name in ("original", "changed"):
        verdicts = result["verdicts"][name]
        assert verdicts["verdicts"] == 6 and sum(verdicts["ended"].values()) == 6  # 2 queries x the first 3 of each list
        assert verdicts["reasoning_budgets"] == [0]
    # The judged head is reordered; the tail keeps the list's own order.
    for run_file in ("run_og.trec", "run_changed.trec"):
        run = read_run(report_dir / run_file)
        erupt = sorted(run["q-erupt"], key=lambda doc: -run["q-erupt"][doc])
        assert set(erupt[:3]) == {"cats", "iceland", "lava"} and erupt[3:] == ["etna", "sugar"]


# ---------------------------------------------------------------------------------------------
# beir --rerank
# ---------------------------------------------------------------------------------------------


def test_beir_rerank_reports_what_judging_changed_per_budget(judging_server: LocalServer, beir_folder: Path,
                                                              tmp_path: Path) -> None:
    report_dir = tmp_path / "report"
    result = json.loads(irgate("eval", "beir", "--data", str(beir_folder), "--server", judging_server.address,
                               "--rerank", "2", "--max-reasoning-tokens", "0,2", "--cache", str(tmp_path / "cache"),
                               "--json", "--report", str(report_dir)).stdout)
    rows = result["reranking"]
    assert [row["max_reasoning_tokens"] for row in rows] == [0, 2] and [row["reasoning_budget"] for row in rows] == [0, 2]
    for row in rows:
        assert row["ndcg@10_before"] == result["ndcg@10"]
        assert row["ndcg@10_change"] == pytest.approx(row["ndcg@10_after"] - row["ndcg@10_before"], abs=1e-5)
        assert row["verdicts"] == 4 and sum(row["ended"].values()) == 4  # 2 queries x top 2
        assert set(row["ended"]) >= {"answered", "forced", "forced_eos"}
        assert row["judge_seconds_per_query"] > 0 and len(row["latency_samples_ms"]) == 2  # each query judged 2 hits
    assert rows[0]["reasoning_tokens_mean"] == 0 and rows[1]["reasoning_tokens_mean"] <= 2
    for plot in ("per_query_deltas.png", "budget.png", "latency.png"):
        assert _is_png(report_dir / plot)
    assert "| budget | nDCG@10 before |" in (report_dir / "report.md").read_text()

    # The server's cap is the budget when none is given (4 on this server).
    default = json.loads(irgate("eval", "beir", "--data", str(beir_folder), "--server", judging_server.address,
                                "--rerank", "1", "--no-cache", "--json").stdout)
    assert default["reranking"][0]["max_reasoning_tokens"] is None and default["reranking"][0]["reasoning_budget"] == 4


def test_reranking_needs_a_judge(server: LocalServer, beir_folder: Path) -> None:
    failed = irgate("eval", "beir", "--data", str(beir_folder), "--server", server.address, "--rerank", "2", "--no-cache",
                    check=False)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr and "runs without a judge" in failed.stderr


# ---------------------------------------------------------------------------------------------
# derive-followir: the rule of docs/evaluation.md
# ---------------------------------------------------------------------------------------------


def test_derived_set_excludes_relevant_documents_that_mention_the_term(beir_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "derived"
    summary = json.loads(irgate("eval", "derive-followir", "--data", str(beir_folder), "--out", str(out), "--json").stdout)
    # q-rain: the first relevant document in id order is "rain", title "Precipitation": its only word of 5+ letters.
    # q-erupt: the first is "etna", title "Mount Etna in Sicily": "mount" and "sicily" are both in that document
    # alone (1 document each), and the tie goes to alphabetical order ("etna" is too short).
    queries = {row["_id"]: row for row in map(json.loads, (out / "queries.jsonl").read_text().splitlines())}
    assert {qid: row["term"] for qid, row in queries.items()} == {"q-rain": "precipitation", "q-erupt": "mount"}
    assert queries["q-rain"]["instruction_og"] == ORIGINAL_INSTRUCTION
    assert queries["q-rain"]["instruction_changed"] == f'{ORIGINAL_INSTRUCTION} Documents that mention "precipitation" are not relevant.'
    changed = (out / "qrels_changed" / "test.tsv").read_text().splitlines()[1:]
    assert changed == ["q-rain\train\t0", "q-rain\tsnow\t1", "q-erupt\tetna\t0", "q-erupt\tlava\t1"]  # queries in file order
    assert summary == {"queries": 2, "skipped_queries": 0, "made_non_relevant": 2, "relevant_before": 4, "out": str(out)}

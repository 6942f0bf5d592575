"""FollowIR's p-MRR on hand-computed cases, and `irgate eval pmrr` on TREC run files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from irgate.eval.pmrr import changed_documents, p_mrr, rank_change_score, ranks, read_run, write_run


def irgate(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, check=check, timeout=120)


def test_ranks_come_from_scores_with_ties_broken_by_document_id() -> None:
    assert ranks({"b": 0.5, "a": 0.5, "c": 0.9, "d": 0.1}) == {"c": 1, "a": 2, "b": 3, "d": 4}


def test_one_document_scores_by_where_it_moved() -> None:
    assert rank_change_score(1, 3) == pytest.approx(1 - (1 / 3) / (1 / 1))  # moved down, as it should: 2/3
    assert rank_change_score(2, 1) == pytest.approx((1 / 2) / (1 / 1) - 1)  # moved up: -1/2
    assert rank_change_score(4, 4) == 0.0  # stayed


def test_queries_are_averaged_after_their_documents() -> None:
    run_og = {
        "q1": {"d1": 3.0, "d2": 2.0, "d3": 1.0},  # d1 at 1
        "q2": {"a": 0.9, "b": 0.5},  # b at 2
    }
    run_changed = {
        "q1": {"d2": 3.0, "d3": 2.0, "d1": 1.0},  # d1 down to 3
        "q2": {"b": 0.9, "a": 0.1},  # b up to 1
    }
    # q1: d1 went 1 -> 3: 1 - (1/3)/(1/1) = 2/3.
    # q2: b went 2 -> 1: (1/2)/(1/1) - 1 = -1/2; c is in neither run: rank 3 (two docs + 1) in both: 0.
    # q2 = (-1/2 + 0) / 2 = -1/4; p-MRR = (2/3 - 1/4) / 2 = 5/24.
    result = p_mrr(run_og, run_changed, {"q1": ["d1"], "q2": ["b", "c"]})
    assert result.per_query == pytest.approx({"q1": 2 / 3, "q2": -1 / 4})
    assert result.value == pytest.approx(5 / 24)
    assert [(m.doc_id, m.og_rank, m.new_rank) for m in result.moves] == [("d1", 1, 3), ("b", 2, 1), ("c", 3, 3)]


def test_a_document_missing_from_one_run_ranks_just_below_that_run() -> None:
    run_og = {"q": {"x": 1.0, "y": 0.5}}  # x at 1; z absent: rank 3
    run_changed = {"q": {"y": 1.0, "z": 0.2, "w": 0.1}}  # x absent: rank 4; z at 2
    result = p_mrr(run_og, run_changed, {"q": ["x", "z"]})
    # x: 1 -> 4, down: 1 - (1/4)/(1/1) = 3/4. z: 3 -> 2, up: (1/3)/(1/2) - 1 = -1/3.
    assert {m.doc_id: (m.og_rank, m.new_rank) for m in result.moves} == {"x": (1, 4), "z": (3, 2)}
    assert result.value == pytest.approx((3 / 4 - 1 / 3) / 2)


def test_ties_in_a_run_are_broken_by_document_id() -> None:
    run_og = {"q": {"p": 1.0, "m": 1.0, "n": 0.5}}  # m 1, p 2, n 3
    run_changed = {"q": {"p": 1.0, "m": 1.0, "n": 1.0}}  # m 1, n 2, p 3
    assert p_mrr(run_og, run_changed, {"q": ["p"]}).value == pytest.approx(1 - (1 / 3) / (1 / 2))


def test_a_query_missing_from_a_run_is_left_out_and_listed() -> None:
    result = p_mrr({"q1": {"a": 1.0}, "q2": {"b": 1.0}}, {"q1": {"a": 1.0}}, {"q1": ["a"], "q2": ["b"], "q3": []})
    assert result.per_query == {"q1": 0.0} and result.skipped_queries == ["q2"]
    with pytest.raises(ValueError, match="no query of the changed qrels is in both runs"):
        p_mrr({"q1": {"a": 1.0}}, {"q1": {"a": 1.0}}, {"other": ["a"]})


def test_changed_documents_are_relevant_before_and_not_after() -> None:
    og = {"q": {"a": 1, "b": 2, "c": 0, "d": 1}}
    changed = {"q": {"a": 1, "b": 0, "c": 0}}  # d is not judged under the changed instruction: not relevant
    assert changed_documents(og, changed) == {"q": ["b", "d"]}


@given(st.dictionaries(st.sampled_from("abcdefgh"), st.floats(-5, 5), min_size=1),
       st.dictionaries(st.sampled_from("abcdefgh"), st.floats(-5, 5), min_size=1),
       st.sets(st.sampled_from("abcdefgh"), min_size=1))
def test_swapping_the_runs_negates_p_mrr_and_it_stays_within_minus_one_to_one(og: dict, new: dict, docs: set) -> None:
    forward = p_mrr({"q": og}, {"q": new}, {"q": docs}).value
    assert -1 < forward < 1
    assert p_mrr({"q": new}, {"q": og}, {"q": docs}).value == pytest.approx(-forward)


def test_run_files_round_trip_and_bad_lines_are_named(tmp_path: Path) -> None:
    run = {"q1": {"d1": 0.25, "d2": 0.75}, "q2": {"d9": 1.0}}
    write_run(tmp_path / "run.trec", run)
    assert (tmp_path / "run.trec").read_text().splitlines()[0] == "q1 Q0 d2 1 0.75 irgate"
    assert read_run(tmp_path / "run.trec") == run
    (tmp_path / "short.trec").write_text("q1 Q0 d1 1 0.5\n")
    with pytest.raises(ValueError, match=r"short.trec:1: expected 6 columns \(qid Q0 docid rank score tag\), found 5"):
        read_run(tmp_path / "short.trec")
    (tmp_path / "twice.trec").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
    with pytest.raises(ValueError, match="twice.trec:2: document d1 is listed twice for query q1"):
        read_run(tmp_path / "twice.trec")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_command_prints_p_mrr_and_per_query_values(tmp_path: Path) -> None:
    # The hand-computed case above, as files; the rank column is deliberately wrong: scores decide.
    og = _write(tmp_path / "og.trec", "q1 Q0 d1 9 3.0 x\nq1 Q0 d2 9 2.0 x\nq1 Q0 d3 9 1.0 x\nq2 Q0 a 1 0.9 x\nq2 Q0 b 2 0.5 x\n")
    changed = _write(tmp_path / "changed.trec", "q1 Q0 d2 1 3 x\nq1 Q0 d3 2 2 x\nq1 Q0 d1 3 1 x\nq2 Q0 b 1 0.9 x\nq2 Q0 a 2 0.1 x\n")
    qrels = _write(tmp_path / "changed.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tb\t1\nq2\tc\t1\nq2\ta\t0\n")
    result = json.loads(irgate("eval", "pmrr", "--run-og", str(og), "--run-changed", str(changed),
                               "--changed-qrels", str(qrels), "--json").stdout)
    assert result["p-MRR"] == pytest.approx(5 / 24)
    assert result["per_query"] == pytest.approx({"q1": 2 / 3, "q2": -1 / 4})
    assert (result["queries"], result["documents"]) == (2, 3)  # a, with score 0, is not a changed document

    table = irgate("eval", "pmrr", "--run-og", str(og), "--run-changed", str(changed), "--changed-qrels", str(qrels),
                   "--report", str(tmp_path / "report"))
    assert "p-MRR" in table.stdout and "0.2083" in table.stdout
    assert (tmp_path / "report" / "per_query_deltas.png").read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "report" / "results.json").read_text())["p-MRR"] == pytest.approx(5 / 24)

    broken = irgate("eval", "pmrr", "--run-og", str(qrels), "--run-changed", str(changed), "--changed-qrels", str(qrels),
                    check=False)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr and "expected 6 columns" in broken.stderr


def test_qrels_are_read_with_or_without_their_header(tmp_path: Path) -> None:
    from irgate.eval.beir import read_qrels

    rows = "q1\td1\t1\nq1\td2\t0\n"
    assert read_qrels(_write(tmp_path / "with.tsv", "query-id\tcorpus-id\tscore\n" + rows)) == {"q1": {"d1": 1, "d2": 0}}
    assert read_qrels(_write(tmp_path / "without.tsv", rows)) == {"q1": {"d1": 1, "d2": 0}}
    with pytest.raises(ValueError, match=r"bad.tsv:3: score 'high' is not a number"):
        read_qrels(_write(tmp_path / "bad.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td2\thigh\n"))

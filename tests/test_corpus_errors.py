"""A broken data file names the file, the line and what was expected: the corpus reader of
`irgate index` and `irgate eval`, on the mistakes people make with BEIR files."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from irgate.eval.beir import load_beir, read_corpus
from irgate.eval.followir import load_followir

GOOD_LINE = json.dumps({"_id": "rain", "title": "Precipitation", "text": "Rain forms when vapour condenses."})
EXPECTED = 'expected one JSON object per line, like {"_id": "d1", "title": "...", "text": "..."}'


def irgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, timeout=300)


def _error(path: Path) -> str:
    with pytest.raises(ValueError) as raised:
        read_corpus(path)
    return str(raised.value)


def test_a_broken_jsonl_line_is_named_by_file_and_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    # Line 2 holds a raw tab inside a string, which JSON does not allow; the decoder alone says "line 1".
    broken = '{"_id": "snow", "text": "Snow\tforms in cold clouds."}'
    corpus.write_text(f"{GOOD_LINE}\n{broken}\n")
    message = _error(corpus)
    assert message.startswith(f"{corpus}:2: not JSON (Invalid control character at column {broken.index(chr(9)) + 1} of ")
    assert "\\t" in message and message.endswith(EXPECTED)


def test_lines_are_counted_in_a_gzipped_file_with_blank_lines(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(gzip.compress(f"{GOOD_LINE}\n\n{GOOD_LINE}\n{{\"_id\": \"cut".encode()))
    assert _error(corpus).startswith(f"{corpus}:4: not JSON (Unterminated string starting at column 9 of ")


def test_a_csv_file_given_as_the_corpus_says_that_jsonl_was_expected(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("_id,title,text\nrain,Precipitation,Rain forms when vapour condenses.\n")
    assert _error(corpus) == f"{corpus}:1: not JSON (Expecting value at column 1 of '_id,title,text'); {EXPECTED}"


def test_a_record_with_id_instead_of_underscore_id_says_which_field_to_rename(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(GOOD_LINE + "\n" + json.dumps({"id": "snow", "text": "Snow forms in cold clouds."}) + "\n")
    assert _error(corpus) == (f'{corpus}:2: the record has no "_id" (it has "id": BEIR names that field "_id"); '
                              f'its fields are "id", "text"; {EXPECTED}')


def test_a_line_that_is_not_an_object_or_not_utf8_is_named(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(f'{GOOD_LINE}\n["rain", "Rain forms."]\n')
    assert _error(corpus) == f"{corpus}:2: a JSON list, not an object; {EXPECTED}"
    corpus.write_bytes(GOOD_LINE.encode() + b'\n{"_id": "caf\xe9"}\n')  # Latin-1, not UTF-8
    assert _error(corpus) == f"{corpus}:2: not UTF-8 text (byte 13 of the line); {EXPECTED}"


def test_a_byte_order_mark_and_numeric_ids_are_read(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("\ufeff" + json.dumps({"_id": 7, "text": "Seven."}) + "\n", encoding="utf-8")
    assert read_corpus(corpus) == {"7": ("", "Seven.")}


def test_queries_and_top_ranked_lists_name_their_missing_fields(tmp_path: Path) -> None:
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\train\t1\n")
    (tmp_path / "corpus.jsonl").write_text(GOOD_LINE + "\n")
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q1", "query": "what makes it rain"}) + "\n")
    with pytest.raises(ValueError, match=r'queries.jsonl:1: the record has no "text"; its fields are "_id", "query"; '
                                         r'expected one JSON object per line, like \{"_id": "q1", "text": "..."\}$'):
        load_beir(tmp_path)

    for name in ("qrels_og", "qrels_changed"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\train\t1\n")
    queries.write_text(json.dumps({"_id": "q1", "text": "rain", "instruction_og": "a", "instruction_changed": "b"}) + "\n")
    (tmp_path / "top_ranked.jsonl").write_text(json.dumps({"qid": "q1", "pid": "rain"}) + "\n"
                                               + json.dumps({"query_id": "q1", "pid": "rain"}) + "\n")
    with pytest.raises(ValueError, match=r'top_ranked.jsonl:2: the record has no "qid"; its fields are "query_id", "pid"'):
        load_followir(tmp_path)


def test_index_and_eval_print_the_line_and_no_traceback(tmp_path: Path) -> None:
    """Both commands read the data before they connect, so no server is needed to see the error."""
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\train\t1\n")
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "what makes it rain"}) + "\n")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(GOOD_LINE + "\n" + json.dumps({"id": "snow", "text": "Snow."}) + "\n")
    expected = f'{corpus}:2: the record has no "_id" (it has "id": BEIR names that field "_id")'
    for command in (["index", "papers", str(corpus)], ["eval", "beir", "--data", str(tmp_path)]):
        failed = irgate(*command, "--server", "127.0.0.1:1")
        assert failed.returncode == 2 and expected in failed.stderr, failed.stderr
        assert "Traceback" not in failed.stderr and failed.stdout == ""

"""Instruction following on FollowIR-format data: each query runs under its original and its changed
instruction; the standard score of each run, and p-MRR of the documents the change made non-relevant.

The layout is the one mteb's FollowIR loader reads from a folder:

    corpus.jsonl[.gz]        {"_id", "title", "text"}
    queries.jsonl            {"_id", "text", "instruction_og", "instruction_changed"}
    qrels_og/SPLIT.tsv       BEIR qrels under the original instructions
    qrels_changed/SPLIT.tsv  BEIR qrels under the changed instructions
    top_ranked.jsonl         optional: {"qid", "pid"} rows (pid one id or a list), in first-stage order

Without reranking every query is searched over the whole corpus. With --rerank N the judge
reorders the first N documents of each top-ranked list (or, without lists, the top N dense hits).
"""

from __future__ import annotations

import gzip
import io
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from irgate.eval import scoring
from irgate.eval.beir import QUERY_FIELDS, BeirData, find_data_file, read_corpus, read_jsonl, read_qrels
from irgate.eval.pmrr import PMRR, Run, changed_documents, p_mrr
from irgate.eval.runner import Evaluation, QueryResult
from irgate_client import Query

# Lines as they should be, for the error that names a line without its fields.
QUERY_LINE = '{"_id": "q1", "text": "...", "instruction_og": "...", "instruction_changed": "..."}'
TOP_RANKED_FIELDS, TOP_RANKED_LINE = ("qid", "pid"), '{"qid": "q1", "pid": "d1"} or {"qid": "q1", "pid": ["d1", "d2"]}'
# FollowIR's standard scores: MAP@1000 for Robust04 and News21, nDCG@5 for Core17.
MEASURE_NAMES = {"map": "AP", "ndcg": "nDCG", "recall": "R", "p": "P", "mrr": "RR"}


@dataclass(frozen=True)
class FollowIRData:
    name: str
    corpus: dict[str, tuple[str, str]]
    queries: dict[str, tuple[str, str, str]]  # id -> (text, original instruction, changed instruction)
    og_qrels: dict[str, dict[str, int]]
    changed_qrels: dict[str, dict[str, int]]
    top_ranked: dict[str, list[str]]  # empty when the data has no lists
    files: tuple[Path, ...]


def _optional(folder: Path, name: str) -> Path | None:
    try:
        return find_data_file(folder, name)
    except FileNotFoundError:
        return None


def load_followir(folder: Path, split: str = "test") -> FollowIRData:
    corpus_path, queries_path = find_data_file(folder, "corpus.jsonl"), find_data_file(folder, "queries.jsonl")
    og_path = find_data_file(folder / "qrels_og", f"{split}.tsv")
    changed_path = find_data_file(folder / "qrels_changed", f"{split}.tsv")
    og_qrels, changed_qrels = read_qrels(og_path), read_qrels(changed_path)
    queries: dict[str, tuple[str, str, str]] = {}
    for row in read_jsonl(queries_path, QUERY_FIELDS, QUERY_LINE):
        if row["_id"] not in og_qrels:
            continue
        missing = [key for key in ("instruction_og", "instruction_changed") if key not in row]
        if missing:
            raise ValueError(f"{queries_path}: query {row['_id']} has no {' or '.join(missing)} (FollowIR layout expected)")
        queries[row["_id"]] = (row["text"], row["instruction_og"], row["instruction_changed"])
    corpus = read_corpus(corpus_path)
    files = [corpus_path, queries_path, og_path, changed_path]
    top_ranked: dict[str, list[str]] = {}
    top_path = _optional(folder, "top_ranked.jsonl")
    if top_path is not None:
        files.append(top_path)
        for row in read_jsonl(top_path, TOP_RANKED_FIELDS, TOP_RANKED_LINE):
            qid = str(row["qid"])
            ids = [str(pid) for pid in row["pid"]] if isinstance(row["pid"], list) else [str(row["pid"])]
            unknown = [doc_id for doc_id in ids if doc_id not in corpus]
            if unknown:
                raise ValueError(f"{top_path}: query {qid} lists {unknown[0]}, which is not in the corpus")
            top_ranked.setdefault(qid, []).extend(ids)
    return FollowIRData(folder.resolve().name, corpus, queries, {q: og_qrels[q] for q in queries},
                        {q: changed_qrels.get(q, {}) for q in queries}, top_ranked, tuple(files))


def standard_measure(data_name: str, requested: str = "") -> str:
    """The ir-measures name of the score to report: the one asked for, else FollowIR's standard
    score for the data (nDCG@5 for Core17, MAP@1000 for Robust04, News21 and the rest)."""
    if not requested:
        return "nDCG@5" if "core17" in data_name.lower() else "AP@1000"
    base, at, cutoff = requested.partition("@")
    name = MEASURE_NAMES.get(base.lower(), base) + (at + cutoff)
    scoring.measure(name)  # raises ValueError naming what it cannot parse
    return name


@dataclass(frozen=True)
class FollowIRResult:
    summary: dict[str, Any]
    run_og: Run
    run_changed: Run
    changed: dict[str, list[str]]  # per query, relevant under the original instruction and not under the changed one


async def evaluate(evaluation: Evaluation, data: FollowIRData, *, measure: str, k: int = 1000, rerank: int = 0,
                   max_reasoning_tokens: int | None = None) -> FollowIRResult:
    og = {qid: Query(text, instruction) for qid, (text, instruction, _) in data.queries.items()}
    changed = {qid: Query(text, instruction) for qid, (text, _, instruction) in data.queries.items()}
    judge_lists = bool(rerank and data.top_ranked)
    results: dict[str, dict[str, QueryResult]] = {}
    for name, queries in (("original", og), ("changed", changed)):
        if judge_lists:
            results[name] = await evaluation.judge_lists(f"judging, {name} instructions", queries, data.top_ranked,
                                                         top_n=rerank, max_reasoning_tokens=max_reasoning_tokens)
        else:
            results[name] = await evaluation.search(f"searching, {name} instructions", queries, k=k, rerank=rerank,
                                                    max_reasoning_tokens=max_reasoning_tokens)
    run_og, run_changed = scoring.run_of(results["original"]), scoring.run_of(results["changed"])
    moved = changed_documents(data.og_qrels, data.changed_qrels)
    pmrr: PMRR = p_mrr(run_og, run_changed, moved)
    summary: dict[str, Any] = {
        "suite": "followir",
        "data": data.name,
        "mode": "judge top-ranked lists" if judge_lists else ("search + rerank" if rerank else "search"),
        "measure": measure,
        "p-MRR": round(pmrr.value, 5),
        "original": scoring.score(measure, data.og_qrels, run_og),
        "changed": scoring.score(measure, data.changed_qrels, run_changed),
        "queries": len(data.queries),
        "pmrr_queries": len(pmrr.per_query),
        "pmrr_documents": len(pmrr.moves),
        "skipped_queries": pmrr.skipped_queries,
        "docs": len(data.corpus),
        "k": None if judge_lists else k,
        "rerank": rerank,
        "model": evaluation.fingerprint,
        "index_seconds": round(evaluation.index_seconds, 2),
        **evaluation.provenance(),
        "latency": {name: scoring.latency(runs) for name, runs in results.items()},
        "latency_samples_ms": {name: scoring.latency_samples(runs) for name, runs in results.items()},
        "per_query": {
            "p-MRR": {qid: round(value, 5) for qid, value in pmrr.per_query.items()},
            f"{measure} original": scoring.per_query(measure, data.og_qrels, run_og),
            f"{measure} changed": scoring.per_query(measure, data.changed_qrels, run_changed),
        },
    }
    if rerank:
        summary["verdicts"] = {name: scoring.verdict_summary(runs) for name, runs in results.items()}
    return FollowIRResult(summary, run_og, run_changed, moved)


# ---------------------------------------------------------------------------------------------
# An instruction-following set derived from a BEIR data set by a stated, checkable rule
# ---------------------------------------------------------------------------------------------

ORIGINAL_INSTRUCTION = "A relevant document gives evidence that supports or refutes the claim."
EXCLUSION = 'Documents that mention "{term}" are not relevant.'
_WORD = re.compile(r"[a-z]+")
MIN_TERM_LETTERS = 5


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def exclusion_term(claim: str, relevant_title: str, document_frequency: Counter[str]) -> str | None:
    """The rule's term for one query: among the words (letters only, at least MIN_TERM_LETTERS, lower-cased)
    of the first relevant document's title that the claim does not contain, the rarest in the corpus
    (fewest documents), ties by alphabetical order; None when there is no such word."""
    candidates = sorted(word for word in _words(relevant_title) - _words(claim) if len(word) >= MIN_TERM_LETTERS)
    return min(candidates, key=lambda word: (document_frequency[word], word), default=None)


def derive_exclusion_set(data: BeirData, out: Path) -> dict[str, Any]:
    """Writes a FollowIR-format folder built from a BEIR data set (see docs/evaluation.md for the rule).

    For each judged query, the original instruction asks for evidence about the claim; the changed one
    adds 'Documents that mention "TERM" are not relevant.' with TERM from `exclusion_term`. The
    changed qrels keep the original judgements except that every relevant document whose title or
    text contains TERM as a whole word (case-insensitive) becomes non-relevant (score 0)."""
    words = {doc_id: _words(f"{title} {text}") for doc_id, (title, text) in data.corpus.items()}
    document_frequency: Counter[str] = Counter(word for doc_words in words.values() for word in doc_words)
    queries, og_rows, changed_rows = [], [], []
    skipped = 0
    for qid, claim in data.queries.items():
        relevant = sorted(doc_id for doc_id, score in data.qrels[qid].items() if score > 0 and doc_id in data.corpus)
        term = exclusion_term(claim, data.corpus[relevant[0]][0], document_frequency) if relevant else None
        if term is None:
            skipped += 1
            continue
        queries.append({"_id": qid, "text": claim, "instruction_og": ORIGINAL_INSTRUCTION,
                        "instruction_changed": f"{ORIGINAL_INSTRUCTION} {EXCLUSION.format(term=term)}", "term": term})
        for doc_id, score in sorted(data.qrels[qid].items()):
            og_rows.append((qid, doc_id, score))
            changed_rows.append((qid, doc_id, 0 if term in words.get(doc_id, set()) else score))
    out.mkdir(parents=True, exist_ok=True)
    # mtime 0: the same input gives the same bytes, so the set (and the cache key of its runs) is reproducible.
    with gzip.GzipFile(out / "corpus.jsonl.gz", "wb", mtime=0) as packed, io.TextIOWrapper(packed, encoding="utf-8") as corpus:
        for doc_id, (title, text) in data.corpus.items():
            corpus.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    (out / "queries.jsonl").write_text("".join(json.dumps(row) + "\n" for row in queries), encoding="utf-8")
    for folder, rows in (("qrels_og", og_rows), ("qrels_changed", changed_rows)):
        (out / folder).mkdir(exist_ok=True)
        (out / folder / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in rows), encoding="utf-8")
    made_irrelevant = sum(1 for (_, _, before), (_, _, after) in zip(og_rows, changed_rows) if before > 0 and after <= 0)
    return {"queries": len(queries), "skipped_queries": skipped, "made_non_relevant": made_irrelevant,
            "relevant_before": sum(1 for *_, score in og_rows if score > 0), "out": str(out)}

"""BEIR evaluation through the public gRPC API: index the corpus, search every judged query, score;
with --rerank N, what the judge's reordering of the top N changes, at what cost.

Documents go in as title + text (the server formats them as the model was trained, which for
plain models is MTEB's `title + " " + text`); metrics come from ir-measures.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from irgate.eval import scoring
from irgate.eval.runner import Evaluation, QueryResult
from irgate.jsonl import CORPUS_FIELDS, CORPUS_LINE, read_jsonl
from irgate_client import Query

MEASURES = {"ndcg@10": "nDCG@10", "recall@100": "R@100"}
# The fields every query line must hold, and a line as it should be (irgate.jsonl has the corpus's).
QUERY_FIELDS, QUERY_LINE = ("_id", "text"), '{"_id": "q1", "text": "..."}'


@dataclass(frozen=True)
class BeirData:
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]  # only queries that have judgements
    qrels: dict[str, dict[str, int]]
    files: tuple[Path, ...]  # what was read, for the cache key


def open_text(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def find_data_file(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has neither {name} nor {name}.gz (BEIR layout expected)")


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """A BEIR qrels TSV: `query-id corpus-id score` rows after a header line (kept when it is missing:
    a first line whose score is a number is a judgement)."""
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as rows:
        for number, row in enumerate(rows, start=1):
            if not row.strip():
                continue
            fields = row.rstrip("\n").split("\t")
            if len(fields) != 3:
                raise ValueError(f"{path}:{number}: expected 3 tab-separated columns (query-id corpus-id score)")
            query_id, doc_id, score = fields
            try:
                value = int(float(score))
            except ValueError:
                if number == 1:
                    continue  # the header
                raise ValueError(f"{path}:{number}: score {score!r} is not a number") from None
            qrels.setdefault(query_id, {})[doc_id] = value
    return qrels


def read_corpus(path: Path) -> dict[str, tuple[str, str]]:
    # Real corpora hold documents with an empty (or missing) title and text: BEIR and MTEB embed them as "".
    return {str(row["_id"]): (row.get("title") or "", row.get("text") or "")
            for row in read_jsonl(path, CORPUS_FIELDS, CORPUS_LINE)}


def load_beir(folder: Path, split: str = "test") -> BeirData:
    qrels_path = find_data_file(folder / "qrels", f"{split}.tsv")
    queries_path, corpus_path = find_data_file(folder, "queries.jsonl"), find_data_file(folder, "corpus.jsonl")
    qrels = read_qrels(qrels_path)
    queries = {str(row["_id"]): row["text"] for row in read_jsonl(queries_path, QUERY_FIELDS, QUERY_LINE)
               if str(row["_id"]) in qrels}
    return BeirData(corpus=read_corpus(corpus_path), queries=queries, qrels={q: qrels[q] for q in queries},
                    files=(corpus_path, queries_path, qrels_path))


async def evaluate(evaluation: Evaluation, data: BeirData, *, instruction: str = "", k: int = 100, rerank: int = 0,
                   budgets: Sequence[int | None] = (None,), mode: str = "dense") -> dict[str, Any]:
    """nDCG@10 and Recall@100 of the search `mode` (dense, lexical or hybrid); with rerank, one judged
    run of that mode's candidates per reasoning budget (None: the server's cap) and what it changed."""
    queries = {qid: Query(text, instruction) for qid, text in data.queries.items()}
    started = time.perf_counter()
    dense = await evaluation.search("searching", queries, k=k, mode=mode)
    search_seconds = time.perf_counter() - started
    dense_run = scoring.run_of(dense)
    result: dict[str, Any] = {
        "suite": "beir",
        "mode": mode,
        **{name: scoring.score(measure, data.qrels, dense_run) for name, measure in MEASURES.items()},
        "queries": len(data.queries),
        "docs": len(data.corpus),
        "empty_docs": sum(1 for title, text in data.corpus.values() if not (title.strip() or text.strip())),
        "index_seconds": round(evaluation.index_seconds, 2),
        "search_seconds": round(search_seconds, 2),
        "instruction": instruction,
        "rerank": rerank,
        "model": evaluation.fingerprint,
        "latency": {"search": scoring.latency(dense)},
        "latency_samples_ms": scoring.latency_samples(dense),
        "per_query": {"ndcg@10": scoring.per_query("nDCG@10", data.qrels, dense_run)},
    }
    if rerank:
        result["reranking"] = [await _rerank(evaluation, data, queries, dense, result["ndcg@10"], k=k, rerank=rerank,
                                             budget=budget, mode=mode) for budget in budgets]
    return result | evaluation.provenance()


async def _rerank(evaluation: Evaluation, data: BeirData, queries: dict[str, Query], dense: dict[str, QueryResult],
                  before: float, *, k: int, rerank: int, budget: int | None, mode: str) -> dict[str, Any]:
    """One judged run: nDCG@10 before and after, the verdicts by ending, and the judge's time per query
    (judged search minus dense search of the same query, with queries in flight together)."""
    label = f"judging the top {rerank}, " + ("the server's reasoning cap" if budget is None else f"budget {budget}")
    judged = await evaluation.search(label, queries, k=k, rerank=rerank, max_reasoning_tokens=budget, mode=mode)
    judged_run = scoring.run_of(judged)
    after = scoring.score("nDCG@10", data.qrels, judged_run)
    judge_seconds = [max(judged[qid].seconds - dense[qid].seconds, 0.0) for qid in queries]
    summary = scoring.verdict_summary(judged)
    return {
        "max_reasoning_tokens": budget,
        "reasoning_budget": max(summary["reasoning_budgets"], default=budget or 0),
        "ndcg@10_before": before,
        "ndcg@10_after": after,
        "ndcg@10_change": round(after - before, 5),
        **summary,
        "judge_seconds_per_query": round(sum(judge_seconds) / len(judge_seconds), 3),
        "latency": scoring.latency(judged),
        "latency_samples_ms": scoring.latency_samples(judged),
        "per_query": {"ndcg@10": scoring.per_query("nDCG@10", data.qrels, judged_run)},
    }

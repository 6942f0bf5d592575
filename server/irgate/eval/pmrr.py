"""FollowIR's p-MRR: did the ranking move the documents an instruction change made non-relevant down?

For every document relevant under the original instruction and not under the changed one, with
1-based ranks R_og (original run) and R_new (changed run):

    R_og >= R_new (moved up or stayed):  (1/R_og) / (1/R_new) - 1     in (-1, 0]
    R_og <  R_new (moved down):          1 - (1/R_new) / (1/R_og)     in (0, 1)

averaged per query, then over queries; -1..1 (papers print it x100). Ranks come from scores,
descending, ties broken by document id ascending; a document absent from a run gets rank
len(run) + 1 for its query. As in mteb's FollowIR evaluator, a query missing from either run is
left out (and listed), not scored. Pure functions over plain dicts; file reading at the bottom.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

Run = dict[str, dict[str, float]]  # query id -> document id -> score

RUN_COLUMNS = "qid Q0 docid rank score tag"


def ranks(scores: Mapping[str, float]) -> dict[str, int]:
    """1-based rank of every document of one query: score descending, then document id ascending."""
    order = sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))
    return {doc_id: rank for rank, doc_id in enumerate(order, start=1)}


def rank_change_score(og_rank: int, new_rank: int) -> float:
    """p-MRR of one document: negative when it moved up (or stayed), positive when it moved down."""
    if og_rank >= new_rank:
        return (1 / og_rank) / (1 / new_rank) - 1
    return 1 - (1 / new_rank) / (1 / og_rank)


@dataclass(frozen=True)
class DocumentMove:
    query_id: str
    doc_id: str
    og_rank: int
    new_rank: int
    score: float


@dataclass(frozen=True)
class PMRR:
    value: float  # mean over queries of the per-query mean
    per_query: dict[str, float]
    moves: list[DocumentMove]
    skipped_queries: list[str]  # in the changed qrels but missing from a run

    def as_dict(self) -> dict[str, object]:
        return {
            "p-MRR": self.value,
            "queries": len(self.per_query),
            "documents": len(self.moves),
            "per_query": self.per_query,
            "skipped_queries": self.skipped_queries,
        }


def p_mrr(run_og: Mapping[str, Mapping[str, float]], run_changed: Mapping[str, Mapping[str, float]],
          changed: Mapping[str, Iterable[str]]) -> PMRR:
    """p-MRR of two runs, given per query the documents the changed instruction made non-relevant."""
    moves: list[DocumentMove] = []
    per_query: dict[str, float] = {}
    skipped: list[str] = []
    for query_id in sorted(changed):
        doc_ids = sorted(set(changed[query_id]))
        if not doc_ids:
            continue
        if query_id not in run_og or query_id not in run_changed:
            skipped.append(query_id)
            continue
        og_ranks, new_ranks = ranks(run_og[query_id]), ranks(run_changed[query_id])
        query_moves = [
            DocumentMove(query_id, doc_id, og_rank, new_rank, rank_change_score(og_rank, new_rank))
            for doc_id in doc_ids
            for og_rank, new_rank in [(og_ranks.get(doc_id, len(og_ranks) + 1), new_ranks.get(doc_id, len(new_ranks) + 1))]
        ]
        moves.extend(query_moves)
        per_query[query_id] = sum(move.score for move in query_moves) / len(query_moves)
    if not per_query:
        raise ValueError("no query of the changed qrels is in both runs: p-MRR is undefined "
                         "(check that the runs and the qrels use the same query ids)")
    return PMRR(sum(per_query.values()) / len(per_query), per_query, moves, skipped)


def changed_documents(og_qrels: Mapping[str, Mapping[str, int]],
                      changed_qrels: Mapping[str, Mapping[str, int]]) -> dict[str, list[str]]:
    """Per query, the documents relevant (score > 0) under the original qrels and not under the changed ones."""
    return {
        query_id: sorted(doc_id for doc_id, score in docs.items()
                         if score > 0 and changed_qrels.get(query_id, {}).get(doc_id, 0) <= 0)
        for query_id, docs in og_qrels.items()
    }


# ---------------------------------------------------------------------------------------------
# TREC run files
# ---------------------------------------------------------------------------------------------


def read_run(path: Path) -> Run:
    """A TREC run file: `qid Q0 docid rank score tag` per line; the rank column is not used (ranks
    come from the scores), a document listed twice for one query is an error."""
    run: Run = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 6:
                raise ValueError(f"{path}:{number}: expected 6 columns ({RUN_COLUMNS}), found {len(fields)}")
            query_id, _, doc_id, _, score_text, _ = fields
            try:
                score = float(score_text)
            except ValueError:
                raise ValueError(f"{path}:{number}: score {score_text!r} is not a number ({RUN_COLUMNS})") from None
            docs = run.setdefault(query_id, {})
            if doc_id in docs:
                raise ValueError(f"{path}:{number}: document {doc_id} is listed twice for query {query_id}")
            docs[doc_id] = score
    return run


def write_run(path: Path, run: Mapping[str, Mapping[str, float]], tag: str = "irgate") -> None:
    """Writes a TREC run, each query's documents in rank order (rank from 1), scores exactly (repr)."""
    with path.open("w", encoding="utf-8") as out:
        for query_id in sorted(run):
            for doc_id, rank in sorted(ranks(run[query_id]).items(), key=lambda item: item[1]):
                out.write(f"{query_id} Q0 {doc_id} {rank} {float(run[query_id][doc_id])!r} {tag}\n")

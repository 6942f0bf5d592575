"""Scores of rankings (ir-measures, the trec_eval definitions) and summaries of the numbers behind them."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import ir_measures

from irgate.eval.pmrr import Run
from irgate.eval.runner import QueryResult

Qrels = Mapping[str, Mapping[str, int]]


def run_of(results: Mapping[str, QueryResult]) -> Run:
    """Each query's ranking as a run scored by position: judged and dense scores are on different
    scales, and ir-measures (and p-MRR) order by score."""
    return {qid: {doc_id: float(len(result.ids) - rank) for rank, doc_id in enumerate(result.ids)}
            for qid, result in results.items()}


def measure(name: str) -> Any:
    """An ir-measures measure from its name ("nDCG@10", "AP@1000", "R@100")."""
    return ir_measures.parse_measure(name)


def _inputs(qrels: Qrels, run: Run) -> tuple[list[Any], list[Any]]:
    judged = [ir_measures.Qrel(q, d, s) for q, docs in qrels.items() for d, s in docs.items()]
    scored = [ir_measures.ScoredDoc(q, d, s) for q, docs in run.items() for d, s in docs.items()]
    return judged, scored


def score(name: str, qrels: Qrels, run: Run) -> float:
    judged, scored = _inputs(qrels, run)
    return round(float(ir_measures.calc_aggregate([measure(name)], judged, scored)[measure(name)]), 5)


def per_query(name: str, qrels: Qrels, run: Run) -> dict[str, float]:
    judged, scored = _inputs(qrels, run)
    values = {row.query_id: round(float(row.value), 5) for row in ir_measures.iter_calc([measure(name)], judged, scored)}
    return {qid: values.get(qid, 0.0) for qid in qrels if qid in run}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n - 1) and spread (max - min) of a handful of scores."""
    return {
        "mean": round(statistics.fmean(values), 5),
        "std": round(statistics.stdev(values), 5) if len(values) > 1 else 0.0,
        "spread": round(max(values) - min(values), 5),
        "min": round(min(values), 5),
        "max": round(max(values), 5),
    }


def latency(results: Mapping[str, QueryResult]) -> dict[str, float]:
    """Wall time per query call in milliseconds: mean, median, 95th percentile and maximum."""
    values = sorted(result.seconds * 1000 for result in results.values())
    if not values:
        return {}
    return {
        "mean_ms": round(statistics.fmean(values), 2),
        "p50_ms": round(statistics.median(values), 2),
        "p95_ms": round(values[min(len(values) - 1, round(0.95 * (len(values) - 1)))], 2),
        "max_ms": round(values[-1], 2),
    }


def latency_samples(results: Mapping[str, QueryResult]) -> list[float]:
    """Every query call's wall time in milliseconds, in query order (the raw numbers behind `latency`)."""
    return [round(result.seconds * 1000, 3) for result in results.values()]


def verdict_summary(results: Mapping[str, QueryResult]) -> dict[str, Any]:
    """The judge's verdicts of a run: how they ended, reasoning spent, passages cut, budgets applied."""
    verdicts = [verdict for result in results.values() for verdict in result.verdicts.values()]
    endings: dict[str, int] = {"answered": 0, "forced": 0, "forced_eos": 0}
    for verdict in verdicts:
        endings[verdict.ended] = endings.get(verdict.ended, 0) + 1
    return {
        "verdicts": len(verdicts),
        "ended": endings,
        "reasoning_tokens_mean": round(statistics.fmean(v.reasoning_tokens for v in verdicts), 2) if verdicts else 0.0,
        "truncated_passages": sum(1 for v in verdicts if v.truncated),
        "reasoning_budgets": sorted({v.reasoning_budget for v in verdicts}),
    }

"""Prompt sensitivity, as the Promptriever paper measures it: the same queries with no prompt and
with each of ten generic prompts appended as the instruction; nDCG@10 per prompt, and how much it
moves (mean, sample standard deviation and spread over the ten prompts).

The corpus is indexed once; only the queries run again for each prompt.
"""

from __future__ import annotations

from typing import Any

from irgate.eval import scoring
from irgate.eval.beir import BeirData
from irgate.eval.runner import Evaluation
from irgate_client import Query

# The ten generic prompts of the Promptriever paper (Weller et al. 2024, arXiv 2409.11136, Table 11) in the
# paper's wording, its spelling ("critera") included; the punctuation is as printed there, not checked
# against the authors' own prompt file.
GENERIC_PROMPTS = (
    "Be careful when assigning relevance as your job is on the line and I will give you a 1000 dollar tip.",
    "Think carefully about these conditions when determining relevance.",
    "A relevant document should also provide a clear and concise explanation, avoiding unnecessary complexity or "
    "ambiguity. When in doubt, prioritize documents that provide a clear, direct, and specific answer to the query.",
    "A document that meets these criteria is considered relevant, while a document that does not meet these criteria "
    "is considered non-relevant.",
    "A relevant document should focus solely on providing a clear and accurate answer to the query, without "
    "distracting or unnecessary information",
    "A document is relevant if it helps to answer the query. Surface relevant documents only.",
    "Relevant documents are those that are topically related, answer the given question, or otherwise provide insight "
    "on the input. Think step by step about whether a document is relevant for this question.",
    "Find relevant documents to the query. Use strict critera when evaluating relevance: a relevant document here "
    "should provide direct information to either fully answer the query, or provide useful information towards "
    "answering it. Avoid only topically relevant documents.",
    "When judging the relevance of a document, focus on the pragmatics of the query and consider irrelevant any "
    "documents for which the user would have used a different query.",
    "Think carefully about relevance",
)
K = 10  # nDCG@10 needs the top 10 only


async def evaluate(evaluation: Evaluation, data: BeirData) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    latencies: dict[str, list[float]] = {}
    for number, prompt in enumerate(("", *GENERIC_PROMPTS)):
        name = f"prompt {number}" if prompt else "no prompt"
        queries = {qid: Query(text, prompt) for qid, text in data.queries.items()}
        results = await evaluation.search(f"{name} ({number + 1}/{len(GENERIC_PROMPTS) + 1})", queries, k=K)
        run = scoring.run_of(results)
        runs.append({"name": name, "prompt": prompt, "ndcg@10": scoring.score("nDCG@10", data.qrels, run),
                     "latency": scoring.latency(results), "per_query": scoring.per_query("nDCG@10", data.qrels, run)})
        latencies[name] = scoring.latency_samples(results)
    baseline, prompted = runs[0], runs[1:]
    best = max(prompted, key=lambda run: run["ndcg@10"])
    return {
        "suite": "prompts",
        "queries": len(data.queries),
        "docs": len(data.corpus),
        "model": evaluation.fingerprint,
        "no_prompt": baseline["ndcg@10"],
        "prompts": scoring.spread([run["ndcg@10"] for run in prompted]),
        "best_prompt": best["name"],
        "best_minus_no_prompt": round(best["ndcg@10"] - baseline["ndcg@10"], 5),
        "index_seconds": round(evaluation.index_seconds, 2),
        **evaluation.provenance(),
        "runs": runs,
        "latency_samples_ms": latencies,
    }

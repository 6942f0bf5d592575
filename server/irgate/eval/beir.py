"""BEIR evaluation through the public gRPC API: index the corpus, search every judged query, score.

Documents go in as title + text (the server formats them as the model was trained, which for
plain models is MTEB's `title + " " + text`); metrics come from ir-measures.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import ir_measures
from ir_measures import R, nDCG
from rich.progress import Progress

from irgate_client import AsyncClient, Document

MEASURES = {"ndcg@10": nDCG @ 10, "recall@100": R @ 100}
SEARCH_CONCURRENCY = 16
UPSERT_BATCH = 256


@dataclass(frozen=True)
class BeirData:
    corpus: dict[str, tuple[str, str]]  # id -> (title, text)
    queries: dict[str, str]  # only queries that have judgements
    qrels: dict[str, dict[str, int]]


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")


def _find(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{folder} has neither {name} nor {name}.gz (BEIR layout expected)")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with _open(path) as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


def load_beir(folder: Path, split: str = "test") -> BeirData:
    qrels: dict[str, dict[str, int]] = {}
    with _open(_find(folder / "qrels", f"{split}.tsv")) as rows:
        next(rows)  # header: query-id corpus-id score
        for row in rows:
            query_id, doc_id, score = row.rstrip("\n").split("\t")
            qrels.setdefault(query_id, {})[doc_id] = int(score)
    queries = {row["_id"]: row["text"] for row in read_jsonl(_find(folder, "queries.jsonl")) if row["_id"] in qrels}
    # Real corpora hold documents with an empty (or missing) title and text: BEIR and MTEB embed them as "".
    corpus = {row["_id"]: (row.get("title") or "", row.get("text") or "") for row in read_jsonl(_find(folder, "corpus.jsonl"))}
    return BeirData(corpus=corpus, queries=queries, qrels={q: qrels[q] for q in queries})


async def evaluate(
    client: AsyncClient,
    data: BeirData,
    *,
    instruction: str = "",
    k: int = 100,
    rerank: int = 0,
    max_reasoning_tokens: int = 64,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Indexes the corpus into a temporary collection, searches, and returns the metrics."""
    info = await client.info()
    if info.max_k < k:
        raise ValueError(f"the server allows k up to {info.max_k}; this evaluation needs {k} (raise --max-k)")
    batch_size = min(UPSERT_BATCH, info.max_batch_size)
    collection = f"beir-{uuid.uuid4().hex[:12]}"
    await client.create_collection(collection)
    try:
        started = time.perf_counter()
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("indexing", total=len(data.corpus))
            items = list(data.corpus.items())
            for offset in range(0, len(items), batch_size):
                batch = [Document(id=doc_id, title=title, text=text) for doc_id, (title, text) in items[offset:offset + batch_size]]
                await client.upsert(collection, batch, timeout=600)
                progress.advance(task, len(batch))
        index_seconds = time.perf_counter() - started

        started = time.perf_counter()
        limit = asyncio.Semaphore(SEARCH_CONCURRENCY)

        async def search(query_id: str, text: str) -> list[ir_measures.ScoredDoc]:
            async with limit:
                hits = await client.search(collection, text, instruction=instruction, k=k, rerank=rerank,
                                           max_reasoning_tokens=max_reasoning_tokens, timeout=3600)
            # Score by rank: with rerank, judge scores of the top hits and dense scores of the rest
            # are on different scales, and ir-measures would re-sort by them.
            return [ir_measures.ScoredDoc(query_id, hit.id, float(len(hits) - rank)) for rank, hit in enumerate(hits)]

        runs = await asyncio.gather(*(search(query_id, text) for query_id, text in data.queries.items()))
        search_seconds = time.perf_counter() - started
    finally:
        await client.delete_collection(collection)

    qrels = [ir_measures.Qrel(q, d, s) for q, docs in data.qrels.items() for d, s in docs.items()]
    scores = ir_measures.calc_aggregate(list(MEASURES.values()), qrels, [doc for run in runs for doc in run])
    return {
        **{name: round(float(scores[measure]), 5) for name, measure in MEASURES.items()},
        "queries": len(data.queries),
        "docs": len(data.corpus),
        "empty_docs": sum(1 for title, text in data.corpus.values() if not (title.strip() or text.strip())),
        "index_seconds": round(index_seconds, 2),
        "search_seconds": round(search_seconds, 2),
        "instruction": instruction,
        "rerank": rerank,
    }

"""The two index engines side by side, through the interface the gateway calls (irgate.core.index):
usearch + SQLite in this process against Milvus (a `milvus-lite server` process on loopback).

Same documents, vectors, queries and settings on both: unit vectors of a low intrinsic dimension, as
embeddings have (no model runs, so the index alone is measured), ~1.2 KB of text per document, upserts of 256 documents as the gateway
sends them, then one query per call as a Search RPC makes it, unfiltered and with a metadata filter
matching 10% of the documents. Reports ingest documents/s, then search latency p50/p99 in ms and
recall@10 against exact search twice: right after the writes (fresh_*) and after the collection's
snapshot (Milvus: segments sealed and indexed; usearch: index saved).

    .venv/bin/python benchmarks/index_engines.py --documents 20000 --queries 300 --json
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import time
from pathlib import Path

import numpy as np

from irgate.index.milvus import MilvusIndex
from irgate.index.milvus_lite import MilvusLiteServer
from irgate.domain.documents import Document
from irgate.index.store import CollectionStore

BATCH = 256
MODEL = "bench-embedder"


def embedding_like_unit_vectors(count: int, dimension: int, seed: int) -> np.ndarray:
    """Points of a 16-dimensional space mapped into `dimension` dimensions, plus a little noise: like
    real embeddings, they have a low intrinsic dimension, so nearest neighbours are well defined
    (i.i.d. noise in 384 dimensions puts every point nearly equally far from every other)."""
    rng = np.random.default_rng(seed)
    projection = np.random.default_rng(0).standard_normal((16, dimension))
    points = rng.standard_normal((count, 16)) @ projection + 0.3 * rng.standard_normal((count, dimension))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def percentile_ms(seconds: list[float], percent: float) -> float:
    return round(float(np.percentile(seconds, percent)) * 1000, 2)


def measure(index, corpus: np.ndarray, queries: np.ndarray, exact: np.ndarray, fresh_queries: int) -> dict[str, float]:
    index.create("bench", precision="f16")
    collection = index.get("bench")
    text = "lorem ipsum dolor sit amet " * 45
    start = time.perf_counter()
    for first in range(0, len(corpus), BATCH):
        documents = [
            Document(id=f"doc{i}", title=f"title {i}", text=text, metadata={"lang": "de" if i % 10 == 0 else "en"})
            for i in range(first, min(first + BATCH, len(corpus)))
        ]
        collection.upsert(documents, corpus[first : first + BATCH])
    ingest_s = time.perf_counter() - start
    report = {"ingest_docs_per_s": round(len(corpus) / ingest_s, 1)}
    report |= searches(collection, queries[:fresh_queries], exact, "fresh_")
    # Sealed: Milvus's flush with its index built, usearch's snapshot. Until then Milvus searches the
    # fresh writes by brute force; a Milvus server seals segments by itself as they fill up or age.
    collection.snapshot()
    report |= searches(collection, queries, exact, "")
    index.delete("bench")
    return report


def searches(collection, queries: np.ndarray, exact: np.ndarray, prefix: str) -> dict[str, float]:
    for query in queries[:10]:  # warm-up: caches, connections, loaded segments
        collection.search(query, 10)
    plain, filtered, found = [], [], 0
    for query, truth in zip(queries, exact):
        began = time.perf_counter()
        hits = collection.search(query, 10)
        plain.append(time.perf_counter() - began)
        found += len({hit.id for hit in hits} & {f"doc{i}" for i in truth})
        began = time.perf_counter()
        collection.search(query, 10, {"lang": "de"})
        filtered.append(time.perf_counter() - began)
    return {
        f"{prefix}search_p50_ms": percentile_ms(plain, 50),
        f"{prefix}search_p99_ms": percentile_ms(plain, 99),
        f"{prefix}filtered_search_p50_ms": percentile_ms(filtered, 50),
        f"{prefix}filtered_search_p99_ms": percentile_ms(filtered, 99),
        f"{prefix}recall_at_10": round(found / (10 * len(queries)), 4),
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=20000)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--fresh-queries", type=int, default=30, help="queries right after the writes (slow on milvus-lite)")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args()
    corpus = embedding_like_unit_vectors(options.documents, options.dimension, seed=1)
    queries = embedding_like_unit_vectors(options.queries, options.dimension, seed=2)
    exact = np.argsort(-(queries @ corpus.T), axis=1)[:, :10]
    report: dict[str, object] = {"documents": options.documents, "queries": options.queries, "dimension": options.dimension}
    with tempfile.TemporaryDirectory() as folder:
        local = CollectionStore(Path(folder) / "collections", options.dimension, MODEL)
        try:
            report["usearch_in_process"] = measure(local, corpus, queries, exact, options.fresh_queries)
        finally:
            local.close()
        with MilvusLiteServer(Path(folder) / "milvus", free_port()) as server:
            milvus = MilvusIndex(server.address, options.dimension, MODEL)
            try:
                report["milvus_lite_loopback"] = measure(milvus, corpus, queries, exact, options.fresh_queries)
            finally:
                milvus.close()
    local_result, milvus_result = report["usearch_in_process"], report["milvus_lite_loopback"]
    report["milvus_over_usearch_search_p50"] = round(milvus_result["search_p50_ms"] / local_result["search_p50_ms"], 1)  # type: ignore[index]
    report["usearch_over_milvus_ingest"] = round(local_result["ingest_docs_per_s"] / milvus_result["ingest_docs_per_s"], 2)  # type: ignore[index]
    print(json.dumps(report, indent=None if options.json else 2))


if __name__ == "__main__":
    main()

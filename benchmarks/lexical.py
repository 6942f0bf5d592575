"""Lexical (BM25, SQLite FTS5) and hybrid search against dense search in the local index engine, on the
documents of a BEIR data set (SciFact: 5,183 abstracts), through the interface the gateway calls.

No model runs: document and query vectors are embedding-like unit vectors (index_engines.py's), so
the index alone is measured; a dense or hybrid Search RPC adds the query's embedding on top. The
queries are the data set's own. Reports:
  - ingest documents/s with the lexical index and without it (lexical_index: no FTS5 table made
    and the collection's lexical writes skipped), upserts of 256 documents as the gateway sends them; the
    two alternate for --rounds rounds and each reports its median, so load from other processes
    falls on both; with the process's CPU time per document, which that load changes less (the
    same comparison through the Upsert RPC, embedding included: lexical_upsert.py);
  - searches/s and latency p50/p99 in ms per mode (dense, lexical, hybrid with depths 100 + 100 as
    the gateway fuses them) at 1 and 16 concurrent clients (threads).

    .venv/bin/python benchmarks/lexical.py --data PATH/TO/scifact --json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from index_engines import embedding_like_unit_vectors, percentile_ms

from irgate.core.search import HYBRID_DEPTH, fuse
from irgate.eval.beir import load_beir
from irgate.index.collection import Collection
from irgate.domain.documents import Document

BATCH = 256
DIMENSION = 384
K = 10
# The collection's steps that build and write its FTS5 table (lexical_index switches them off).
_LEXICAL_STEPS = ("_ensure_lexical_index", "_index_lexically", "_unindex_lexically")


@contextmanager
def lexical_index(enabled: bool) -> Iterator[None]:
    """With enabled False, collections opened inside get no FTS5 table and write no lexical rows:
    the side 'without the lexical index', the same for the index alone and through the server."""
    if enabled:
        yield
        return
    saved = {name: getattr(Collection, name) for name in _LEXICAL_STEPS}
    for name in _LEXICAL_STEPS:
        setattr(Collection, name, lambda *_: None)
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(Collection, name, method)


def ingest(
    folder: Path, documents: list[Document], vectors: np.ndarray, lexical: bool
) -> tuple[Collection, float, float]:
    """The collection, documents/s and CPU microseconds per document."""
    with lexical_index(lexical):
        collection = Collection.create(folder, DIMENSION, "bench-embedder")
        started, cpu = time.perf_counter(), time.process_time()
        for first in range(0, len(documents), BATCH):
            collection.upsert(documents[first : first + BATCH], vectors[first : first + BATCH])
        return (collection, len(documents) / (time.perf_counter() - started),
                (time.process_time() - cpu) * 1e6 / len(documents))


def run(clients: int, queries: list[int], call: Callable[[int], object]) -> dict[str, float]:
    def timed(query: int) -> float:
        started = time.perf_counter()
        call(query)
        return time.perf_counter() - started

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        seconds = list(pool.map(timed, queries))
    wall = time.perf_counter() - started
    return {"searches_per_s": round(len(queries) / wall, 1), "p50_ms": percentile_ms(seconds, 50),
            "p99_ms": percentile_ms(seconds, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds per side (default 3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    data = load_beir(args.data)
    documents = [Document(id=doc_id, title=title, text=text) for doc_id, (title, text) in data.corpus.items()]
    vectors = embedding_like_unit_vectors(len(documents), DIMENSION, seed=1)
    texts = list(data.queries.values())
    query_vectors = embedding_like_unit_vectors(len(texts), DIMENSION, seed=2)
    report: dict[str, object] = {"documents": len(documents), "queries": len(texts), "k": K}
    with tempfile.TemporaryDirectory() as scratch:
        rates: dict[bool, list[float]] = {False: [], True: []}
        cpu: dict[bool, list[float]] = {False: [], True: []}
        for round_ in range(args.rounds):
            for lexical in (False, True):
                collection, rate, cpu_per_document = ingest(Path(scratch) / f"{lexical}-{round_}", documents, vectors, lexical)
                rates[lexical].append(rate)
                cpu[lexical].append(cpu_per_document)
                if not (lexical and round_ == args.rounds - 1):
                    collection.close(snapshot=False)
        rate_without, rate_with = (float(np.median(rates[lexical])) for lexical in (False, True))
        cpu_without, cpu_with = (float(np.median(cpu[lexical])) for lexical in (False, True))
        report["ingest_docs_per_s"] = {"without_lexical_index": round(rate_without, 1),
                                       "with_lexical_index": round(rate_with, 1),
                                       "slowdown_percent": round(100 * (1 - rate_with / rate_without), 1),
                                       "rounds": {"without": [round(rate, 1) for rate in rates[False]],
                                                  "with": [round(rate, 1) for rate in rates[True]]}}
        report["ingest_cpu_us_per_doc"] = {"without_lexical_index": round(cpu_without, 1),
                                           "with_lexical_index": round(cpu_with, 1),
                                           "more_cpu_percent": round(100 * (cpu_with / cpu_without - 1), 1)}
        modes: dict[str, Callable[[int], object]] = {
            "dense": lambda q: collection.search(query_vectors[q], K),
            "lexical": lambda q: collection.lexical_search(texts[q], K),
            "hybrid": lambda q: fuse(collection.search(query_vectors[q], HYBRID_DEPTH),
                                     collection.lexical_search(texts[q], HYBRID_DEPTH))[:K],
        }
        order = list(range(len(texts)))
        for function in modes.values():  # warm: the first calls load pages into SQLite's cache
            run(1, order[:20], function)
        report["search"] = {f"{mode}@{clients}": run(clients, order * 2, function)
                            for mode, function in modes.items() for clients in (1, 16)}
        collection.close()
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

"""Filtered search in the local engine (usearch + SQLite): latency and recall@10 of filters matching
10%, 1% and 0.05% of the documents, with the SQLite pushdown (the matches found by SQLite's JSON
functions are searched exactly once widening the index search would check more than an eighth of
the index) against widening alone (the index search grows 8x per round until k candidates match,
up to an exact search of everything), side by side in one run; no model runs.

    .venv/bin/python benchmarks/filters.py --documents 30000 --queries 50 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from index_engines import embedding_like_unit_vectors

from irgate.index import collection as local_collection
from irgate.domain.documents import Document
from irgate.index.store import CollectionStore

FILTERS = {"10%": ("tenth", 10), "1%": ("hundredth", 100), "0.05%": ("rare", 2000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=30_000)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    vectors = embedding_like_unit_vectors(args.documents, args.dimension, seed=1)
    queries = embedding_like_unit_vectors(args.queries, args.dimension, seed=2)
    with tempfile.TemporaryDirectory() as folder:
        store = CollectionStore(Path(folder) / "collections", dimension=args.dimension, model="bench-embedder")
        store.create("filtered")
        collection = store.get("filtered")
        documents = [Document(id=str(i), metadata={key: i % every == 7 % every for key, every in FILTERS.values()})
                     for i in range(args.documents)]
        for start in range(0, args.documents, 2000):
            collection.upsert(documents[start:start + 2000], vectors[start:start + 2000])
        collection.snapshot()
        report: dict[str, object] = {"documents": args.documents, "queries": args.queries}
        scan_limit = local_collection._FILTER_CANDIDATES
        for name, (key, every) in FILTERS.items():
            matching = np.arange(7 % every, args.documents, every)
            medians: dict[str, float] = {}
            for side, limit in (("pushdown", scan_limit), ("widening", 0)):
                local_collection._FILTER_CANDIDATES = limit  # 0: SQLite never finds few enough, so no scan
                times, recalls = [], []
                for query in queries:
                    started = time.perf_counter()
                    hits = collection.search(query, 10, {key: True})
                    times.append(time.perf_counter() - started)
                    truth = {str(i) for i in matching[np.argsort(-(vectors[matching] @ query))][:10]}
                    recalls.append(len(truth & {hit.id for hit in hits}) / len(truth))
                medians[side] = statistics.median(times)
                report[f"{name}_{side}_p50_ms"] = round(medians[side] * 1000, 2)
                report[f"{name}_{side}_recall@10"] = round(statistics.mean(recalls), 3)
            local_collection._FILTER_CANDIDATES = scan_limit
            report[f"{name}_widening_over_pushdown_p50"] = round(medians["widening"] / medians["pushdown"], 2)
        store.close()
    print(json.dumps(report) if args.json else "\n".join(f"{key}: {value}" for key, value in report.items()))


if __name__ == "__main__":
    main()

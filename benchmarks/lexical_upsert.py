"""The lexical index's share of ingest as a user sees it: documents/s of the Upsert RPC (the gateway
embedding each document's title and text with the served embedder, then writing it) with the
lexical index and without it, on the documents of a BEIR data set (SciFact).

A real gRPC server runs in this process (irgate.server.start, the local index engine, no judge) and
the SDK's AsyncClient streams the documents to it in upserts of 256, as lexical.py's index-alone
figure sends them. The side without the lexical index is switched off the same way as there
(lexical.lexical_index: collections opened inside get no FTS5 table and write no lexical rows);
the sides alternate for --rounds rounds, each on a fresh collection, and each reports its median,
with the process's CPU time per document (server, embedder and client together).

    .venv/bin/python benchmarks/lexical_upsert.py --data PATH/TO/scifact --embedder models/embedder --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from lexical import BATCH, lexical_index

from irgate.config import Settings
from irgate.eval.beir import load_beir
from irgate.server import start
from irgate_client import AsyncClient, Document


async def ingest(client: AsyncClient, name: str, documents: list[Document], lexical: bool) -> tuple[float, float]:
    """Documents/s and CPU microseconds per document of upserting `documents` into a new collection."""
    with lexical_index(lexical):
        await client.create_collection(name)
        started, cpu = time.perf_counter(), time.process_time()
        result = await client.upsert(name, documents, batch_size=BATCH)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    if result.upserted != len(documents):
        raise RuntimeError(f"{name}: the server upserted {result.upserted} of {len(documents)} documents")
    await client.delete_collection(name)  # frees its memory and keeps the page cache for the next round
    return len(documents) / wall, cpu * 1e6 / len(documents)


async def measure(args: argparse.Namespace, documents: list[Document]) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), embedder=f"onnx:{args.embedder}", judge="none",
                            port=0, http_port=0, metrics_port=0)
        app = await start(settings)
        try:
            async with AsyncClient(f"127.0.0.1:{app.port}", timeout=None) as client:
                # Warm: the embedder's first batches are slower (ONNX Runtime allocates its buffers).
                await ingest(client, "warm", documents[:BATCH], True)
                rates: dict[bool, list[float]] = {False: [], True: []}
                cpu: dict[bool, list[float]] = {False: [], True: []}
                for round_ in range(args.rounds):
                    for lexical in (False, True):
                        rate, cpu_per_document = await ingest(client, f"{'with' if lexical else 'without'}-{round_}",
                                                              documents, lexical)
                        rates[lexical].append(rate)
                        cpu[lexical].append(cpu_per_document)
        finally:
            await app.stop()
    rate_without, rate_with = (float(np.median(rates[lexical])) for lexical in (False, True))
    cpu_without, cpu_with = (float(np.median(cpu[lexical])) for lexical in (False, True))
    return {
        "documents": len(documents),
        "upsert_docs_per_s": {"without_lexical_index": round(rate_without, 2), "with_lexical_index": round(rate_with, 2),
                              "slowdown_percent": round(100 * (1 - rate_with / rate_without), 1),
                              "rounds": {"without": [round(rate, 2) for rate in rates[False]],
                                         "with": [round(rate, 2) for rate in rates[True]]}},
        "upsert_cpu_us_per_doc": {"without_lexical_index": round(cpu_without), "with_lexical_index": round(cpu_with),
                                  "more_cpu_percent": round(100 * (cpu_with / cpu_without - 1), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a BEIR folder (corpus.jsonl[.gz], queries.jsonl, qrels/)")
    parser.add_argument("--embedder", type=Path, default=Path("models/embedder"), help="a prepared embedder folder (irgate prepare)")
    parser.add_argument("--documents", type=int, default=1024, help="the corpus's first N documents per ingest (default 1024)")
    parser.add_argument("--rounds", type=int, default=3, help="ingest rounds per side (default 3)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    corpus = list(load_beir(args.data).corpus.items())[: args.documents]
    documents = [Document(id=doc_id, title=title, text=text) for doc_id, (title, text) in corpus]
    report = asyncio.run(measure(args, documents))
    print(json.dumps(report, indent=None if args.json else 2))


if __name__ == "__main__":
    main()

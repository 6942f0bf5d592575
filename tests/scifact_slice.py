"""A slice of BEIR SciFact that `make test` can afford: the first judged queries of the test split,
every document judged for them, and the corpus's first other documents as distractors. The whole
set (5,183 documents) is `make soak`'s."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from support import SHARED

SCIFACT = SHARED / "data" / "scifact"


def write_slice(out: Path, queries: int = 30, distractors: int = 170, source: Path = SCIFACT) -> Path:
    """Writes the slice as a BEIR folder under `out` and returns it."""
    judged: dict[str, list[str]] = {}
    lines = (source / "qrels" / "test.tsv").read_text().splitlines()
    for line in lines[1:]:
        query, document, _ = line.split("\t")
        if query in judged or len(judged) < queries:
            judged.setdefault(query, []).append(document)
    wanted = {document for documents in judged.values() for document in documents}
    kept: list[str] = []
    with gzip.open(source / "corpus.jsonl.gz", "rt", encoding="utf-8") as corpus:
        for line in corpus:
            document = json.loads(line)["_id"]
            if document in wanted:
                kept.append(line)
            elif distractors > 0:
                kept.append(line)
                distractors -= 1
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / "corpus.jsonl.gz", "wt", encoding="utf-8") as corpus:
        corpus.writelines(kept)
    with (source / "queries.jsonl").open(encoding="utf-8") as all_queries:
        (out / "queries.jsonl").write_text("".join(line for line in all_queries if json.loads(line)["_id"] in judged))
    (out / "qrels").mkdir(exist_ok=True)
    rows = [line for line in lines[1:] if line.split("\t")[0] in judged]
    (out / "qrels" / "test.tsv").write_text("\n".join([lines[0], *rows]) + "\n")
    return out

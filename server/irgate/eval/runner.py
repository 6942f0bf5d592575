"""One evaluation against a server, through the public gRPC API (the SDK), as a user's program would.

The corpus is indexed once, into a temporary collection, and only when some query still has to
run: every finished query is appended to a cache file whose name is a hash of the model, the
server, the data and the settings, so an interrupted evaluation resumes where it stopped and a
finished one reruns from the cache without indexing.

The server part is what Info reports (see server_identity): the index engine and its address,
the backends and the judge's caps, so that comparing engines, precisions or Triton against
in-process never compares a run with itself (the passage cap is one of the judge caps).

The model part of that hash is taken through the API too (a remote server's weights cannot be
read): the embedder's name, dimension, token limit and pooling, and the signs of its vectors for
fixed probe texts; with a judge, its name, reasoning cap and its answer on a probe pair.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from irgate.progress import ProgressReport
from irgate_client import AsyncClient, Document, Query, ServerInfo, Verdict

SEARCH_CONCURRENCY = 16
UPSERT_BATCH = 256
# Generous: a judged query on a small CPU can take minutes when many run at once.
CALL_TIMEOUT_S = 3600.0
PROBE_TEXTS = ("irgate evaluation probe.", "Aspirin lowers the risk of heart attacks in adults.",
               "Rain forms when water vapour condenses into droplets.")
PROBE_PAIR = ("does aspirin prevent heart attacks", "Aspirin lowers the risk of heart attacks in adults.")


@dataclass(frozen=True)
class JudgedHit:
    """What the judge said about one document (the reasoning text is not kept)."""

    score: float
    ended: str
    reasoning_tokens: int
    truncated: bool
    reasoning_budget: int


@dataclass(frozen=True)
class QueryResult:
    """One query's ranking, best first, with the judge's verdicts (by document id) and the call's wall time."""

    ids: list[str]
    seconds: float
    verdicts: dict[str, JudgedHit] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids, "seconds": self.seconds, "verdicts": {doc: asdict(v) for doc, v in self.verdicts.items()}}

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> QueryResult:
        return cls(list(row["ids"]), float(row["seconds"]),
                   {doc: JudgedHit(**verdict) for doc, verdict in row.get("verdicts", {}).items()})


# Info fields that bound how much the server takes at once, not what it answers; every other field
# (a new one too) is part of the cache key.
CAPACITY_FIELDS = frozenset({"max_batch_size", "max_concurrent_requests", "max_k", "max_judge_documents"})


def server_identity(info: ServerInfo) -> dict[str, Any]:
    """What the server reports that can change results: version, backends, index engine, judge caps."""
    return {name: value for name, value in asdict(info).items() if name not in CAPACITY_FIELDS}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def digest_files(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of the data files, in the order given."""
    hasher = hashlib.sha256()
    for path in paths:
        hasher.update(path.name.encode() + b"\0")
        with path.open("rb") as data:
            for chunk in iter(lambda: data.read(1 << 20), b""):
                hasher.update(chunk)
    return hasher.hexdigest()


class ResultCache:
    """Finished queries of one run, one JSON line each, under a name that hashes what decides them.

    The first line records the key's parts for a person looking at the folder. A line cut short
    by a crash is ignored (that query runs again)."""

    def __init__(self, folder: Path | None, key: Mapping[str, Any]):
        self.path = folder / f"{digest(key)[:32]}.jsonl" if folder else None
        self.key = dict(key)

    def load(self) -> dict[str, QueryResult]:
        if self.path is None or not self.path.exists():
            return {}
        done: dict[str, QueryResult] = {}
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if "query_id" in row:
                    done[row["query_id"]] = QueryResult.from_json(row)
        return done

    def add(self, query_id: str, result: QueryResult) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.exists()
        with self.path.open("a", encoding="utf-8") as out:
            if new:
                out.write(json.dumps({"key": self.key}) + "\n")
            out.write(json.dumps({"query_id": query_id, **result.to_json()}) + "\n")


async def model_fingerprint(client: AsyncClient, info: ServerInfo, with_judge: bool) -> dict[str, Any]:
    """What identifies the server's models, read through the API (see the module docstring)."""
    vectors = await client.embed(list(PROBE_TEXTS))
    signs = "".join("1" if value >= 0 else "0" for vector in vectors for value in vector.values)
    fingerprint: dict[str, Any] = {
        "embedder": info.model, "dimension": info.dimension, "max_tokens": info.max_tokens, "pooling": info.pooling,
        "vector_signs": hashlib.sha256(signs.encode()).hexdigest()[:16],
    }
    if with_judge:
        verdict = (await client.judge(PROBE_PAIR[0], [PROBE_PAIR[1]], max_reasoning_tokens=0, timeout=CALL_TIMEOUT_S))[0]
        fingerprint |= {"judge": info.judge_model, "reasoning_cap": info.max_reasoning_tokens,
                        "judge_probe": [verdict.relevant, round(verdict.score, 2)]}
    return fingerprint


# What one query's call returns: the ranking (best first) and the verdicts by document id.
OneQuery = Callable[[str, str, Query], Awaitable[tuple[list[str], dict[str, "JudgedHit"]]]]


def _judged(verdict: Verdict) -> JudgedHit:
    return JudgedHit(verdict.score, verdict.ended, verdict.reasoning_tokens, verdict.truncated, verdict.reasoning_budget)


class Evaluation:
    """Runs queries against one server for one data set; see the module docstring."""

    def __init__(self, client: AsyncClient, corpus: Mapping[str, tuple[str, str]], data_digest: str,
                 cache_dir: Path | None, console: Console, precision: str = "f16"):
        self.client = client
        self.corpus = corpus
        self.data_digest = data_digest
        self.cache_dir = cache_dir
        self.console = console
        self.precision = precision
        self.info: ServerInfo | None = None
        self.fingerprint: dict[str, Any] = {}
        self.server: dict[str, Any] = {}
        self.index_seconds = 0.0
        self.query_runs = 0
        self.cached_queries = 0
        self._collection = ""
        self._indexing = asyncio.Lock()

    async def start(self, with_judge: bool = False, k: int = 0) -> None:
        self.info = await self.client.info()
        if self.info.max_k < k:
            raise ValueError(f"the server allows k up to {self.info.max_k}; this evaluation needs {k} (raise --max-k)")
        if with_judge and not self.info.judge_model:
            raise ValueError("the server runs without a judge; reranking needs one (start it with --judge)")
        self.fingerprint = await model_fingerprint(self.client, self.info, with_judge)
        self.server = server_identity(self.info) | {"precision": self.precision}

    def provenance(self) -> dict[str, Any]:
        """For the results: the server part of the cache key, and how many query runs came from the cache."""
        return {"server": self.server, "query_runs": self.query_runs, "cached_queries": self.cached_queries}

    async def close(self) -> None:
        if self._collection:
            await self.client.delete_collection(self._collection)
            self._collection = ""

    async def collection(self) -> str:
        """The corpus in a temporary collection, indexed on first use."""
        async with self._indexing:
            if not self._collection:
                assert self.info is not None
                name = f"eval-{uuid.uuid4().hex[:12]}"
                await self.client.create_collection(name, precision=self.precision)
                self._collection = name
                started = time.perf_counter()
                batch_size = min(UPSERT_BATCH, self.info.max_batch_size)
                items = list(self.corpus.items())
                with self._progress("indexing the corpus", len(items), "docs") as progress:
                    for offset in range(0, len(items), batch_size):
                        batch = [Document(id=doc_id, title=title, text=text)
                                 for doc_id, (title, text) in items[offset:offset + batch_size]]
                        await self.client.upsert(name, batch, timeout=CALL_TIMEOUT_S)
                        progress.advance(len(batch))
                self.index_seconds = time.perf_counter() - started
            return self._collection

    def _progress(self, description: str, total: int, unit: str) -> ProgressReport:
        return ProgressReport(self.console, description, total, unit)

    def _cache(self, kind: str, queries: Mapping[str, Query], settings: Mapping[str, Any]) -> ResultCache:
        key = {"kind": kind, "model": self.fingerprint, "server": self.server, "data": self.data_digest,
               "queries": digest(sorted((qid, q.text, q.instruction) for qid, q in queries.items())), **settings}
        return ResultCache(self.cache_dir, key)

    async def _run(self, label: str, cache: ResultCache, queries: Mapping[str, Query], one: OneQuery) -> dict[str, QueryResult]:
        """Runs `one` for every query the cache does not hold yet, SEARCH_CONCURRENCY at a time, keeping each as it ends."""
        done = cache.load()
        results = {qid: done[qid] for qid in queries if qid in done}
        self.query_runs += len(queries)
        self.cached_queries += len(results)
        todo = [qid for qid in queries if qid not in results]
        if results:
            self.console.print(f"{label}: {len(results)} of {len(queries)} queries from the cache {cache.path} "
                               "(--no-cache runs them again)", highlight=False, soft_wrap=True)
        if not todo:
            return results
        collection = await self.collection()
        limit = asyncio.Semaphore(SEARCH_CONCURRENCY)
        with self._progress(label, len(todo), "queries") as progress:

            async def run(query_id: str) -> None:
                async with limit:
                    started = time.perf_counter()
                    ids, verdicts = await one(collection, query_id, queries[query_id])
                    result = QueryResult(ids, time.perf_counter() - started, verdicts)
                cache.add(query_id, result)
                results[query_id] = result
                progress.advance()

            await asyncio.gather(*(run(qid) for qid in todo))
        return {qid: results[qid] for qid in queries}

    async def search(self, label: str, queries: Mapping[str, Query], *, k: int, rerank: int = 0,
                     max_reasoning_tokens: int | None = None, mode: str = "dense") -> dict[str, QueryResult]:
        """Search every query in `mode`; with rerank, the judge reorders the top `rerank` hits on the server."""
        settings = {"k": k, "rerank": rerank, "max_reasoning_tokens": max_reasoning_tokens if rerank else None,
                    "mode": mode}
        cache = self._cache("search", queries, settings)

        async def one(collection: str, query_id: str, query: Query) -> tuple[list[str], dict[str, JudgedHit]]:
            hits = await self.client.search(collection, query.text, instruction=query.instruction, k=k, rerank=rerank,
                                            max_reasoning_tokens=max_reasoning_tokens, mode=mode, timeout=CALL_TIMEOUT_S)
            return [hit.id for hit in hits], {hit.id: _judged(hit.verdict) for hit in hits if hit.verdict}

        return await self._run(label, cache, queries, one)

    async def judge_lists(self, label: str, queries: Mapping[str, Query], lists: Mapping[str, list[str]], *, top_n: int,
                          max_reasoning_tokens: int | None = None) -> dict[str, QueryResult]:
        """Judge the first `top_n` documents of each query's list; they lead, by p(true) descending (ties by
        id), and the rest of the list follows in its own order."""
        assert self.info is not None
        settings = {"top_n": top_n, "max_reasoning_tokens": max_reasoning_tokens,
                    "lists": digest({qid: lists.get(qid, []) for qid in queries})}
        cache = self._cache("judge", queries, settings)
        chunk = self.info.max_judge_documents

        async def one(collection: str, query_id: str, query: Query) -> tuple[list[str], dict[str, JudgedHit]]:
            ranked = lists.get(query_id, [])
            head, tail = ranked[:top_n], ranked[top_n:]
            verdicts: dict[str, JudgedHit] = {}
            for offset in range(0, len(head), chunk):
                documents = [Document(id=doc_id) for doc_id in head[offset:offset + chunk]]
                for verdict in await self.client.judge(query.text, documents, instruction=query.instruction,
                                                       collection=collection, max_reasoning_tokens=max_reasoning_tokens,
                                                       timeout=CALL_TIMEOUT_S):
                    verdicts[verdict.id] = _judged(verdict)
            judged = sorted(head, key=lambda doc_id: (-verdicts[doc_id].score, doc_id))
            return judged + tail, verdicts

        return await self._run(label, cache, queries, one)

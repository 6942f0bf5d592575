"""The search pipeline built in-process: a fake embedder service and a fake judge (core logic
only), with the real collection store on a temporary directory. The gRPC path with real models is
tested in test_server.py and test_judge_api.py."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from irgate.core.embedding import Embeddings, Timing
from irgate.core.judge import JudgeCall
from irgate.core.search import RerankOptions, SearchPipeline, SearchQuery
from irgate.domain.documents import Document
from irgate.errors import FailedPrecondition, NotFound
from irgate.index.store import CollectionStore

DIMENSION = 8


def direction(*weights: float) -> np.ndarray:
    vector = np.zeros(DIMENSION, dtype=np.float32)
    vector[: len(weights)] = weights
    return vector / np.linalg.norm(vector)


@dataclass
class FakeManifest:
    dimension: int = DIMENSION
    normalize: bool = True


class FakeEmbedding:
    """Embeds a query as the vector the test gave for it."""

    manifest = FakeManifest()

    def __init__(self, queries: dict[str, np.ndarray]):
        self.queries = queries

    async def embed(self, items, truncation, normalize=True) -> Embeddings:
        vectors = np.stack([self.queries[item.text] for item in items])
        return Embeddings(vectors=vectors, tokens=[3] * len(items), truncated=[False] * len(items), timing=Timing())


@dataclass(frozen=True)
class FakeVerdict:
    id: str
    score: float


class FakeJudge:
    """Scores each passage by a table; records what it was asked to judge."""

    max_documents = 10

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.judged: list[str] = []

    def passage_cap(self, requested: int | None, field: str = "max_passage_tokens") -> int:
        return requested or 512

    async def judge_all(self, call: JudgeCall) -> list[FakeVerdict]:
        self.judged = [passage.id for passage in call.passages]
        return [FakeVerdict(id=passage.id, score=self.scores[passage.id]) for passage in call.passages]


# Dense order for the query (1, 0): a > b > c > d > e > f.
DOCUMENTS = {
    "a": direction(1.0, 0.1),
    "b": direction(1.0, 0.3),
    "c": direction(1.0, 0.6),
    "d": direction(1.0, 1.0),
    "e": direction(0.6, 1.0),
    "f": direction(0.1, 1.0),
}


@pytest.fixture
def store(tmp_path: Path):
    opened = CollectionStore(tmp_path / "collections", DIMENSION, "fake-model")
    opened.create("papers")
    records = [
        Document(id=name, title=name.upper(), text="" if name == "b" else f"text of {name}",
                 metadata={"group": "even" if name in "bdf" else "odd"})
        for name in DOCUMENTS
    ]
    opened.get("papers").upsert(records, np.stack(list(DOCUMENTS.values())))
    yield opened
    opened.close()


def search(pipeline: SearchPipeline, **fields) -> list:
    return asyncio.run(pipeline.search(SearchQuery(collection="papers", query="q", **fields))).hits


def test_dense_hits_come_in_score_order_with_domain_documents(store: CollectionStore) -> None:
    pipeline = SearchPipeline(FakeEmbedding({"q": direction(1.0)}), store)
    hits = search(pipeline, k=4, include_documents=True)
    assert [hit.id for hit in hits] == ["a", "b", "c", "d"]
    assert all(hit.score == hit.dense_score for hit in hits)
    assert all(isinstance(hit.document, Document) for hit in hits)  # core's type, not the index's row
    assert hits[0].document == Document(id="a", title="A", text="text of a", metadata={"group": "odd"})
    assert all(hit.document is None for hit in search(pipeline, k=2))


def test_the_filter_keeps_matching_documents_only(store: CollectionStore) -> None:
    pipeline = SearchPipeline(FakeEmbedding({"q": direction(1.0)}), store)
    assert [hit.id for hit in search(pipeline, k=10, filter={"group": "even"})] == ["b", "d", "f"]


def test_a_missing_collection_and_a_rerank_without_judge_are_refused(store: CollectionStore) -> None:
    pipeline = SearchPipeline(FakeEmbedding({"q": direction(1.0)}), store)
    with pytest.raises(NotFound, match="'nowhere'"):
        asyncio.run(pipeline.search(SearchQuery(collection="nowhere", query="q")))
    with pytest.raises(FailedPrecondition, match="without a judge"):
        search(pipeline, rerank=RerankOptions(top_n=3))


def test_rerank_judges_the_top_n_with_text_and_keeps_the_rest_in_dense_order(store: CollectionStore) -> None:
    judge = FakeJudge({"a": 0.2, "c": 0.9, "d": 0.9, "e": 0.7})
    pipeline = SearchPipeline(FakeEmbedding({"q": direction(1.0)}), store, judge)
    hits = search(pipeline, k=6, rerank=RerankOptions(top_n=5))
    # b is stored without text: nothing to judge, so it joins the unjudged rest.
    assert judge.judged == ["a", "c", "d", "e"]
    # Judged first by judge score, ties by dense score (c beats d); then b and f by dense score.
    assert [hit.id for hit in hits] == ["c", "d", "e", "a", "b", "f"]
    assert [hit.score for hit in hits[:4]] == [0.9, 0.9, 0.7, 0.2]
    assert hits[4].verdict is None and hits[4].score == hits[4].dense_score


def test_rerank_can_lift_a_hit_from_beyond_k_into_the_first_k(store: CollectionStore) -> None:
    judge = FakeJudge({"a": 0.1, "c": 0.2, "d": 0.3, "e": 0.99, "f": 0.5})
    pipeline = SearchPipeline(FakeEmbedding({"q": direction(1.0)}), store, judge)
    hits = search(pipeline, k=2, rerank=RerankOptions(top_n=6))
    assert [hit.id for hit in hits] == ["e", "f"]
    assert all(hit.document is None for hit in hits)  # the judge read them; the caller did not ask

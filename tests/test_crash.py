"""Crash safety: SIGKILL a real server at random moments during streaming upserts and deletes,
restart it on the same data directory, and check that every acknowledged write is there and every
acknowledged delete is not. IRGATE_CRASH_TRIALS sets the number of kills (`make soak` raises it)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from irgate.local_server import LocalServer
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

TRIALS = int(os.environ.get("IRGATE_CRASH_TRIALS", "10"))
WRITERS = 3
DIMENSION = 384
BATCH = 16  # the server's --max-batch-size here


def vector_of(document_id: str) -> list[float]:
    seed = int.from_bytes(document_id.encode()[-8:].rjust(8, b"\0"), "little")
    vector = np.random.default_rng(seed).standard_normal(DIMENSION)
    return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()


@dataclass
class Ledger:
    """What the server acknowledged: ids it said are written (with their text) and ids it said it deleted."""

    present: dict[str, str] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    acknowledged_writes: int = 0
    acknowledged_deletes: int = 0
    next_id: int = 0

    def fresh_ids(self, writer: int, count: int) -> list[str]:
        self.next_id += count
        return [f"w{writer}-{self.next_id - count + i}" for i in range(count)]

    def forget(self, ids: list[str]) -> None:
        """An operation that was in flight at the kill: its ids may or may not have changed."""
        for document_id in ids:
            self.present.pop(document_id, None)
            self.deleted.discard(document_id)


async def write_until_killed(address: str, ledger: Ledger, writer: int, rng: random.Random) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.CollectionsStub(channel)
        while True:
            if ledger.present and rng.random() < 0.3:
                ids = [i for i in list(ledger.present)[-200:] if i.startswith(f"w{writer}-")][: rng.randint(1, BATCH)]
                if not ids:
                    continue
                try:
                    response = await stub.DeleteDocuments(pb.DeleteDocumentsRequest(collection="crash", ids=ids))
                except grpc.aio.AioRpcError:
                    ledger.forget(ids)
                    return
                assert response.deleted == len(ids)
                for document_id in ids:
                    del ledger.present[document_id]
                    ledger.deleted.add(document_id)
                ledger.acknowledged_deletes += len(ids)
                continue
            messages = []
            written: dict[str, str] = {}
            for _ in range(rng.randint(1, 4)):
                ids = ledger.fresh_ids(writer, rng.randint(1, BATCH))
                documents = []
                for document_id in ids:
                    text = f"record {document_id}: observation {rng.randint(0, 10**9)}"
                    written[document_id] = text
                    # Most carry a client vector (fast); some are embedded by the server.
                    embed = rng.random() < 0.15
                    documents.append(pb.Document(id=document_id, text=text, vector=[] if embed else vector_of(document_id)))
                messages.append(pb.UpsertDocumentsRequest(collection="crash", documents=documents))
            try:
                response = await stub.UpsertDocuments(iter(messages))
            except grpc.aio.AioRpcError:
                ledger.forget(list(written))
                return
            assert response.upserted == len(written)
            ledger.present.update(written)
            ledger.acknowledged_writes += len(written)


def verify(address: str, ledger: Ledger, rng: random.Random) -> tuple[int, int]:
    """Returns (acknowledged writes found, acknowledged deletes absent); asserts both are all of them."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.CollectionsStub(channel)
        present = sorted(ledger.present)
        found = 0
        for start in range(0, len(present), BATCH):
            ids = present[start : start + BATCH]
            response = stub.GetDocuments(pb.GetDocumentsRequest(collection="crash", ids=ids), timeout=60)
            assert list(response.not_found) == [], "acknowledged writes lost"
            assert {d.id: d.text for d in response.documents} == {i: ledger.present[i] for i in ids}
            found += len(response.documents)
        deleted = sorted(ledger.deleted)
        absent = 0
        for start in range(0, len(deleted), BATCH):
            ids = deleted[start : start + BATCH]
            response = stub.GetDocuments(pb.GetDocumentsRequest(collection="crash", ids=ids), timeout=60)
            assert list(response.documents) == [], "acknowledged deletes came back"
            absent += len(response.not_found)
        search = pb_grpc.SearchStub(channel)
        vector_documents = [i for i in present if ledger.present[i]]  # the index, not only SQLite, holds them
        for document_id in rng.sample(vector_documents, min(10, len(vector_documents))):
            hits = search.Search(pb.SearchRequest(collection="crash", query=ledger.present[document_id], k=50), timeout=60).hits
            assert not {hit.id for hit in hits} & ledger.deleted
        described = pb_grpc.CollectionsStub(channel).DescribeCollection(pb.DescribeCollectionRequest(name="crash"))
        assert described.documents >= len(present)
    return found, absent


def test_sigkill_during_streaming_upserts_and_deletes_loses_no_acknowledged_write(minilm_folder: Path, tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get("IRGATE_CRASH_SEED", "9")))
    ledger = Ledger()
    # Frequent snapshots, so that kills also land while a snapshot is being written.
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--max-batch-size", str(BATCH), "--snapshot-every", "50"]
    found = absent = 0
    for trial in range(TRIALS + 1):
        server = LocalServer(tmp_path, args).start()
        try:
            if trial == 0:
                with grpc.insecure_channel(server.address) as channel:
                    pb_grpc.CollectionsStub(channel).CreateCollection(pb.CreateCollectionRequest(name="crash"))
            else:
                found, absent = verify(server.address, ledger, rng)
            if trial == TRIALS:
                break
            killer = threading.Timer(rng.uniform(0.3, 2.0), server.kill)
            killer.start()

            async def write() -> None:
                # The kill comes within 2 s and ends every call; a writer still waiting long after it hangs.
                try:
                    async with asyncio.timeout(120):
                        await asyncio.gather(*(write_until_killed(server.address, ledger, w, rng) for w in range(WRITERS)))
                except TimeoutError:
                    raise AssertionError(f"trial {trial}: writers still waiting 120 s after a kill due within 2 s") from None

            asyncio.run(write())
            killer.join()
        finally:
            server.kill()
    print(
        f"\ncrash test: {TRIALS} SIGKILLs; acknowledged {ledger.acknowledged_writes} writes and "
        f"{ledger.acknowledged_deletes} deletes; after the last restart {found} acknowledged documents were found "
        f"and {absent} acknowledged deletes were absent (every trial checks all of them)"
    )
    assert ledger.acknowledged_writes > 100 and ledger.acknowledged_deletes > 10

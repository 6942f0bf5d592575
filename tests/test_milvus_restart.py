"""A Milvus restart under load: a real `milvus-lite server` of this test's own is killed (SIGKILL)
and started again on its data and port while clients search and upsert through a gateway. The
gateway answers UNAVAILABLE (never INTERNAL) while Milvus is down, reports NOT_SERVING, and serves
again by itself, every acknowledged write in place: a restarted milvus-lite holds every collection
released, which the gateway loads again."""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from support import wait_for
from test_server import PAPERS

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Document, IrgateError

pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed (make test installs it)")

from irgate.index.milvus_lite import MilvusLiteServer  # noqa: E402

COLLECTION = "papers"


@dataclass
class Caller:
    """One client thread's calls: (when it ended, status name) each, and the ids of acknowledged upserts."""

    outcomes: list[tuple[float, str]] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)

    def answered_since(self, moment: float, calls: int) -> bool:
        """Its last `calls` calls all ended OK after `moment`."""
        last = self.outcomes[-calls:]
        return len(last) == calls and all(ended > moment and status == "OK" for ended, status in last)


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.read().decode()


def search_until(stop: threading.Event, client: Client, caller: Caller) -> None:
    while not stop.is_set():
        try:
            hits = client.search(COLLECTION, "what causes rain", k=1)
            status = "OK" if [hit.id for hit in hits] == ["rain"] else f"wrong hits {hits}"
        except IrgateError as error:
            status = error.code.name
        caller.outcomes.append((time.monotonic(), status))
        time.sleep(0.02)


def upsert_until(stop: threading.Event, client: Client, caller: Caller) -> None:
    written = 0
    while not stop.is_set():
        document_id = f"note-{written}"
        written += 1
        try:
            client.upsert(COLLECTION, [Document(id=document_id, text=f"Field note number {written} on the weather.")],
                          timeout=30)
            caller.acknowledged.append(document_id)
            status = "OK"
        except IrgateError as error:
            status = error.code.name
        caller.outcomes.append((time.monotonic(), status))
        time.sleep(0.02)


def test_a_gateway_serves_again_by_itself_after_milvus_restarts(minilm_folder: Path, tmp_path: Path) -> None:
    milvus = MilvusLiteServer(tmp_path / "milvus", free_port()).start()
    metrics_port = free_port()
    args = ["--embedder", f"onnx:{minilm_folder}", "--index", milvus.index_setting, "--judge", "none",
            "--metrics-port", str(metrics_port)]
    searchers, writer = [Caller(), Caller()], Caller()
    callers = [*searchers, writer]
    stop = threading.Event()
    try:
        with LocalServer(tmp_path / "gateway", args) as gateway, Client(gateway.address, timeout=30) as client:
            client.create_collection(COLLECTION)
            client.upsert(COLLECTION, PAPERS)
            threads = [threading.Thread(target=search_until, args=(stop, client, caller)) for caller in searchers]
            threads.append(threading.Thread(target=upsert_until, args=(stop, client, writer)))
            for thread in threads:
                thread.start()
            try:
                wait_for(lambda: all(caller.answered_since(0, 2) for caller in callers), 60, "every caller answered")
                assert client.health() == client.health("irgate.v1.Search") == "SERVING"

                killed_at = time.monotonic()
                milvus.kill()
                unavailable_after = wait_for(lambda: any(
                    ended > killed_at and status == "UNAVAILABLE" for caller in callers for ended, status in caller.outcomes
                ), 30, "a call answered UNAVAILABLE")
                not_serving_after = wait_for(lambda: client.health("irgate.v1.Search") == "NOT_SERVING", 20,
                                             "health NOT_SERVING")
                assert client.health() == client.health("irgate.v1.Collections") == "NOT_SERVING"
                assert client.health("irgate.v1.Embed") == "SERVING"  # embedding needs no index
                assert "irgate_requests_total" in metrics(metrics_port)  # a scrape still brings the other metrics

                milvus.start()  # the same data directory and port
                ready_at = time.monotonic()
                answered_after = wait_for(lambda: all(caller.answered_since(ready_at, 3) for caller in callers), 30,
                                          "every caller answered OK again, three calls in a row")
                serving_after = answered_after + wait_for(lambda: client.health("irgate.v1.Search") == "SERVING", 20,
                                                          "health SERVING again")
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            assert not any(thread.is_alive() for thread in threads), "a caller hung"
            print(f"Milvus killed: UNAVAILABLE after {unavailable_after:.1f}s, NOT_SERVING after "
                  f"{unavailable_after + not_serving_after:.1f}s; restarted: every caller OK {answered_after:.1f}s after it "
                  f"listened, SERVING {serving_after:.1f}s after; calls {sum(len(c.outcomes) for c in callers)}, "
                  f"acknowledged upserts {len(writer.acknowledged)}")

            statuses = {status for caller in callers for _, status in caller.outcomes}
            assert statuses == {"OK", "UNAVAILABLE"}, statuses  # never INTERNAL, nor anything else
            found, missing = client.get(COLLECTION, writer.acknowledged)
            assert missing == [] and len(found) == len(writer.acknowledged) > 0
            assert client.search(COLLECTION, "Field note number 1 on the weather.", k=1)[0].id == "note-0"
            assert f'irgate_collection_documents{{collection="{COLLECTION}"}}' in metrics(metrics_port)
        assert "Traceback" not in "".join(gateway.output), "".join(gateway.output[-40:])
    finally:
        milvus.stop()

"""Judge, JudgeStream and Search rerank through a real server with the default in-process judge.

SmolLM2-135M shows the mechanics only (its p(true) carries no relevance signal), so these tests
pin behaviour (order, budgets, ids, statuses, cancellation), not quality.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from irgate.local_server import LocalServer
from irgate.processes import free_port
from irgate_client import Client, Document, IrgateError, ReasoningDelta, Verdict
from irgate_client.v1 import irgate_pb2 as pb
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc
from support import assert_ratio

PASSAGES = [
    "Rain forms when water vapour condenses into droplets.",
    "Cats are small domesticated mammals.",
    "Lava erupts from volcanoes.",
]
CAP = 64  # the server's reasoning cap in these tests (flag --max-reasoning-tokens)
# The server's passage cap in these tests (flag --judge-max-passage-tokens), below the judge
# manifest's 2048 so that long passages cost a CPU little.
PASSAGE_CAP = 1024
# A query SmolLM2 keeps "reasoning" about until the budget runs out: counting.
COUNTING = "List the numbers from 1 to 200, one per line."


@pytest.fixture(scope="module")
def judge_metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def judging_server(minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory,
                   judge_metrics_port: int):
    args = ["--embedder", f"onnx:{minilm_folder}", "--judge", f"local:{judge_folder}", "--max-reasoning-tokens", str(CAP),
            "--judge-max-passage-tokens", str(PASSAGE_CAP), "--max-judge-documents", "4", "--metrics-port", str(judge_metrics_port)]
    with LocalServer(tmp_path_factory.mktemp("judge-data"), args) as running:
        yield running


@pytest.fixture
def client(judging_server: LocalServer):
    with Client(judging_server.address, timeout=300) as connected:
        yield connected


def test_judge_is_served_and_described(judging_server: LocalServer, client: Client) -> None:
    with grpc.insecure_channel(judging_server.address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="irgate.v1.Judge"))
    assert check.status == health_pb2.HealthCheckResponse.SERVING
    assert client.info().judge_model == "smollm2-135m-hf"


def test_verdicts_come_in_request_order_with_scores_in_range(client: Client) -> None:
    verdicts = client.judge("what causes rain", PASSAGES, max_reasoning_tokens=8)
    assert [verdict.index for verdict in verdicts] == [0, 1, 2]
    for verdict in verdicts:
        assert 0.0 <= verdict.score <= 1.0
        assert verdict.relevant == (verdict.score > 0.5)
        assert verdict.ended in ("answered", "forced", "forced_eos")
        assert verdict.reasoning == ""  # only when asked for
        assert verdict.reasoning_tokens <= 8 and verdict.reasoning_budget == 8


def test_budget_zero_answers_at_once(client: Client) -> None:
    (verdict,) = client.judge("what causes rain", PASSAGES[:1], max_reasoning_tokens=0, return_reasoning=True)
    assert (verdict.ended, verdict.reasoning_tokens, verdict.reasoning) == ("forced", 0, "")


def test_the_server_caps_the_reasoning_budget(client: Client) -> None:
    verdicts = client.judge("what causes rain", PASSAGES[:2], max_reasoning_tokens=10_000, return_reasoning=True)
    assert all(verdict.reasoning_tokens <= CAP and verdict.reasoning_budget == CAP for verdict in verdicts)


def test_one_budget_default_from_sdk_and_cli(judging_server: LocalServer, client: Client) -> None:
    """Left unset (the SDK's and the CLI's default), the budget is the server's cap, as Info says."""
    assert client.info().max_reasoning_tokens == CAP
    (verdict,) = client.judge(COUNTING, ["1\n2\n3"])
    assert (verdict.reasoning_budget, verdict.reasoning_tokens, verdict.ended) == (CAP, CAP, "forced")
    client.create_collection("default-budget", exist_ok=True)
    client.upsert("default-budget", [Document(id="count", text="1\n2\n3")])
    (hit,) = client.search("default-budget", COUNTING, k=1, rerank=1)
    assert hit.verdict is not None and hit.verdict.reasoning_budget == CAP
    (line,) = irgate("judge", COUNTING, "--doc", "1\n2\n3", "--json", "--server", judging_server.address).splitlines()
    assert json.loads(line)["reasoning_budget"] == CAP


def test_a_long_stored_document_is_reranked_cut_to_the_context(client: Client) -> None:
    """A stored passage longer than the passage cap and the judge's context is cut at its end,
    never a failed search."""
    client.create_collection("long-documents", exist_ok=True)
    long_text = "Rain forms when water vapour condenses into droplets. " * 1500  # ~15k tokens > 8192
    client.upsert("long-documents", [Document(id="long", text=long_text), Document(id="short", text=PASSAGES[0])])
    hits = client.search("long-documents", "what causes rain", k=2, rerank=2, max_reasoning_tokens=2)
    verdicts = {hit.id: hit.verdict for hit in hits}
    assert verdicts["long"] is not None and verdicts["long"].truncated
    assert verdicts["short"] is not None and not verdicts["short"].truncated


def test_info_reports_the_passage_cap(client: Client) -> None:
    assert client.info().max_passage_tokens == PASSAGE_CAP


def test_a_request_may_lower_the_passage_cap(judging_server: LocalServer, client: Client) -> None:
    """A stored passage longer than the request's cap is judged cut to it, exactly as the same
    passage sent inline with that cap; every call that judges takes the cap."""
    passage = "Rain forms when water vapour condenses into droplets. " * 20  # about 200 tokens
    client.create_collection("capped-passages", exist_ok=True)
    client.upsert("capped-passages", [Document(id="long", text=passage), Document(id="short", text="Rain falls.")])
    hits = client.search("capped-passages", "what causes rain", k=2, rerank=2, max_reasoning_tokens=0, max_passage_tokens=32)
    verdicts = {hit.id: hit.verdict for hit in hits}
    assert verdicts["long"] is not None and verdicts["long"].truncated
    assert verdicts["short"] is not None and not verdicts["short"].truncated
    (inline,) = client.judge("what causes rain", [passage], max_reasoning_tokens=0, max_passage_tokens=32)
    assert inline.truncated and inline.score == pytest.approx(verdicts["long"].score, abs=1e-4)
    (whole,) = client.judge("what causes rain", [passage], max_reasoning_tokens=0)  # within the server's cap
    assert not whole.truncated and whole.score != pytest.approx(inline.score, abs=1e-6)
    streamed = [event for event in client.judge_stream("what causes rain", [passage], max_reasoning_tokens=0,
                                                       max_passage_tokens=32) if isinstance(event, Verdict)]
    assert [verdict.truncated for verdict in streamed] == [True]
    (line,) = irgate("judge", "what causes rain", "--doc", passage, "--max-reasoning-tokens", "0", "--max-passage-tokens",
                     "32", "--json", "--server", judging_server.address).splitlines()
    assert json.loads(line)["truncated"] is True


def test_a_passage_cap_above_the_servers_is_refused(judging_server: LocalServer, client: Client) -> None:
    allowed = f"it must be between 1 and the server's cap, {PASSAGE_CAP}"
    with pytest.raises(IrgateError) as raised:
        client.judge("what causes rain", PASSAGES[:1], max_passage_tokens=PASSAGE_CAP + 1)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_passage_tokens is {PASSAGE_CAP + 1}; {allowed}" in raised.value.message
    client.create_collection("cap-refused", exist_ok=True)
    with pytest.raises(IrgateError) as raised:
        client.search("cap-refused", "what causes rain", rerank=1, max_passage_tokens=PASSAGE_CAP + 1)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"rerank.max_passage_tokens is {PASSAGE_CAP + 1}; {allowed}" in raised.value.message
    # 0 reads nothing of a passage: refused on the wire; a negative cap is refused by the SDK.
    with grpc.insecure_channel(judging_server.address) as channel:
        document = pb.JudgeDocument(inline=pb.InlineDocument(text=PASSAGES[0]))
        with pytest.raises(grpc.RpcError) as refused:
            pb_grpc.JudgeStub(channel).Judge(pb.JudgeRequest(query="rain", documents=[document], max_passage_tokens=0),
                                             timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"max_passage_tokens is 0; {allowed}" in refused.value.details()
    with pytest.raises(IrgateError) as raised:
        client.judge("what causes rain", PASSAGES[:1], max_passage_tokens=-1)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "max_passage_tokens is -1" in raised.value.message


def test_stream_sends_each_verdict_with_its_reasoning(client: Client) -> None:
    events = list(client.judge_stream("what causes rain", PASSAGES, max_reasoning_tokens=12, return_reasoning=True))
    verdicts = [event for event in events if isinstance(event, Verdict)]
    assert sorted(verdict.index for verdict in verdicts) == [0, 1, 2]
    assert isinstance(events[-1], Verdict)
    for verdict in verdicts:
        deltas = [event.text for event in events if isinstance(event, ReasoningDelta) and event.index == verdict.index]
        assert "".join(deltas) == verdict.reasoning
        position = events.index(verdict)
        assert all(not (isinstance(e, ReasoningDelta) and e.index == verdict.index) for e in events[position:])


def test_documents_can_be_named_by_id_in_a_collection(client: Client) -> None:
    client.create_collection("judged")
    client.upsert("judged", [Document(id="rain", text=PASSAGES[0]), Document(id="cats", text=PASSAGES[1])])
    by_id = client.judge("what causes rain", [Document(id="cats"), Document(id="rain")], collection="judged",
                         max_reasoning_tokens=4)
    inline = client.judge("what causes rain", [PASSAGES[1], PASSAGES[0]], max_reasoning_tokens=4)
    assert [verdict.id for verdict in by_id] == ["cats", "rain"]
    assert [round(v.score, 5) for v in by_id] == [round(v.score, 5) for v in inline]
    with pytest.raises(IrgateError) as missing:
        client.judge("rain", [Document(id="nope")], collection="judged")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND and "nope" in missing.value.message


@pytest.mark.parametrize(
    ("query", "documents", "collection", "expected"),
    [
        ("  ", ["a passage"], "", "query is empty"),
        ("rain", [], "", "documents has 0 entries; send 1 to 4"),
        ("rain", ["p"] * 5, "", "documents has 5 entries; send 1 to 4"),
        ("rain", ["   "], "", "documents[0].inline.text is empty"),
        ("rain", [Document(id="rain")], "", "no collection is named"),
    ],
)
def test_judge_rejects_bad_input(client: Client, query: str, documents: list, collection: str, expected: str) -> None:
    with pytest.raises(IrgateError) as raised:
        client.judge(query, documents, collection=collection)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and expected in raised.value.message


def test_search_rerank_orders_the_top_n_by_judge_score(client: Client) -> None:
    client.create_collection("reranked")
    client.upsert("reranked", [Document(id=f"d{i}", text=text) for i, text in enumerate(PASSAGES * 2)])
    dense = client.search("reranked", "what causes rain", k=6)
    hits = client.search("reranked", "what causes rain", k=6, rerank=3, max_reasoning_tokens=4, return_reasoning=True)
    judged, rest = hits[:3], hits[3:]
    assert {hit.id for hit in judged} == {hit.id for hit in dense[:3]}
    assert all(hit.verdict is not None and hit.score == pytest.approx(hit.verdict.score) for hit in judged)
    assert [hit.score for hit in judged] == sorted((hit.score for hit in judged), reverse=True)
    assert [hit.id for hit in rest] == [hit.id for hit in dense[3:]] and all(hit.verdict is None for hit in rest)
    with pytest.raises(IrgateError) as raised:
        client.search("reranked", "rain", rerank=5)
    assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT and "rerank.top_n is 5" in raised.value.message


def test_timing_reports_the_judges_share(judging_server: LocalServer, client: Client) -> None:
    """A Search with rerank says how long its judge took, within its whole time; one without says 0;
    all of a Judge call is the judge's."""
    client.create_collection("timed", exist_ok=True)
    client.upsert("timed", [Document(id=f"t{i}", text=text) for i, text in enumerate(PASSAGES)])
    with grpc.insecure_channel(judging_server.address) as channel:
        search = pb_grpc.SearchStub(channel).Search
        plain = search(pb.SearchRequest(collection="timed", query="what causes rain", k=3), timeout=60).timing
        reranked = search(pb.SearchRequest(collection="timed", query="what causes rain", k=3,
                                           rerank=pb.RerankOptions(top_n=2, max_reasoning_tokens=2)), timeout=300).timing
        document = pb.JudgeDocument(inline=pb.InlineDocument(text=PASSAGES[0]))
        judged = pb_grpc.JudgeStub(channel).Judge(pb.JudgeRequest(query="rain", documents=[document], max_reasoning_tokens=2),
                                                  timeout=300).timing
    assert plain.judge_ns == 0 < plain.total_ns
    assert 0 < reranked.judge_ns < reranked.total_ns
    assert 0 < judged.judge_ns == judged.total_ns


def judge_busy(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    line = next(line for line in body.splitlines() if line.startswith("irgate_judge_busy "))
    return float(line.split()[1])


def test_cancelling_a_stream_stops_generation(judging_server: LocalServer, judge_metrics_port: int) -> None:
    with Client(judging_server.address, timeout=300) as client:
        stream = client.judge_stream(COUNTING, ["1\n2\n3\n4"] * 4, max_reasoning_tokens=CAP, return_reasoning=True)
        next(stream)  # the judge is now generating
        assert judge_busy(judge_metrics_port) == 1.0
        stream.close()  # cancels the call
    deadline = time.monotonic() + 10  # generous: one decode step of a 135M model takes well under a second
    while judge_busy(judge_metrics_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert judge_busy(judge_metrics_port) == 0.0


def irgate(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "irgate", *args], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_judge_command_prints_one_json_verdict_per_document(judging_server: LocalServer) -> None:
    lines = irgate("judge", "what causes rain", "--doc", PASSAGES[0], "--doc", PASSAGES[1], "--json",
                   "--max-reasoning-tokens", "8", "--server", judging_server.address).splitlines()
    verdicts = [json.loads(line) for line in lines]
    assert sorted(verdict["index"] for verdict in verdicts) == [0, 1]
    for verdict in verdicts:
        assert set(verdict) >= {"score", "relevant", "reasoning", "reasoning_tokens", "ended"}
        assert 0 <= verdict["score"] <= 1 and verdict["ended"] in ("answered", "forced")


def test_bench_judge_reports_the_ratio_to_the_naive_loop_and_shows_its_steps(judge_folder: Path) -> None:
    # --big 5: one document per concurrent call; the figures' sizes are the full run's to prove, not this one's.
    done = subprocess.run([sys.executable, "-m", "irgate", "bench", "judge", "--model", str(judge_folder), "--documents", "4",
                           "--big", "5", "--max-reasoning-tokens", "8", "--repeats", "1", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout holds the JSON object only: the steps went to stderr
    assert "bench judge: 7/7 steps, " in done.stderr and "elapsed" in done.stderr, done.stderr
    assert report["documents"] == 4
    assert report["max_score_diff"] < 1e-5  # the fast path judges exactly like the naive one
    # Both sides ran: each judged the documents and generated tokens, at a finite rate.
    for side in ("docs_per_s", "tokens_per_s", "naive_docs_per_s", "naive_tokens_per_s"):
        assert math.isfinite(report[side]) and report[side] > 0, (side, report)
    assert_ratio(report, "judge_vs_naive", "docs_per_s", "naive_docs_per_s")
    # Each scheduler figure is the quotient of the two sides it timed, both of which ran, and the
    # cancellation ended within the run (the goals are the full-size run's, not this small one's).
    assert_ratio(report, "concurrent_vs_single", "single_call_s", "concurrent_calls_s")
    assert_ratio(report, "small_behind_big", "small_behind_big_s", "small_alone_s")
    assert_ratio(report, "shared_prefix_speedup", "whole_prompts_s", "shared_prefix_s")
    assert report["shared_prefix_max_score_diff"] < 1e-5  # sharing the prefix changes no score
    assert math.isfinite(report["cancel_seconds"]) and 0 <= report["cancel_seconds"] < 600, report


def judge_metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(name))


def test_a_deadline_during_prefill_frees_the_judge(judging_server: LocalServer, judge_metrics_port: int) -> None:
    """Four passages at the context limit take tens of seconds to prefill on a CPU: a 1 s deadline
    stops that work within a chunk, and the next call is served."""
    cancelled = judge_metric(judge_metrics_port, "irgate_judge_cancelled_documents_total")
    long_text = "Rain forms when water vapour condenses into droplets. " * 1500
    with Client(judging_server.address) as client:
        with pytest.raises(IrgateError) as raised:
            client.judge("what causes rain", [long_text] * 4, max_reasoning_tokens=CAP, timeout=1.0)
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        deadline = time.monotonic() + 10
        while judge_busy(judge_metrics_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert judge_busy(judge_metrics_port) == 0.0
        assert judge_metric(judge_metrics_port, "irgate_judge_cancelled_documents_total") - cancelled == 4
        (verdict,) = client.judge("what causes rain", PASSAGES[:1], max_reasoning_tokens=0, timeout=60)
        assert verdict.ended == "forced"


def test_a_passed_deadline_stops_the_judge(judging_server: LocalServer, judge_metrics_port: int) -> None:
    with Client(judging_server.address) as client:
        with pytest.raises(IrgateError) as raised:
            client.judge(COUNTING, ["1\n2\n3\n4"] * 4, max_reasoning_tokens=CAP, timeout=1.0)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    deadline = time.monotonic() + 10
    while judge_busy(judge_metrics_port) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert judge_busy(judge_metrics_port) == 0.0

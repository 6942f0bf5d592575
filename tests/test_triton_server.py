"""irgate in front of a real NVIDIA Triton Inference Server: tritonserver 2.51 (CPU build, python
backend, unpacked by `make triton`) serving the CPU flavour of the model repository, whose models
speak the GPU flavour's tensor contracts. One tritonserver serves the whole module; the fault
tests start their own so that they can kill it.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import model_config_pb2, service_pb2

from irgate.backends.embedder import OnnxEmbedder
from irgate.backends.judge.contract import JudgeRequest, PassageText
from irgate.backends.judge.local import LocalJudge
from irgate.backends.judge.rank1 import ReasoningDelta
from irgate.domain.judging import Verdict
from irgate.backends.triton import RetryPolicy
from irgate.backends.triton_embedder import TritonEmbedder
from irgate.backends.triton_judge import TritonJudge, decode_stream_response
from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.errors import ResourceExhausted, Unavailable
from irgate.local_server import LocalServer
from irgate.models import triton as triton_models
from irgate.models.tritonserver import TritonServer
from irgate_client import Client, Document, IrgateError
from scifact_slice import SCIFACT, write_slice
from support import assert_ratio, judge_events, outcomes_of, wait_for

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)
TEXTS = [
    "query: what causes diabetes",
    "Insulin resistance is a major cause of type 2 diabetes, along with genetics and lifestyle.",
    "The moon's gravity raises ocean tides twice a day.",
    "short",
]
PASSAGES = [
    PassageText("Diabetes", "Insulin resistance is a major cause of type 2 diabetes, along with genetics and lifestyle."),
    PassageText("Tides", "The moon's gravity raises ocean tides twice a day."),
    PassageText("", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen in plant cells."),
]


# ---- the repository and the servers ---------------------------------------------------------------


def _variant(repository: Path, source: str, name: str, edit: Callable[[model_config_pb2.ModelConfig], None]) -> None:
    """Another model of the repository: `source`'s config renamed and edited, the same files."""
    config = text_format.Parse((repository / source / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    config.name = name
    edit(config)
    shutil.copytree(repository / source, repository / name)
    (repository / name / "config.pbtxt").write_text(text_format.MessageToString(config))


@pytest.fixture(scope="session")
def cpu_repository(minilm_folder: Path, judge_folder: Path, few_shot_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`irgate prepare --triton --triton-flavour cpu`, plus variants for the tests: the judge with
    the few-shot prompt (it answers by itself), the judge deployed non-decoupled (unary ModelInfer
    only, as `render_judge_config(decoupled=False)` writes it), and an embedder whose queue holds
    one request."""
    repository = tmp_path_factory.mktemp("triton") / "model_repository"
    triton_models.prepare_triton_repository(minilm_folder, repository, flavour="cpu", judge_folder=judge_folder)

    def few_shot(config: model_config_pb2.ModelConfig) -> None:
        config.parameters["folder"].string_value = str(few_shot_folder)

    def tight_queue(config: model_config_pb2.ModelConfig) -> None:
        config.dynamic_batching.default_queue_policy.max_queue_size = 1

    def unary(config: model_config_pb2.ModelConfig) -> None:
        config.model_transaction_policy.decoupled = False

    _variant(repository, "judge", "judge_few_shot", few_shot)
    _variant(repository, "judge", "judge_unary", unary)
    _variant(repository, "embedder", "embedder_tight", tight_queue)
    return repository


@pytest.fixture(scope="session")
def triton(cpu_repository: Path):
    """One tritonserver for the module, models loaded explicitly (so a test can unload one)."""
    with TritonServer(cpu_repository, explicit=True) as running:
        yield running


@pytest.fixture(scope="session")
def gateway(triton: TritonServer, minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """`irgate serve` with triton:// embedder and judge, as `make serve-triton` runs it."""
    args = ["--embedder", f"triton://{triton.address}/embedder", "--embedder-folder", str(minilm_folder),
            "--judge", f"triton://{triton.address}/judge", "--judge-folder", str(judge_folder)]
    with LocalServer(tmp_path_factory.mktemp("gateway"), args) as running:
        yield running


@pytest.fixture(scope="module")
def in_process_judge(judge_folder: Path):
    """The same judge folder in-process: the reference for the verdicts through Triton."""
    judge = LocalJudge(judge_folder, threads=2)
    yield judge
    asyncio.run(judge.close())


def _counter(metrics: str, name: str, **labels: str) -> float:
    """One sample of Triton's Prometheus text (labels matched as given, in any order)."""
    total = 0.0
    for line in metrics.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _judge(backend: Any, passages: list[PassageText], budget: int, stream: bool = False, query: str = "what causes diabetes") -> list[Any]:
    return judge_events(backend, JudgeRequest(query=query, instruction="", passages=tuple(passages), budget=budget,
                                              stream_reasoning=stream))


def _assert_same_verdicts(got: list[Verdict], expected: list[Verdict]) -> float:
    assert len(got) == len(expected)
    for outcome, reference in zip(got, expected, strict=True):
        assert (outcome.index, outcome.ended, outcome.reasoning_tokens, outcome.reasoning) == (
            reference.index, reference.ended, reference.reasoning_tokens, reference.reasoning)
        assert abs(outcome.score - reference.score) <= 1e-4, (outcome, reference)
    return max(abs(o.score - e.score) for o, e in zip(got, expected, strict=True))


# ---- the embedder ------------------------------------------------------------------------------------


def test_embeddings_through_triton_equal_in_process_and_are_batched(triton: TritonServer, minilm_folder: Path) -> None:
    local = OnnxEmbedder(minilm_folder, threads=1)
    remote = TritonEmbedder(f"triton://{triton.address}/embedder", minilm_folder)
    encoder = TextEncoder(local.manifest, minilm_folder)
    ids, mask = pad_batch([e.ids for e in encoder.encode(TEXTS)], local.manifest.pad_token_id)
    rows = [ids[i : i + 1, : int(mask[i].sum())] for i in range(len(TEXTS))]
    before = triton.metrics()

    async def run() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        try:
            assert await remote.ready()
            expected = await local.embed(ids, mask)
            batch = await remote.embed(ids, mask)
            # 40 concurrent one-text requests: Triton's dynamic batcher merges those of one bucket.
            singles = await asyncio.gather(*(remote.embed(row, np.ones_like(row)) for _ in range(10) for row in rows))
            return expected, batch, singles
        finally:
            await local.close()
            await remote.close()

    expected, batch, singles = asyncio.run(run())
    after = triton.metrics()
    assert batch.shape == expected.shape and batch.dtype == np.float32
    assert float(np.abs(batch - expected).max()) <= 1e-5
    assert max(float(np.abs(single[0] - expected[k % len(TEXTS)]).max()) for k, single in enumerate(singles)) <= 1e-5
    requests = _counter(after, "nv_inference_request_success", model="embedder") - _counter(before, "nv_inference_request_success", model="embedder")
    executions = _counter(after, "nv_inference_exec_count", model="embedder") - _counter(before, "nv_inference_exec_count", model="embedder")
    print(f"embedder: {requests:.0f} requests in {executions:.0f} executions")
    assert requests == 41 and executions < requests


def test_full_triton_queue_is_resource_exhausted(triton: TritonServer, minilm_folder: Path) -> None:
    tight = TritonEmbedder(f"triton://{triton.address}/embedder_tight", minilm_folder, retry=FAST_RETRY)

    async def run() -> list[Any]:
        try:
            # Lengths of different buckets cannot merge: one runs, one waits, the rest find the queue full.
            calls = [tight.embed(np.ones((64, 16 * k), np.int64), np.ones((64, 16 * k), np.int64)) for k in range(1, 17)]
            return await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await tight.close()

    results = asyncio.run(run())
    refused = [r for r in results if isinstance(r, Exception)]
    assert refused and all(isinstance(r, ResourceExhausted) for r in refused), refused
    assert "queue of model 'embedder_tight' is full" in str(refused[0])
    assert any(isinstance(r, np.ndarray) and r.shape == (64, 384) for r in results)


def test_model_not_loaded_is_unavailable_naming_it(triton: TritonServer, gateway: LocalServer, minilm_folder: Path) -> None:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(triton.address) as admin, Client(gateway.address, timeout=60) as client:
        admin.unload_model("embedder_tight")
        try:
            wait_for(lambda: not admin.is_model_ready("embedder_tight"), 30, "unloading")
            backend = TritonEmbedder(f"triton://{triton.address}/embedder_tight", minilm_folder, retry=FAST_RETRY)

            async def run() -> None:
                try:
                    assert await backend.ready() is False
                    with pytest.raises(Unavailable, match="model 'embedder_tight' is not loaded"):
                        await backend.embed(np.ones((1, 4), np.int64), np.ones((1, 4), np.int64))
                finally:
                    await backend.close()

            asyncio.run(run())
        finally:
            admin.load_model("embedder_tight")
        # Through the gateway: its own embedder model unloaded -> UNAVAILABLE naming it.
        admin.unload_model("embedder")
        try:
            wait_for(lambda: not admin.is_model_ready("embedder"), 30, "unloading")
            with pytest.raises(IrgateError) as raised:
                client.embed(["rain"])
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE and "'embedder'" in raised.value.message
        finally:
            admin.load_model("embedder")
        assert len(client.embed(["rain"])) == 1


# ---- the judge ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streamed"])
def test_judge_through_triton_equals_local_judge(triton: TritonServer, judge_folder: Path, in_process_judge: LocalJudge,
                                                 stream: bool) -> None:
    address = f"triton://{triton.address}/judge" if stream else f"triton://{triton.address}/judge_unary?stream=0"
    judge = TritonJudge(address, judge_folder)
    assert judge.streaming is stream
    worst = 0.0
    try:
        for budget in (0, 8, 24):
            events = _judge(judge, PASSAGES, budget, stream=True)
            expected = outcomes_of(_judge(in_process_judge, PASSAGES, budget))
            worst = max(worst, _assert_same_verdicts(outcomes_of(events), expected))
            for outcome in outcomes_of(events):  # the streamed reasoning is the reasoning
                deltas = "".join(e.text for e in events if isinstance(e, ReasoningDelta) and e.index == outcome.index)
                assert deltas == outcome.reasoning
    finally:
        asyncio.run(judge.close())
    print(f"judge ({'streamed' if stream else 'unary'}): max score diff vs local {worst:.2e}")


def test_answered_documents_are_stopped_inside_triton(triton: TritonServer, few_shot_folder: Path) -> None:
    """With the few-shot prompt the judge answers by itself: scored from the streamed logits of the
    answer step, and the gateway's `stop` request ends the generation inside Triton at once."""
    local = LocalJudge(few_shot_folder, threads=2)
    remote = TritonJudge(f"triton://{triton.address}/judge_few_shot", few_shot_folder)
    before = triton.metrics()
    try:
        expected = outcomes_of(_judge(local, PASSAGES[:2], 48))
        events = _judge(remote, PASSAGES[:2], 48)
    finally:
        asyncio.run(local.close())
        asyncio.run(remote.close())
    _assert_same_verdicts(outcomes_of(events), expected)
    assert {o.ended for o in expected} == {"answered"}

    def cut_short() -> float:  # stop requests, and for the last document the call's end cancelling it
        now = triton.metrics()
        return sum(_counter(now, "irgate_judge_sequences_total", model="judge_few_shot", ended=reason)
                   - _counter(before, "irgate_judge_sequences_total", model="judge_few_shot", ended=reason)
                   for reason in ("stopped", "cancelled"))

    wait_for(lambda: cut_short() == 2, 10, "both answered documents ending inside Triton")
    generated = _counter(triton.metrics(), "irgate_judge_generated_tokens_total", model="judge_few_shot") - \
        _counter(before, "irgate_judge_generated_tokens_total", model="judge_few_shot")
    # No document ran on to its budget: at most one step past each answer.
    assert generated <= sum(o.reasoning_tokens for o in expected) + 2 * len(expected)


def _stream_request(request_id: str, prompt: list[int], output_len: int, stop: bool = False) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="judge", id=request_id)
    arrays = [("input_ids", "INT32", np.asarray([prompt], np.int32)),
              ("input_lengths", "INT32", np.asarray([[len(prompt)]], np.int32)),
              ("request_output_len", "INT32", np.asarray([[output_len]], np.int32)),
              ("streaming", "BOOL", np.asarray([[True]])),
              ("stop", "BOOL", np.asarray([[stop]]))]
    for name, datatype, array in arrays:
        request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        request.raw_input_contents.append(array.tobytes())
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    return request


def test_stop_request_and_cancelled_call_end_generation_inside_triton(triton: TritonServer, judge_folder: Path) -> None:
    """TensorRT-LLM's `stop` request, then a client that goes away: both end the sequence inside
    Triton within an engine step (counted by the model), long before its budget."""
    from tritonclient.grpc import service_pb2_grpc

    prompt = list(range(1000, 1040))
    budget = 2000

    def ended(reason: str) -> float:
        return _counter(triton.metrics(), "irgate_judge_sequences_total", model="judge", ended=reason)

    stopped_before, cancelled_before = ended("stopped"), ended("cancelled")

    async def stop_after(tokens: int) -> tuple[int, bool]:
        outgoing: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> Any:
            while (request := await outgoing.get()) is not None:
                yield request

        async with grpc.aio.insecure_channel(triton.address) as channel:
            call = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(requests())
            outgoing.put_nowait(_stream_request("s:0:g", prompt, budget))
            received, finals = 0, 0
            async for message in call:
                step = decode_stream_response(message)
                received += len(step.tokens)
                if received == tokens and not step.final:
                    outgoing.put_nowait(_stream_request("s:0:g", [0], 1, stop=True))
                finals += step.final
                if finals == 2:  # the stop request's answer and the stopped request's last one
                    break
            outgoing.put_nowait(None)
            call.cancel()
        return received, finals == 2

    received, both_final = asyncio.run(stop_after(5))
    assert both_final and received < 50
    wait_for(lambda: ended("stopped") == stopped_before + 1, 10, "the stop request being counted")

    # A gateway call whose client leaves: the stream is cancelled, Triton cancels its requests.
    judge = TritonJudge(f"triton://{triton.address}/judge", judge_folder)
    passages = [PassageText("", "Tides rise and fall twice a day because of the moon.")] * 2

    async def leave_early() -> None:
        request = JudgeRequest(query="tides", instruction="", passages=tuple(passages), budget=2000, stream_reasoning=True)
        events = judge.judge(request)
        async for event in events:
            if isinstance(event, ReasoningDelta):
                break
        await events.aclose()
        await judge.close()

    asyncio.run(leave_early())
    took = wait_for(lambda: ended("cancelled") >= cancelled_before + 2, 15, "the cancelled call's sequences ending")
    tokens = _counter(triton.metrics(), "irgate_judge_generated_tokens_total", model="judge")
    time.sleep(1.0)
    assert _counter(triton.metrics(), "irgate_judge_generated_tokens_total", model="judge") == tokens  # nothing runs on
    print(f"cancelled call: sequences ended {took:.2f}s after the client left")


# ---- the gateway in front of Triton -----------------------------------------------------------------


def test_gateway_info_reports_triton_backends(gateway: LocalServer, triton: TritonServer) -> None:
    with Client(gateway.address, timeout=60) as client:
        info = client.info()
    assert info.backend == f"triton://{triton.address}/embedder"
    assert info.judge_backend == f"triton://{triton.address}/judge"


def test_concurrent_search_with_rerank_from_8_clients(gateway: LocalServer, triton: TritonServer) -> None:
    queries = ["what causes diabetes", "ocean tides", "how plants make sugar", "moon gravity",
               "insulin", "photosynthesis in cells", "type 2 diabetes lifestyle", "why do tides happen"]
    documents = [Document(id=str(i), title=passage.title, text=passage.text) for i, passage in enumerate(PASSAGES)]
    documents += [Document(id=f"t{i}", text=text) for i, text in enumerate(TEXTS)]
    with Client(gateway.address, timeout=300) as client:
        client.create_collection("eight-clients")
        client.upsert("eight-clients", documents)

        def search(query: str) -> list[tuple[str, float, str]]:
            hits = client.search("eight-clients", query, k=4, rerank=3, max_reasoning_tokens=6)
            return [(hit.id, hit.score, hit.verdict.ended if hit.verdict else "") for hit in hits]

        one_by_one = [search(query) for query in queries]
        before = triton.metrics()
        with ThreadPoolExecutor(8) as pool:
            together = list(pool.map(search, queries))
        after = triton.metrics()
    for alone, concurrent in zip(one_by_one, together, strict=True):
        assert [hit[0] for hit in concurrent] == [hit[0] for hit in alone]
        assert [hit[2] for hit in concurrent] == [hit[2] for hit in alone] and all(hit[2] for hit in alone[:3])
        assert np.allclose([hit[1] for hit in concurrent], [hit[1] for hit in alone], atol=1e-4)

    def delta(name: str, model: str) -> float:
        return _counter(after, name, model=model) - _counter(before, name, model=model)

    judge_requests, judge_runs = delta("nv_inference_request_success", "judge"), delta("nv_inference_exec_count", "judge")
    print(f"8 clients: judge {judge_requests:.0f} requests in {judge_runs:.0f} executions; embedder "
          f"{delta('nv_inference_request_success', 'embedder'):.0f} in {delta('nv_inference_exec_count', 'embedder'):.0f}")
    assert judge_requests >= 8 * 3 and judge_runs < judge_requests  # Triton handed the model requests together


def _eval_beir(data: Path, *where: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "irgate", "eval", "beir", "--data", str(data), "--json", "--no-cache", *where],
                          capture_output=True, text=True, timeout=1800, check=True)
    return json.loads(done.stdout)


def test_a_scifact_slice_through_triton_scores_as_in_process(gateway: LocalServer, minilm_folder: Path, tmp_path: Path) -> None:
    """30 SciFact queries over 202 documents through `irgate eval beir --server` with the embedder on
    Triton: the nDCG@10 of the same evaluation with the embedder in process."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is not here (shared/ lies beside the checkout)")
    data = write_slice(tmp_path / "slice")
    through_triton = _eval_beir(data, "--server", gateway.address)
    in_process = _eval_beir(data, "--embedder", f"onnx:{minilm_folder}", "--judge", "none")
    assert (through_triton["queries"], through_triton["docs"]) == (30, 202)
    assert abs(through_triton["ndcg@10"] - in_process["ndcg@10"]) <= 1e-4, (through_triton, in_process)
    assert abs(through_triton["recall@100"] - in_process["recall@100"]) <= 1e-4, (through_triton, in_process)


@pytest.mark.skipif(os.environ.get("IRGATE_SOAK_SCIFACT") != "1", reason="5,183 documents, minutes: make soak runs it")
def test_scifact_through_triton_matches_in_process(gateway: LocalServer) -> None:
    """SciFact through `irgate eval beir --server` with the embedder on Triton: the in-process
    nDCG@10 (all-MiniLM-L6-v2: 0.6451; MTEB publishes 0.64508)."""
    if not SCIFACT.exists():
        pytest.skip(f"{SCIFACT} is not here (shared/ lies beside the checkout)")
    report = _eval_beir(SCIFACT, "--server", gateway.address)
    print(f"SciFact through Triton: {report}")
    assert (report["queries"], report["docs"]) == (300, 5183)
    assert abs(report["ndcg@10"] - 0.6451) <= 1e-4, report


def test_bench_embed_through_triton_reports_ratios_on_equal_vectors(minilm_folder: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "irgate", "bench", "embed", "--triton", "--model", str(minilm_folder),
                           "--documents", "16", "--json"], capture_output=True, text=True, timeout=900, check=True)
    report = json.loads(done.stdout)
    assert report["documents"] == 16
    for clients in (1, 16):
        assert_ratio(report, f"triton_vs_in_process_{clients}_clients", f"triton_docs_per_s_{clients}_clients",
                     f"in_process_docs_per_s_{clients}_clients")
    assert report["triton_hop_p50_ms"] == pytest.approx(report["triton_one_text_p50_ms"] - report["in_process_one_text_p50_ms"], abs=0.02)
    assert report["max_abs_diff_triton_vs_in_process"] <= 1e-5  # the same vectors, or the speed means nothing


# ---- faults: a tritonserver of its own, killed and restarted -------------------------------------------


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="irgate.v1.Embed"), timeout=10).status


def test_killed_triton_is_unavailable_then_picked_up_again(cpu_repository: Path, minilm_folder: Path, judge_folder: Path,
                                                           tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    for model in ("embedder", "judge"):
        shutil.copytree(cpu_repository / model, repository / model)
    first = TritonServer(repository).start()
    ports = {"grpc_port": first.grpc_port, "http_port": first.http_port, "metrics_port": first.metrics_port}
    args = ["--embedder", f"triton://{first.address}/embedder", "--embedder-folder", str(minilm_folder),
            "--judge", f"triton://{first.address}/judge", "--judge-folder", str(judge_folder)]
    restarted: TritonServer | None = None
    try:
        with LocalServer(tmp_path / "gateway", args) as gateway, Client(gateway.address, timeout=120) as client:
            assert _health(gateway.address) == health_pb2.HealthCheckResponse.SERVING
            # Mid-call: a judge call with a long budget is generating when the server dies.
            outcome: dict[str, Any] = {}

            def long_call() -> None:
                started = time.monotonic()
                try:
                    client.judge("tides", ["The moon raises the tides."] * 2, max_reasoning_tokens=2000)
                except IrgateError as error:
                    outcome["error"] = error
                outcome["seconds"] = time.monotonic() - started

            caller = threading.Thread(target=long_call)
            caller.start()
            wait_for(lambda: _counter(first.metrics(), "irgate_judge_generated_tokens_total", model="judge") > 0, 60,
                      "the judge generating")
            killed_at = time.monotonic()
            first.kill()
            caller.join(timeout=60)
            assert not caller.is_alive(), "the call did not end after Triton died"
            error = outcome.get("error")
            assert error is not None and error.code == grpc.StatusCode.UNAVAILABLE, outcome
            unavailable_after = time.monotonic() - killed_at
            assert unavailable_after < 30
            with pytest.raises(IrgateError) as raised:
                client.embed(["rain"])
            assert raised.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in raised.value.message
            not_serving_after = time.monotonic() - killed_at
            not_serving_after += wait_for(lambda: _health(gateway.address) == health_pb2.HealthCheckResponse.NOT_SERVING,
                                           20, "NOT_SERVING")

            restarted = TritonServer(repository, **ports).start()
            serving_after = wait_for(lambda: _health(gateway.address) == health_pb2.HealthCheckResponse.SERVING, 30,
                                      "SERVING again")
            print(f"Triton killed: the call UNAVAILABLE after {unavailable_after:.1f}s, health NOT_SERVING after "
                  f"{not_serving_after:.1f}s; restarted: SERVING {serving_after:.1f}s after it was ready")
            assert len(client.embed(["rain"])) == 1
            (verdict,) = client.judge("tides", ["The moon raises the tides."], max_reasoning_tokens=2)
            assert verdict.ended == "forced"
    finally:
        first.stop()
        if restarted is not None:
            restarted.stop()

"""The Triton path: configs checked against Triton's real schema, the backends against a real,
independent KServe v2 server (MLServer 1.7.1, tests/triton_peer), the streamed form against
real Triton message types.

What cannot run here (no GPU, no Triton): tritonserver itself, the onnxruntime/TensorRT-LLM
backends and trtllm-build. docs/triton.md says what that leaves untested.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2, service_pb2

from irgate.backends.embedder import EmbedderBackend, OnnxEmbedder
from irgate.backends.judge import JudgeBackend, JudgeEvent, JudgeOutcome, LocalJudge, ReasoningDelta
from irgate.backends import triton_embedder, triton_judge
from irgate.backends.triton import RetryPolicy, parse_address
from irgate.backends.triton_embedder import TritonEmbedder, bucket_length, pad_to_bucket
from irgate.backends.triton_judge import FINAL_PARAMETER, TritonJudge, decode_stream_response
from irgate.bench.judge import benchmark_prompts
from irgate.core.judging import judge_prompt
from irgate.core.tokenization import TextEncoder, pad_batch
from irgate.errors import FailedPrecondition, InvalidArgument, Unavailable
from irgate.models import triton as triton_models
from conftest import free_port, judge_events, outcomes_of
from irgate.local_server import LocalServer
from irgate_client import Client, Document, IrgateError

REPO = Path(__file__).resolve().parent.parent
REPOSITORY = REPO / "model_repository"
sys.path.insert(0, str(Path(__file__).resolve().parent / "triton_peer"))

from generation import GreedyGenerator  # noqa: E402
from peer import MLServerPeer  # noqa: E402

FAST_RETRY = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.05)
TEXTS = [
    "query: what causes diabetes",
    "Insulin resistance is a major cause of type 2 diabetes, along with genetics and lifestyle.",
    "The moon's gravity raises ocean tides twice a day.",
    "short",
]


def _config(model: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse((REPOSITORY / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peer(minilm_folder: Path, judge_folder: Path, tmp_path_factory: pytest.TempPathFactory):
    """MLServer serving the embedder's model.onnx and the judge's causal LM (greedy, TRT-LLM tensors)."""
    models = {
        "embedder": {"template": "embedder", "uri": minilm_folder / "model.onnx"},
        "judge": {"template": "judge", "uri": judge_folder},
    }
    with MLServerPeer(tmp_path_factory.mktemp("mlserver"), models) as running:
        yield running


# ---- configs: Triton's own schema, and the backends' tensor contract ----------------------


@pytest.mark.parametrize("model", ["embedder", "judge"])
def test_config_parses_strictly(model: str) -> None:
    config = _config(model)
    assert config.name == model
    assert config.max_batch_size > 0
    assert triton_models.parse_config((REPOSITORY / model / "config.pbtxt").read_text()).name == model


def test_misspelled_config_field_fails() -> None:
    text = (REPOSITORY / "embedder" / "config.pbtxt").read_text()
    broken = text.replace("max_queue_delay_microseconds", "max_queue_delay_microsecond")
    with pytest.raises(text_format.ParseError, match="max_queue_delay_microsecond"):
        text_format.Parse(broken, model_config_pb2.ModelConfig())
    with pytest.raises(InvalidArgument, match="not a valid Triton model config"):
        triton_models.parse_config(broken)
    with pytest.raises(text_format.ParseError):
        text_format.Parse(text.replace("KIND_GPU", "KIND_GPUS"), model_config_pb2.ModelConfig())


def _tensors(config: model_config_pb2.ModelConfig, tensors: Any) -> dict[str, tuple[str, list[int]]]:
    batch = [-1] if config.max_batch_size > 0 else []
    return {t.name: (model_config_pb2.DataType.Name(t.data_type), batch + list(t.dims)) for t in tensors}


def _specs(specs: Any, **fields: int) -> dict[str, tuple[str, list[int]]]:
    return {s.name: (f"TYPE_{s.datatype}", [fields[d] if isinstance(d, str) else d for d in s.dims]) for s in specs}


def test_embedder_config_matches_backend_tensors(minilm_folder: Path) -> None:
    config = _config("embedder")
    dimension = OnnxEmbedder(minilm_folder).manifest.dimension  # the template is filled for the default model
    assert _tensors(config, config.input) == _specs(triton_embedder.INPUTS)
    assert _tensors(config, config.output) == _specs(triton_embedder.OUTPUTS, dimension=dimension)
    assert config.max_batch_size == triton_embedder.MAX_BATCH_SIZE
    assert config.backend == "onnxruntime"
    assert list(config.dynamic_batching.preferred_batch_size) and config.dynamic_batching.default_queue_policy.max_queue_size > 0
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["trt_engine_cache_enable"] == "1"
    # ...and the graph irgate exports has exactly these tensors.
    session = OnnxEmbedder(minilm_folder)._session
    assert [i.name for i in session.get_inputs()] == [s.name for s in triton_embedder.INPUTS]
    assert [o.name for o in session.get_outputs()] == [triton_embedder.EMBEDDING.name]


def test_judge_config_matches_backend_tensors() -> None:
    config = _config("judge")
    # TRT-LLM reshapes [1] scalars to [] per request; the request still carries [batch, 1].
    assert _tensors(config, config.input) == _specs(triton_judge.INPUTS)
    assert _tensors(config, config.output) == _specs(triton_judge.OUTPUTS)
    optional = {t.name for t in config.input if t.optional}
    assert optional == set(triton_judge.OPTIONAL_INPUTS)
    assert config.backend == "tensorrtllm"
    assert config.model_transaction_policy.decoupled
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters["gpt_model_type"] == "inflight_fused_batching"
    assert parameters["enable_kv_cache_reuse"] == "true"
    assert parameters["exclude_input_in_output"] == "true"


# ---- small pure pieces -----------------------------------------------------------------------


def test_addresses() -> None:
    address = parse_address("triton://127.0.0.1:8001/judge?stream=0")
    assert (address.host, address.port, address.model, address.url) == ("127.0.0.1", 8001, "judge", "127.0.0.1:8001")
    assert address.flag("stream", True) is False
    assert str(address) == "triton://127.0.0.1:8001/judge?stream=0"
    for bad in ("onnx:/x", "triton://host/model", "triton://host:80", "triton://host:80/a/b", "triton://h:1/m?strem=1",
                "triton://h:x/m"):
        with pytest.raises(InvalidArgument):
            parse_address(bad)


def test_length_buckets() -> None:
    assert [bucket_length(n, 256) for n in (1, 16, 17, 100, 129, 256)] == [16, 16, 32, 128, 256, 256]
    assert bucket_length(200, 200) == 200 and bucket_length(600, 2048) == 1024
    ids, mask = pad_to_bucket(np.ones((2, 20), np.int64), np.ones((2, 20), np.int64), 0, 256)
    assert ids.shape == mask.shape == (2, 32) and mask[:, 20:].sum() == 0 and (ids[:, 20:] == 0).all()


# ---- model repository and engine build ------------------------------------------------------


def test_prepare_triton_repository(minilm_folder: Path, tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(REPOSITORY, repository)
    config_path = triton_models.prepare_triton_repository(minilm_folder, repository)
    onnx = repository / "embedder" / "1" / "model.onnx"
    assert onnx.read_bytes() == (minilm_folder / "model.onnx").read_bytes()
    # The default model fills the template with what it already says: the git file is unchanged.
    assert config_path.read_text() == (REPOSITORY / "embedder" / "config.pbtxt").read_text()

    # Another model's dimension and limit replace the marked values; comments stay.
    other = tmp_path / "other"
    shutil.copytree(minilm_folder, other)
    manifest = OnnxEmbedder(minilm_folder).manifest
    dataclasses.replace(manifest, dimension=768, max_tokens=512).save(other)
    triton_models.prepare_triton_repository(other, repository, engine_cache=tmp_path / "cache")
    text = config_path.read_text()
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert list(config.output[0].dims) == [768]
    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.parameters["trt_profile_max_shapes"] == "input_ids:64x512,attention_mask:64x512"
    assert accelerator.parameters["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert "# irgate: dimension" in text and "dynamic batcher" in text

    # An empty repository gets the source tree's template.
    fresh = tmp_path / "fresh"
    triton_models.prepare_triton_repository(minilm_folder, fresh)
    assert (fresh / "embedder" / "1" / "model.onnx").is_file()


def test_engine_build_commands(smollm2_hf: Path, tmp_path: Path) -> None:
    convert, build = triton_models.build_judge_engine_commands(smollm2_hf, tmp_path / "repo", max_batch_size=16)
    assert convert[1] == "-c" and "from_hugging_face" in convert[2] and convert[3] == str(smollm2_hf.resolve())
    assert build[0] == "trtllm-build"
    assert "--gather_generation_logits" in build
    flags = {flag: value for flag, value in zip(build, build[1:] + [""]) if flag.startswith("--")}
    assert flags["--logits_dtype"] == "float32"
    assert flags["--paged_kv_cache"] == "enable" and flags["--use_paged_context_fmha"] == "enable"
    assert flags["--remove_input_padding"] == "enable" and flags["--max_batch_size"] == "16"
    assert flags["--output_dir"] == str(triton_models.engine_dir_of(tmp_path / "repo"))
    assert int(flags["--max_input_len"]) < int(flags["--max_seq_len"]) <= 16384


def test_engine_build_without_trtllm_fails_clearly(smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(triton_models.shutil, "which", lambda name: None)
    with pytest.raises(FailedPrecondition, match="trtllm-build not found.*NVIDIA GPU"):
        triton_models.build_judge_engine(smollm2_hf, tmp_path)


def test_engine_build_runs_and_fills_config(smollm2_hf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repository = tmp_path / "repo"
    shutil.copytree(REPOSITORY, repository)
    ran: list[list[str]] = []
    monkeypatch.setattr(triton_models.shutil, "which", lambda name: f"/usr/bin/{name}")

    def run(command: list[str], check: bool) -> subprocess.CompletedProcess:
        ran.append(command)
        return subprocess.CompletedProcess(command, 0)

    engine = triton_models.build_judge_engine(smollm2_hf, repository, run=run, decoupled=False)
    assert [command[0] for command in ran] == [sys.executable, "trtllm-build"]
    config = text_format.Parse((repository / "judge" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.parameters["gpt_model_path"].string_value == str(engine)
    assert not config.model_transaction_policy.decoupled

    def failing(command: list[str], check: bool) -> subprocess.CompletedProcess:
        return subprocess.CompletedProcess(command, 3)

    with pytest.raises(FailedPrecondition, match="exit code 3"):
        triton_models.build_judge_engine(smollm2_hf, repository, run=failing)


# ---- readiness and failures without a server -------------------------------------------------


def test_dead_port_is_not_ready_and_embed_is_unavailable(minilm_folder: Path) -> None:
    port = free_port()  # nobody listens there
    backend = TritonEmbedder(f"triton://127.0.0.1:{port}/embedder", minilm_folder, retry=FAST_RETRY)
    assert isinstance(backend, EmbedderBackend) and backend.folder == minilm_folder.resolve()

    async def run() -> None:
        assert await backend.ready() is False
        ids, mask = pad_batch([[101, 2000, 102]], 0)
        started = time.monotonic()
        with pytest.raises(Unavailable, match=rf"Triton at 127.0.0.1:{port} is unreachable.*3 times"):
            await backend.embed(ids, mask)
        assert time.monotonic() - started < 10
        await backend.close()
        with pytest.raises(Unavailable, match="closed"):
            await backend.embed(ids, mask)

    asyncio.run(run())


# ---- the streamed (decoupled) form: real Triton message types ---------------------------------


def _response(request_id: str, tokens: list[int], logits: np.ndarray | None, final: bool) -> service_pb2.ModelStreamInferResponse:
    infer = service_pb2.ModelInferResponse(model_name="judge", id=request_id)
    arrays = [("output_ids", "INT32", np.asarray(tokens, np.int32).reshape(1, 1, -1)),
              ("sequence_length", "INT32", np.asarray([[len(tokens)]], np.int32))]
    if logits is not None:
        arrays.append(("generation_logits", "FP32", logits.astype(np.float32).reshape(1, 1, *logits.shape)))
    for name, datatype, array in arrays if tokens or logits is not None else []:
        infer.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
        infer.raw_output_contents.append(array.tobytes())
    infer.parameters[FINAL_PARAMETER].bool_param = final
    return service_pb2.ModelStreamInferResponse(infer_response=infer)


def test_decode_stream_response() -> None:
    logits = np.arange(2 * 5, dtype=np.float32).reshape(2, 5)
    step = decode_stream_response(_response("7:1:g", [3, 4], logits, final=False))
    assert (step.request_id, step.tokens, step.final) == ("7:1:g", [3, 4], False)
    np.testing.assert_array_equal(step.logits, logits)
    # output_ids padded past sequence_length (TRT-LLM pads with -1) are cut.
    padded = _response("x", [9, -1, -1], None, final=True)
    padded.infer_response.raw_output_contents[1] = np.asarray([[1]], np.int32).tobytes()
    step = decode_stream_response(padded)
    assert step.tokens == [9] and step.final and step.logits is None
    empty = decode_stream_response(_response("x", [], None, final=True))
    assert empty.tokens == [] and empty.final
    with pytest.raises(FailedPrecondition, match="out of memory"):
        decode_stream_response(service_pb2.ModelStreamInferResponse(error_message="out of memory"))


class _FakeDecoupledTrtllm:
    """Stands in for the gRPC stub's ModelStreamInfer: a decoupled `tensorrt_llm` model that
    streams one token per response as real ModelStreamInferResponse messages, honours `stop`
    requests, and computes with the same greedy generator as the MLServer peer."""

    def __init__(self, generator: GreedyGenerator) -> None:
        self.generator = generator
        self.stopped: list[str] = []
        self.generated = 0

    def ModelStreamInfer(self, requests: Any, metadata: Any = None, timeout: Any = None, compression: Any = None) -> Any:
        return _FakeCall(self, requests)


class _FakeCall:
    def __init__(self, model: _FakeDecoupledTrtllm, requests: Any) -> None:
        self.model = model
        self.out: asyncio.Queue[Any] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.reader = asyncio.ensure_future(self._read(requests))
        self.iterator = self._responses()

    def __aiter__(self) -> Any:
        return self.iterator

    async def _responses(self) -> Any:
        while (message := await self.out.get()) is not None:
            yield message

    async def _read(self, requests: Any) -> None:
        try:
            await self._serve(requests)
        except BaseException as error:  # surface a broken fake instead of hanging the stream
            self.out.put_nowait(service_pb2.ModelStreamInferResponse(error_message=f"fake model: {error!r}"))
            raise

    async def _serve(self, requests: Any) -> None:
        from tritonclient.utils import triton_to_np_dtype

        async for request in requests:
            inputs = {tensor.name: np.frombuffer(raw, dtype=triton_to_np_dtype(tensor.datatype)).reshape(tensor.shape)
                      for tensor, raw in zip(request.inputs, request.raw_input_contents)}
            assert request.parameters["triton_enable_empty_final_response"].bool_param
            if "stop" in inputs and inputs["stop"].reshape(-1)[0]:
                self.model.stopped.append(request.id)
                self.out.put_nowait(_response(request.id, [], None, final=True))
                continue
            assert inputs["streaming"].reshape(-1)[0] and inputs["return_generation_logits"].reshape(-1)[0]
            self.tasks.append(asyncio.ensure_future(self._generate(request.id, inputs)))
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.out.put_nowait(None)

    async def _generate(self, request_id: str, inputs: dict[str, np.ndarray]) -> None:
        ids = inputs["input_ids"].reshape(-1)[: int(inputs["input_lengths"].reshape(-1)[0])].tolist()
        budget = int(inputs["request_output_len"].reshape(-1)[0])
        end_id = int(inputs["end_id"].reshape(-1)[0])
        # Token by token, as the engine streams: the gateway sees each before the next exists.
        for k, (token, logits) in enumerate(self.model.generator.steps(ids, budget, end_id)):
            if request_id in self.model.stopped:
                return
            self.model.generated += 1
            final = k == budget - 1 or token == end_id
            self.out.put_nowait(_response(request_id, [token], logits[None, :], final=final))
            await asyncio.sleep(0.001)  # let the gateway read it and send stop requests

    def cancel(self) -> bool:
        for task in [self.reader, *self.tasks]:
            task.cancel()
        self.out.put_nowait(None)
        return True


def _streamed(folder: Path, generator: GreedyGenerator, prompts: list[str], budget: int,
              stream: bool) -> tuple[list[JudgeEvent], _FakeDecoupledTrtllm]:
    judge = TritonJudge(f"triton://127.0.0.1:{free_port()}/judge", folder)
    fake = _FakeDecoupledTrtllm(generator)

    async def run() -> list[JudgeEvent]:
        judge._client.stream_stub = lambda: fake  # type: ignore[method-assign]
        try:
            return [event async for event in judge.judge(prompts, budget, stream_reasoning=stream)]
        finally:
            await judge.close()

    return asyncio.run(run()), fake


def _assert_same(outcomes: list[JudgeOutcome], reference: list[JudgeOutcome]) -> None:
    assert len(outcomes) == len(reference)
    for outcome, expected in zip(outcomes, reference):
        assert (outcome.index, outcome.ended, outcome.reasoning_tokens) == (expected.index, expected.ended, expected.reasoning_tokens)
        assert outcome.reasoning == expected.reasoning
        assert abs(outcome.score - expected.score) <= 1e-4, (outcome, expected)


def test_streamed_judge_equals_local_judge(judge_folder: Path, few_shot_folder: Path, local_judge: LocalJudge) -> None:
    generator = GreedyGenerator(str(judge_folder), threads=2)
    prompts = benchmark_prompts(local_judge.manifest, 3)
    for budget in (0, 8):
        events, _ = _streamed(judge_folder, generator, prompts, budget, stream=True)
        _assert_same(outcomes_of(events), outcomes_of(judge_events(local_judge, prompts, budget)))
        for outcome in outcomes_of(events):  # deltas concatenate to the reasoning
            deltas = "".join(e.text for e in events if isinstance(e, ReasoningDelta) and e.index == outcome.index)
            assert deltas == outcome.reasoning

    # The answered path: scored from the streamed logits of the answer step, and stopped there.
    few_shot = LocalJudge(few_shot_folder, threads=2)
    try:
        prompts = [
            judge_prompt(few_shot.manifest, "what causes diabetes", "", "", "Insulin resistance is a major cause of type 2 diabetes."),
            judge_prompt(few_shot.manifest, "tides", "", "", "The moon's gravity raises ocean tides."),
        ]
        expected = outcomes_of(judge_events(few_shot, prompts, 48))
    finally:
        asyncio.run(few_shot.close())
    events, fake = _streamed(few_shot_folder, generator, prompts, 48, stream=False)
    outcomes = outcomes_of(events)
    _assert_same(outcomes, expected)
    assert {o.ended for o in outcomes} == {"answered"}
    # A document that answered is stopped (the last one ends with the stream's cancel): the
    # model generated no token past any answer.
    assert fake.stopped and fake.generated <= sum(o.reasoning_tokens for o in outcomes) + len(prompts)
    assert not any(isinstance(e, ReasoningDelta) for e in events)


# ---- against the independent peer (MLServer) ------------------------------------------------


def test_peer_readiness(peer: MLServerPeer, minilm_folder: Path) -> None:
    async def run() -> None:
        backend = TritonEmbedder(f"triton://{peer.address}/embedder", minilm_folder)
        unknown = TritonEmbedder(f"triton://{peer.address}/no-such-model", minilm_folder, retry=FAST_RETRY)
        try:
            assert await backend.ready() is True
            assert await unknown.ready() is False  # MLServer raises for an unknown model; still a plain no
            ids, mask = pad_batch([[101, 2000, 102]], 0)
            with pytest.raises(Unavailable, match="no-such-model"):
                await unknown.embed(ids, mask)
        finally:
            await backend.close()
            await unknown.close()

    asyncio.run(run())


def test_embeddings_through_triton_equal_in_process(peer: MLServerPeer, minilm_folder: Path) -> None:
    local = OnnxEmbedder(minilm_folder, threads=1)
    remote = TritonEmbedder(f"triton://{peer.address}/embedder", minilm_folder)
    encoder = TextEncoder(local.manifest, minilm_folder)
    ids, mask = pad_batch([e.ids for e in encoder.encode(TEXTS)], local.manifest.pad_token_id)
    batch = [ids[i : i + 1, : int(mask[i].sum())] for i in range(len(TEXTS))]

    async def run() -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        try:
            expected = await local.embed(ids, mask)
            got = await remote.embed(ids, mask)
            # Concurrent single-text requests (each padded to its own bucket).
            singles = await asyncio.gather(*(remote.embed(one, np.ones_like(one)) for one in batch))
            return expected, got, singles
        finally:
            await local.close()
            await remote.close()

    expected, got, singles = asyncio.run(run())
    assert got.shape == expected.shape == (len(TEXTS), local.manifest.dimension) and got.dtype == np.float32
    diff = float(np.abs(got - expected).max())
    single_diff = float(np.abs(np.concatenate(singles) - expected).max())
    print(f"embedder max abs diff: batch {diff:.2e}, singles {single_diff:.2e}")
    assert diff <= 1e-5 and single_diff <= 1e-5


def test_judge_through_triton_equals_local_judge(peer: MLServerPeer, judge_folder: Path, local_judge: LocalJudge) -> None:
    judge = TritonJudge(f"triton://{peer.address}/judge?stream=0", judge_folder)
    assert isinstance(judge, JudgeBackend) and judge.streaming is False
    prompts = benchmark_prompts(local_judge.manifest, 3)

    async def run(budget: int) -> list[JudgeEvent]:
        assert await judge.ready()
        return [event async for event in judge.judge(prompts, budget, stream_reasoning=True)]

    worst = 0.0
    for budget in (0, 8):
        events = asyncio.run(run(budget))
        outcomes, expected = outcomes_of(events), outcomes_of(judge_events(local_judge, prompts, budget))
        _assert_same(outcomes, expected)
        worst = max(worst, *(abs(o.score - e.score) for o, e in zip(outcomes, expected)))
        for outcome in outcomes:
            deltas = "".join(e.text for e in events if isinstance(e, ReasoningDelta) and e.index == outcome.index)
            assert deltas == outcome.reasoning
    print(f"judge max score diff vs local: {worst:.2e}")
    with pytest.raises(InvalidArgument, match="max_reasoning_tokens"):
        asyncio.run(run(10**6))
    asyncio.run(judge.close())


def test_irgate_serves_through_triton_end_to_end(peer: MLServerPeer, minilm_folder: Path, judge_folder: Path,
                                                 tmp_path: Path) -> None:
    """The production topology: `irgate serve --embedder triton://... --judge triton://...` beside the peer."""
    args = ["--embedder", f"triton://{peer.address}/embedder", "--embedder-folder", str(minilm_folder),
            "--judge", f"triton://{peer.address}/judge?stream=0", "--judge-folder", str(judge_folder)]
    local = OnnxEmbedder(minilm_folder, threads=1)
    encoder = TextEncoder(local.manifest, minilm_folder)
    ids, mask = pad_batch([e.ids for e in encoder.encode(TEXTS)], local.manifest.pad_token_id)
    expected = asyncio.run(local.embed(ids, mask))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    with LocalServer(tmp_path, args) as gateway, Client(gateway.address, timeout=120) as client:
        info = client.info()
        assert info.backend == f"triton://{peer.address}/embedder" and info.judge_model
        got = np.asarray([item.values for item in client.embed(TEXTS)], dtype=np.float32)
        assert float(np.abs(got - expected).max()) <= 1e-5
        client.create_collection("through-triton")
        client.upsert("through-triton", [Document(id=str(i), text=text) for i, text in enumerate(TEXTS)])
        hits = client.search("through-triton", TEXTS[2], k=2, rerank=2, max_reasoning_tokens=4)
        assert "2" in {hit.id for hit in hits} and all(hit.verdict is not None for hit in hits)
        (verdict,) = client.judge("what causes rain", [TEXTS[0]], max_reasoning_tokens=0)
        assert verdict.ended == "forced" and 0 <= verdict.score <= 1


def test_gateway_reports_not_serving_while_triton_is_down(minilm_folder: Path, tmp_path: Path) -> None:
    dead = f"triton://127.0.0.1:{free_port()}/embedder?attempts=1"
    args = ["--embedder", dead, "--embedder-folder", str(minilm_folder), "--judge", "none"]
    with LocalServer(tmp_path, args) as gateway:
        with grpc.insecure_channel(gateway.address) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="irgate.v1.Embed"))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        with Client(gateway.address, timeout=30) as client:
            with pytest.raises(IrgateError) as raised:
                client.embed(["rain"])
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE and "127.0.0.1" in raised.value.message

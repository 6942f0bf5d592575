"""The judge on Triton: a TensorRT-LLM engine (model_repository/judge) driven with token ids.

A one-step judge (backends.judge.families) sends each prompt for exactly one output token and
scores the generation logits of that step, the prompt's last position. For Rank1:

The gateway keeps Rank1's rules (irgate.backends.judge.rank1) and the
tokenizer (the local prepared judge folder); Triton only generates:
1. every document's prompt goes as its own request (the in-flight batcher merges them, and KV
   cache reuse shares the common prompt prefix): greedy, `request_output_len` = the budget,
   `return_generation_logits` so each generated token comes with the full logits that chose it;
2. the gateway detokenises the tokens as they arrive and stops at Rank1's stop strings
   ("</think> true" / "</think> false", matched in the TEXT, wherever the token boundaries
   fall): score = p(true) from the " true"/" false" logits of the step that completed the stop;
3. a document that reached its budget or EOS first is forced as Rank1 forces it: prompt + "\\n"
   + reasoning cut to its last sentence + "\\n</think>", ONE more token with generation logits,
   scored from the same two logits (the sampled-token log-prob alone could not give p(false)).

Two transports, one decoding:
- streaming (default; the model is decoupled): one ModelStreamInfer stream per call, all
  documents as requests on it, tokens arrive as they are generated (reasoning deltas stream to
  the client), and a document that answered is stopped at once (a `stop` request with its id);
- unary (`?stream=0`, or `stream=False`): one ModelInfer per document, returning all tokens at
  the end. For KServe v2 servers that cannot stream in Triton's format (MLServer answers a
  stream with bare ModelInferResponse messages) and for a TensorRT-LLM model deployed non-decoupled.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from irgate.backends.judge import families
from irgate.backends.judge.manifest import JudgeManifest
from irgate.backends.judge.rank1 import FittedPrompt, Phase, Rank1Document, decoder
from irgate.backends.triton import RetryPolicy, TritonClient, parse_address
from irgate.backends.triton_embedder import TensorSpec
from irgate.domain.judging import JudgeEvent, JudgeRequest, Verdict
from irgate.errors import FailedPrecondition, IrgateError, Unavailable

# The tensor contract of model_repository/judge/config.pbtxt: the names, types and request
# shapes (batch first) of TensorRT-LLM's `tensorrt_llm` model (NVIDIA/TensorRT-LLM
# triton_backend/all_models/inflight_batcher_llm/tensorrt_llm/config.pbtxt). Tests compare.
INPUT_IDS = TensorSpec("input_ids", "INT32", (-1, -1))
INPUT_LENGTHS = TensorSpec("input_lengths", "INT32", (-1, 1))
REQUEST_OUTPUT_LEN = TensorSpec("request_output_len", "INT32", (-1, 1))
END_ID = TensorSpec("end_id", "INT32", (-1, 1))
PAD_ID = TensorSpec("pad_id", "INT32", (-1, 1))
RUNTIME_TOP_K = TensorSpec("runtime_top_k", "INT32", (-1, 1))  # 1: greedy, as Rank1 decodes
STREAMING = TensorSpec("streaming", "BOOL", (-1, 1))
RETURN_GENERATION_LOGITS = TensorSpec("return_generation_logits", "BOOL", (-1, 1))
EXCLUDE_INPUT_IN_OUTPUT = TensorSpec("exclude_input_in_output", "BOOL", (-1, 1))
STOP = TensorSpec("stop", "BOOL", (-1, 1))  # cancels the in-flight request with the same id
OUTPUT_IDS = TensorSpec("output_ids", "INT32", (-1, -1, -1))  # [batch, beam, tokens]
SEQUENCE_LENGTH = TensorSpec("sequence_length", "INT32", (-1, -1))  # [batch, beam]
GENERATION_LOGITS = TensorSpec("generation_logits", "FP32", (-1, -1, -1, -1))  # [batch, beam, steps, vocab]
INPUTS = (INPUT_IDS, INPUT_LENGTHS, REQUEST_OUTPUT_LEN, END_ID, PAD_ID, RUNTIME_TOP_K, STREAMING, RETURN_GENERATION_LOGITS,
          EXCLUDE_INPUT_IN_OUTPUT, STOP)
OUTPUTS = (OUTPUT_IDS, SEQUENCE_LENGTH, GENERATION_LOGITS)
# Inputs a request may leave out (config.pbtxt marks them optional).
OPTIONAL_INPUTS = frozenset({INPUT_IDS.name, END_ID.name, PAD_ID.name, RUNTIME_TOP_K.name, STREAMING.name, RETURN_GENERATION_LOGITS.name,
                             EXCLUDE_INPUT_IN_OUTPUT.name, STOP.name})

# Documents of one call in flight at once in unary mode (the batcher merges them server-side).
_MAX_CONCURRENT_DOCUMENTS = 64
FINAL_PARAMETER = "triton_final_response"
_ENABLE_FINAL = {"triton_enable_empty_final_response": True}


@dataclass(frozen=True)
class StreamStep:
    """One decoded response of the `tensorrt_llm` model (streamed or unary)."""

    request_id: str
    tokens: list[int]  # new tokens (streaming) or all generated tokens (unary), beam 0
    logits: np.ndarray | None  # [len(tokens), vocab] generation logits of those tokens, if returned
    final: bool  # the last response of this request


def decode_infer_response(response: Any, final_default: bool = True) -> StreamStep:
    """A service_pb2.ModelInferResponse of the tensorrt_llm model -> StreamStep.

    output_ids is [1, beam, max_len] padded with -1 (or end ids) past sequence_length;
    generation_logits is [1, beam, steps, vocab]. Beam 0 only (greedy).
    """
    from tritonclient.grpc import InferResult

    result = InferResult(response)
    parameters = response.parameters
    final = parameters[FINAL_PARAMETER].bool_param if FINAL_PARAMETER in parameters else final_default
    names = {output.name for output in response.outputs}
    if not names:  # Triton's empty final response of a decoupled request
        return StreamStep(response.id, [], None, final)
    if OUTPUT_IDS.name not in names:
        raise FailedPrecondition(f"the judge model answered without {OUTPUT_IDS.name} (outputs: {sorted(names)})")
    ids = np.asarray(result.as_numpy(OUTPUT_IDS.name))
    ids = ids.reshape(-1, ids.shape[-1]) if ids.ndim >= 2 else ids.reshape(1, -1)
    length = ids.shape[-1]
    if SEQUENCE_LENGTH.name in names:
        length = int(np.asarray(result.as_numpy(SEQUENCE_LENGTH.name)).reshape(-1)[0])
    tokens = [int(token) for token in ids[0, :length]]
    logits = None
    if GENERATION_LOGITS.name in names:
        raw = np.asarray(result.as_numpy(GENERATION_LOGITS.name))
        # beam 0: [steps, vocab], every step that ran: one more than the tokens when the last
        # chose end_id (not returned), which a forced answer is still scored from.
        logits = raw.reshape(-1, *raw.shape[-2:])[0]
    return StreamStep(response.id, tokens, logits, final)


def decode_stream_response(message: Any) -> StreamStep:
    """A service_pb2.ModelStreamInferResponse -> StreamStep; a streamed error raises."""
    if message.error_message:
        raise FailedPrecondition(f"the judge model failed: {message.error_message}")
    return decode_infer_response(message.infer_response, final_default=False)


@dataclass(eq=False)
class _Doc:
    """One document's Triton requests: under its Rank1 policy, or (a one-step judge: `rank1` None)
    one scored step of its prompt."""

    index: int
    prompt: FittedPrompt
    rank1: Rank1Document | None
    done: bool = False

    @property
    def reasoning(self) -> bool:
        return self.rank1 is not None and self.rank1.phase is Phase.REASONING


class TritonJudge:
    """JudgeBackend over Triton's TensorRT-LLM model.

    `TritonJudge("triton://127.0.0.1:8001/judge", Path("models/judge"))`; the folder is the
    prepared judge folder (manifest.json + tokenizer files; the weights are not read).
    `stream=None` follows the address (`?stream=0` turns streaming off), default on.
    """

    def __init__(
        self,
        address: str,
        folder: Path,
        stream: bool | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        folder = Path(folder).resolve()
        self.manifest = JudgeManifest.load(folder)
        self.folder = folder
        self._target = parse_address(address)
        self.address = str(self._target)
        self.streaming = self._target.flag("stream", True) if stream is None else stream
        self._client = TritonClient(self._target, retry=retry, timeout=timeout)
        self._tokenizer = AutoTokenizer.from_pretrained(folder)
        self._decode_ids = decoder(self._tokenizer)
        self._running = 0
        self._calls = 0
        # Call ids are "<gateway>.<n>": gateways sharing one Triton must not share ids, since its
        # judge groups documents by call for fairness and stops them by request id.
        self._gateway = secrets.token_hex(4)

    @property
    def busy(self) -> bool:
        """True while a judge call is in flight."""
        return self._running > 0

    @property
    def stats(self) -> None:
        """Triton runs the engine: its counters are in Triton's metrics."""
        return None

    async def ready(self) -> bool:
        return await self._client.ready()

    async def close(self) -> None:
        await self._client.close()

    async def judge(self, request: JudgeRequest) -> AsyncIterator[JudgeEvent]:
        if not request.passages:
            return
        self._client.client()  # raises Unavailable when closed
        prompts = await asyncio.to_thread(families.fit_request, self.manifest, self._tokenizer, request)
        # A one-step judge reasons nothing: each prompt runs for one output token, whose generation
        # logits are the last prompt position's, scored by the family's rule.
        one_step = families.one_step(self.manifest)
        budget = 0 if one_step else request.budget
        docs = [
            _Doc(index, prompt, None if one_step else Rank1Document(
                index, prompt, budget, self.manifest, self._decode_ids, request.stream_reasoning))
            for index, prompt in enumerate(prompts)
        ]
        self._running += 1
        self._calls += 1
        try:
            if self.streaming:
                events = self._judge_streaming(docs, budget, f"{self._gateway}.{self._calls}")
            else:
                events = self._judge_unary(docs, budget)
            async with _closing(events):
                async for event in events:
                    yield event
        finally:
            self._running -= 1

    # ---- each document's policy, step by step ---------------------------------------------

    def _scores(self, row: np.ndarray) -> tuple[float, float]:
        return float(row[self.manifest.true_token_id]), float(row[self.manifest.false_token_id])

    def _generated(self, doc: _Doc, step: StreamStep) -> list[JudgeEvent]:
        """A response's generated tokens through the document's policy, until it stops reasoning;
        a final response that leaves it reasoning stopped at EOS."""
        assert doc.rank1 is not None
        if step.tokens and (step.logits is None or len(step.logits) < len(step.tokens)):
            raise FailedPrecondition(
                f"{self.address} returned no generation logits: build the engine with --gather_generation_logits"
            )
        events: list[JudgeEvent] = []
        for k, token in enumerate(step.tokens):
            assert step.logits is not None
            events.extend(doc.rank1.generated(token, self._scores(step.logits[k])))
            if doc.rank1.phase is not Phase.REASONING:
                break
        if doc.rank1.phase is Phase.REASONING and step.final:
            doc.rank1.stopped()
        doc.done = doc.rank1.phase is Phase.DONE
        return events

    async def _forced_ids(self, doc: _Doc) -> list[int]:
        if doc.rank1 is None:  # one step: the prompt's last position is the scored one
            return doc.prompt.ids
        # A prompt can hold thousands of tokens: tokenise off the event loop.
        return await asyncio.to_thread(self._encode, doc.rank1.forced_text())

    def _encode(self, text: str) -> list[int]:
        return list(self._tokenizer(text)["input_ids"])

    def _forced(self, doc: _Doc, step: StreamStep) -> list[JudgeEvent]:
        """The verdict from the step after the forced text (one step: after the prompt)."""
        if step.logits is None or len(step.logits) == 0:
            raise FailedPrecondition(
                f"{self.address} returned no generation logits for the forced answer: build the engine with "
                "--gather_generation_logits and keep return_generation_logits in the model config"
            )
        scores = self._scores(step.logits[0])
        doc.done = True
        if doc.rank1 is None:
            return [families.one_step_verdict(self.manifest, doc.index, doc.prompt, scores)]
        return doc.rank1.forced_answer(scores)

    # ---- requests ------------------------------------------------------------------------

    def _arrays(self, token_ids: list[int], output_len: int, streaming: bool, stop: bool = False) -> list[tuple[TensorSpec, np.ndarray]]:
        arrays: list[tuple[TensorSpec, np.ndarray]] = [
            (INPUT_IDS, np.asarray([token_ids], dtype=np.int32)),
            (INPUT_LENGTHS, np.asarray([[len(token_ids)]], dtype=np.int32)),
            (REQUEST_OUTPUT_LEN, np.asarray([[output_len]], dtype=np.int32)),
            (END_ID, np.asarray([[self.manifest.eos_token_id]], dtype=np.int32)),
            (PAD_ID, np.asarray([[self.manifest.pad_token_id]], dtype=np.int32)),
            (RUNTIME_TOP_K, np.asarray([[1]], dtype=np.int32)),
            (STREAMING, np.asarray([[streaming]], dtype=bool)),
            (RETURN_GENERATION_LOGITS, np.asarray([[True]], dtype=bool)),
            (EXCLUDE_INPUT_IN_OUTPUT, np.asarray([[True]], dtype=bool)),
        ]
        if stop:
            arrays.append((STOP, np.asarray([[True]], dtype=bool)))
        return arrays

    def _inputs(self, token_ids: list[int], output_len: int, streaming: bool) -> list[Any]:
        import tritonclient.grpc as grpcclient

        inputs = []
        for spec, array in self._arrays(token_ids, output_len, streaming):
            tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    # ---- unary ---------------------------------------------------------------------------

    async def _generate(self, token_ids: list[int], output_len: int, what: str) -> StreamStep:
        result = await self._client.infer(
            self._inputs(token_ids, output_len, streaming=False),
            [OUTPUT_IDS.name, SEQUENCE_LENGTH.name, GENERATION_LOGITS.name],
            what=what,
        )
        return decode_infer_response(result.get_response())

    async def _judge_one(self, doc: _Doc, budget: int, limit: asyncio.Semaphore) -> list[JudgeEvent]:
        async with limit:
            events: list[JudgeEvent] = []
            if doc.reasoning:
                events = self._generated(doc, await self._generate(doc.prompt.ids, budget, "generate"))
            if not doc.done:
                events.extend(self._forced(doc, await self._generate(await self._forced_ids(doc), 1, "forced answer")))
            return events

    async def _judge_unary(self, docs: list[_Doc], budget: int) -> AsyncIterator[JudgeEvent]:
        limit = asyncio.Semaphore(_MAX_CONCURRENT_DOCUMENTS)
        tasks = [asyncio.ensure_future(self._judge_one(doc, budget, limit)) for doc in docs]
        try:
            for next_done in asyncio.as_completed(tasks):
                for event in await next_done:
                    yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- streaming (decoupled) -----------------------------------------------------------

    def _request(self, request_id: str, token_ids: list[int], output_len: int, stop: bool = False) -> Any:
        """One streamed ModelInferRequest (built from the generated protobuf types)."""
        from tritonclient.grpc import service_pb2

        request = service_pb2.ModelInferRequest(model_name=self._target.model, id=request_id)
        for spec, array in self._arrays(token_ids, output_len, streaming=True, stop=stop):
            request.inputs.add(name=spec.name, datatype=spec.datatype, shape=list(array.shape))
            request.raw_input_contents.append(np.ascontiguousarray(array).tobytes())
        for name in (OUTPUT_IDS.name, SEQUENCE_LENGTH.name, GENERATION_LOGITS.name):
            request.outputs.add(name=name)
        # Every response then says whether it is its request's last (FINAL_PARAMETER).
        request.parameters["triton_enable_empty_final_response"].bool_param = True
        return request

    async def _judge_streaming(self, docs: list[_Doc], budget: int, call: str) -> AsyncIterator[JudgeEvent]:
        outgoing: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            while (request := await outgoing.get()) is not None:
                yield request

        def send(request_id: str, token_ids: list[int], output_len: int, stop: bool = False) -> None:
            outgoing.put_nowait(self._request(request_id, token_ids, output_len, stop))

        # Request ids: "<call>:<doc>:g" generates, "<call>:<doc>:f" is the forced (or one) step.
        def rid(doc: _Doc, kind: str) -> str:
            return f"{call}:{doc.index}:{kind}"

        by_id: dict[str, tuple[_Doc, str]] = {}
        for doc in docs:
            by_id[rid(doc, "g")] = (doc, "g")
            by_id[rid(doc, "f")] = (doc, "f")

        async def force(doc: _Doc) -> None:
            send(rid(doc, "f"), await self._forced_ids(doc), 1)

        def stop(doc: _Doc) -> None:
            # TensorRT-LLM cancels the in-flight request with this id; the request still
            # carries the inputs Triton requires.
            send(rid(doc, "g"), [self.manifest.eos_token_id], 1, stop=True)

        for doc in docs:
            if doc.reasoning:
                send(rid(doc, "g"), doc.prompt.ids, budget)
            else:
                await force(doc)
        try:
            responses = self._client.stream(requests())
        except IrgateError:
            raise
        except Exception as error:  # noqa: BLE001 - mapped
            raise self._client.error("judge stream", error) from error
        iterator = responses.__aiter__()
        remaining = len(docs)
        try:
            while remaining > 0:
                try:
                    message = await iterator.__anext__()
                except StopAsyncIteration:
                    raise Unavailable(f"{self._client.where} ended the judge stream with {remaining} documents left") from None
                except Exception as failure:  # noqa: BLE001 - grpc errors of the stream itself
                    raise self._client.error("judge stream", failure) from failure
                if message.error_message:
                    raise FailedPrecondition(
                        f"{self._client.where}: model {self._target.model!r} failed: {message.error_message}"
                    )
                step = decode_stream_response(message)
                entry = by_id.get(step.request_id)
                if entry is None:
                    continue
                doc, kind = entry
                events: list[JudgeEvent] = []
                if doc.done:
                    continue  # the answer to a stop request, or a final marker
                if kind == "f":
                    if step.logits is None or len(step.logits) == 0:
                        continue  # a final marker without outputs
                    events = self._forced(doc, step)
                elif doc.reasoning:
                    assert doc.rank1 is not None
                    events = self._generated(doc, step)
                    if not doc.reasoning:  # answered, or to be forced
                        # Past an answer, or short of the budget, the engine would go on generating: stop it now.
                        if not step.final and (doc.done or doc.rank1.generated_tokens < budget):
                            stop(doc)
                        if not doc.done:
                            await force(doc)
                for event in events:
                    if isinstance(event, Verdict):
                        remaining -= 1
                    yield event
        finally:
            # End the request side, then the call: requests still generating are cancelled.
            outgoing.put_nowait(None)
            responses.cancel()


class _closing:
    """async with: aclose an async generator when the consumer leaves early."""

    def __init__(self, generator: Any) -> None:
        self._generator = generator

    async def __aenter__(self) -> Any:
        return self._generator

    async def __aexit__(self, *exc: object) -> None:
        await self._generator.aclose()

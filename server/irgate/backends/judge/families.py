"""The judge families' rules in one place: which prompt each builds, what it cuts, and how a
score is read from the logits of its answer tokens.

Two kinds of judge share the engine and the Triton gateway:
- reasoning (Rank1: backends.judge.rank1): the model reasons, then answers; scored at its answer;
- one step (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma): the prompt alone is run and
  the score is read from the logits at its last position; nothing is generated.

A one-step family's prompt is a list of pieces, each tokenised on its own without special tokens
and concatenated as ids, exactly as the family's reference code does (tokenising the whole text
at once would merge tokens across a piece boundary differently). Each piece has a role:
- "fixed": outside the length limit (a chat prefix, the task text, a chat suffix);
- "span": fixed, but counted in the limit (a leading <bos>, a separator);
- "query": cut at its end to `query_max_tokens`;
- "rest": the passage piece, cut at its end to the family's `max_passage_tokens` and to what
  `span_max_tokens` leaves; a lower cap (--judge-max-passage-tokens, a request's
  max_passage_tokens) cuts the passage text itself to that many tokens first.
Pieces are str.format templates over {query}, {instruction} and {passage}; the instruction is
rendered through `instruction_template` when given, else the family's default instruction, else
it is empty. Sources: QwenLM/Qwen3-Embedding (examples/qwen3_reranker_transformers.py),
mixedbread-ai/mxbai-rerank (mxbai_rerank_v2.py), FlagOpen/FlagEmbedding
(inference/reranker/decoder_only/base.py), orionw/rank1 (rank1.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from irgate.backends.judge import rank1
from irgate.backends.judge.rank1 import FittedPrompt
from irgate.backends.judge.manifest import JudgeManifest
from irgate.domain.judging import Ended, JudgeRequest, Verdict
from irgate.errors import InvalidArgument

QWEN3_RERANKER_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
_QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
# The transformers README's single newlines (the same repo's vLLM example uses two, which the
# model was not trained with); the suffix's empty think block keeps the model from thinking.
_QWEN3_BODY = "<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {passage}"
_QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
_MXBAI_PREFIX = (
    "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
)
_MXBAI_TASK = (
    "You are a search relevance expert who evaluates how well documents match search queries. For each "
    "query-document pair, carefully analyze the semantic relationship between them, then provide your binary "
    "relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"
)
_MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
_BGE_PROMPT = (
    "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing "
    "a prediction of either 'Yes' or 'No'."
)


@dataclass(frozen=True)
class Preset:
    """What `irgate prepare --judge-preset NAME` writes into a judge's manifest."""

    family: str
    scoring: str  # "reasoning" or "one_step"
    score_rule: str  # "p_true", "margin_sigmoid" or "logit_sigmoid" (see `score`)
    true_word: str  # the answer whose first id's logit is read ("yes", "1", "Yes"; " true" for Rank1)
    false_word: str  # the other answer (unused by logit_sigmoid; Info names it)
    source_repository: str
    score_offset: float = 0.0
    supports_instructions: bool = True
    default_instruction: str = ""
    instruction_template: str = "{instruction}"
    prompt_pieces: tuple[tuple[str, str], ...] = ()
    query_max_tokens: int = 0
    span_max_tokens: int = 0
    max_passage_tokens: int = 0


RANK1 = "rank1"
PRESETS: dict[str, Preset] = {
    RANK1: Preset(RANK1, "reasoning", "p_true", rank1.TRUE_WORD, rank1.FALSE_WORD, "orionw/rank1"),
    "qwen3-reranker": Preset(
        "qwen3-reranker", "one_step", "p_true", "yes", "no", "QwenLM/Qwen3-Embedding (Qwen/Qwen3-Reranker-0.6B, -4B, -8B)",
        default_instruction=QWEN3_RERANKER_DEFAULT_INSTRUCTION,
        prompt_pieces=(("fixed", _QWEN3_PREFIX), ("rest", _QWEN3_BODY), ("fixed", _QWEN3_SUFFIX)),
        # max_length 8192 holds prefix + pair + suffix: the pair gets what the two leave.
        span_max_tokens=8192, max_passage_tokens=8192,
    ),
    **{
        f"mxbai-rerank-{size}-v2": Preset(
            "mxbai-rerank-v2", "one_step", "margin_sigmoid", "1", "0",
            f"mixedbread-ai/mxbai-rerank (mixedbread-ai/mxbai-rerank-{size}-v2)",
            score_offset=margin / 2, instruction_template="instruction: {instruction}\n",
            prompt_pieces=(("fixed", _MXBAI_PREFIX), ("query", "{instruction}query: {query}"), ("span", "\n"),
                           ("rest", "document: {passage}"), ("fixed", "\n"), ("fixed", _MXBAI_TASK), ("fixed", _MXBAI_SUFFIX)),
            query_max_tokens=8192 * 3 // 4, span_max_tokens=8192, max_passage_tokens=8192,
        )
        for size, margin in (("base", 9.0), ("large", 12.0))
    },
    "bge-reranker-v2-gemma": Preset(
        "bge-reranker-v2-gemma", "one_step", "logit_sigmoid", "Yes", "No", "FlagOpen/FlagEmbedding (BAAI/bge-reranker-v2-gemma)",
        supports_instructions=False,
        prompt_pieces=(("span", "<bos>"), ("query", "A: {query}"), ("span", "\n"), ("rest", "B: {passage}"),
                       ("fixed", "\n"), ("fixed", _BGE_PROMPT)),
        # max_length 512: the query gets 3/4 of it, the passage piece 512, and <bos> + query + "\n" +
        # passage piece at most 512 + the tokens of "\n" and of the prompt (FlagEmbedding's encode_max_length).
        query_max_tokens=512 * 3 // 4, span_max_tokens=512, max_passage_tokens=512,
    ),
}


def one_step(manifest: JudgeManifest) -> bool:
    return manifest.scoring == "one_step"


def check_instruction(manifest: JudgeManifest, instruction: str) -> None:
    """A family without an instruction slot refuses one rather than scoring a prompt it never saw."""
    if instruction and not manifest.supports_instructions:
        raise InvalidArgument(
            f"the judge {manifest.name} ({manifest.family}) takes no instruction: its prompt has no place for one; "
            "leave instruction empty",
            field="instruction",
        )


def score(manifest: JudgeManifest, true_logit: float, false_logit: float) -> float:
    """The family's score from the logits of its two answer ids at the scored position:
    - p_true: exp(l_t) / (exp(l_t) + exp(l_f)), the true share of a two-way softmax (Rank1, Qwen3-Reranker);
    - margin_sigmoid: sigmoid(l_t - l_f - score_offset) (mxbai-rerank-v2, offset m/2);
    - logit_sigmoid: sigmoid(l_t) (bge-reranker-v2-gemma's normalised score)."""
    if manifest.score_rule == "p_true":
        return rank1.p_true(true_logit, false_logit)
    if manifest.score_rule == "margin_sigmoid":
        return rank1.sigmoid(float(true_logit) - float(false_logit) - manifest.score_offset)
    return rank1.sigmoid(float(true_logit))


def fit_request(manifest: JudgeManifest, tokenizer: Any, request: JudgeRequest) -> list[FittedPrompt]:
    """The prompt of each of the request's passages, in order."""
    return [
        fit(manifest, tokenizer, request.query, request.instruction, passage.title, passage.text, request.budget,
            request.max_passage_tokens)
        for passage in request.passages
    ]


def fit(
    manifest: JudgeManifest,
    tokenizer: Any,
    query: str,
    instruction: str,
    title: str,
    text: str,
    budget: int,
    max_passage_tokens: int | None = None,
) -> FittedPrompt:
    """The prompt of one query/passage pair under the judge's family rules (an instruction refused
    where the family has no place for one)."""
    check_instruction(manifest, instruction)
    if not one_step(manifest):
        return rank1.fit_prompt(manifest, tokenizer, query, instruction, title, text, budget, max_passage_tokens)
    passage = f"{title} {text}" if title else text
    # No passage piece holds more than the family's cap, so characters far past it are never
    # tokenised: an oversized passage costs milliseconds, not seconds.
    bounded = passage[: manifest.max_passage_tokens * rank1.CHARS_PER_TOKEN_BOUND]
    truncated = bounded != passage
    passage = bounded
    cap = manifest.max_passage_tokens if max_passage_tokens is None else max_passage_tokens
    if cap < manifest.max_passage_tokens:
        # A cap below the family's own cuts the passage text itself; at the family's cap the
        # reference's own truncation below applies alone, so the ids stay the reference's.
        passage, _, cut = rank1.cut_passage(tokenizer, passage, cap)
        truncated = truncated or cut
    fields = {"query": query, "passage": passage, "instruction": _instruction(manifest, instruction)}
    pieces = [(role, encode(tokenizer, template.format(**fields))) for role, template in manifest.prompt_pieces]
    spanned = sum(len(ids) for role, ids in pieces if role in ("span", "query"))
    ids: list[int] = []
    for role, piece in pieces:
        if role == "query" and len(piece) > manifest.query_max_tokens:
            spanned -= len(piece) - manifest.query_max_tokens
            piece, truncated = piece[: manifest.query_max_tokens], True
        elif role == "rest":
            room = min(manifest.max_passage_tokens, _span_limit(manifest, pieces) - spanned)
            if room <= 0:
                raise InvalidArgument(
                    f"the query takes {spanned} of the judge's {_span_limit(manifest, pieces)} tokens and leaves no room "
                    "for the passage; shorten the query or the instruction"
                )
            if len(piece) > room:
                piece, truncated = piece[:room], True
        ids.extend(piece)
    text_form = "".join(template.format(**fields) for _, template in manifest.prompt_pieces)
    return FittedPrompt(text_form, ids, truncated)


def one_step_verdict(manifest: JudgeManifest, index: int, prompt: FittedPrompt, scores: Sequence[float]) -> Verdict:
    """A one-step judge's verdict from the (true, false) logits at its prompt's last position:
    nothing was generated, nothing reasoned."""
    return Verdict(index, score(manifest, *scores), "", 0, Ended.SCORED, prompt.truncated)


def _span_limit(manifest: JudgeManifest, pieces: Sequence[tuple[str, list[int]]]) -> int:
    """Most tokens of the span pieces. Qwen3-Reranker's limit holds the whole prompt, so its fixed
    prefix and suffix come off it; FlagEmbedding's encode_max_length adds its trailing separator
    and prompt to max_length; mxbai's counts only query, separator and document."""
    fixed = sum(len(ids) for role, ids in pieces if role == "fixed")
    if manifest.family == "qwen3-reranker":
        return manifest.span_max_tokens - fixed
    if manifest.family == "bge-reranker-v2-gemma":
        return manifest.span_max_tokens + fixed
    return manifest.span_max_tokens


def _instruction(manifest: JudgeManifest, instruction: str) -> str:
    chosen = instruction or manifest.default_instruction
    return manifest.instruction_template.format(instruction=chosen) if chosen else ""


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def shared_head(manifest: JudgeManifest, tokenizer: Any) -> list[int]:
    """Ids every prompt of this judge starts with, for the engine to compute once."""
    if one_step(manifest):
        role, template = manifest.prompt_pieces[0]
        return encode(tokenizer, template) if role in ("fixed", "span") and "{" not in template else []
    head = manifest.prompt_template.split("{query}")[0]
    # The last token may merge with the query's first characters.
    return list(tokenizer(head)["input_ids"])[:-1]


def prompt_bound(preset: Preset, tokenizer: Any) -> int:
    """Most tokens a one-step prompt of this preset can hold (JudgeInfo.max_context_tokens)."""
    fixed = sum(len(encode(tokenizer, text)) for role, text in preset.prompt_pieces if role == "fixed")
    if preset.family == "qwen3-reranker":
        return preset.span_max_tokens
    if preset.family == "bge-reranker-v2-gemma":
        return preset.span_max_tokens + 2 * fixed
    return preset.span_max_tokens + fixed


def score_formula(manifest: JudgeManifest) -> str:
    """The score rule written out with the family's answer words, for Info and the docs."""
    rules = PRESETS.get(manifest.preset, PRESETS[RANK1])
    true, false = repr(rules.true_word), repr(rules.false_word)
    if manifest.score_rule == "p_true":
        return f"exp(logit({true})) / (exp(logit({true})) + exp(logit({false})))"
    if manifest.score_rule == "margin_sigmoid":
        return f"sigmoid(logit({true}) - logit({false}) - {manifest.score_offset:g})"
    return f"sigmoid(logit({true}))"

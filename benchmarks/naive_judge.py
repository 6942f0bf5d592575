"""The naive Rank1 reference: one document at a time with generate(), then a separate scoring
forward pass for p(true), as the usual recipe does; and the benchmark's documents and prompts.

`irgate bench judge` times the judge runtime against it, and the judge tests check every batched
score against it on the same prompts, so both import it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from irgate.backends.judge.contract import JudgeRequest, PassageText
from irgate.backends.judge.manifest import JudgeManifest
from irgate.backends.judge.rank1 import Ended, answer_stop, forced_continuation, judge_prompt

# SciFact-like claims and evidence sentences, written here so the benchmark needs no data set.
PAIRS: tuple[tuple[str, str], ...] = (
    ("Insulin resistance causes type 2 diabetes.", "Insulin resistance in muscle and liver precedes the onset of type 2 diabetes in longitudinal cohorts."),
    ("Vitamin D supplements prevent fractures in the elderly.", "A meta-analysis of randomised trials found no effect of vitamin D alone on hip fracture risk."),
    ("Smoking increases the risk of lung cancer.", "Cigarette smoke carcinogens form DNA adducts in bronchial epithelium."),
    ("Aspirin reduces the risk of colorectal cancer.", "Long-term daily aspirin use lowered colorectal cancer incidence after ten years of follow-up."),
    ("Mitochondria produce ATP by oxidative phosphorylation.", "The electron transport chain pumps protons across the inner membrane to drive ATP synthase."),
    ("Antibiotics are effective against viral infections.", "Influenza is caused by an RNA virus that antibiotics do not target."),
    ("Exercise improves insulin sensitivity.", "Eight weeks of aerobic training increased glucose uptake in skeletal muscle."),
    ("Gut microbiota influence obesity.", "Germ-free mice colonised with microbiota from obese donors gained more fat."),
    ("Statins lower LDL cholesterol.", "Statins inhibit HMG-CoA reductase, reducing hepatic cholesterol synthesis."),
    ("Sleep deprivation impairs memory consolidation.", "Participants deprived of sleep recalled fewer word pairs than rested controls."),
    ("BRCA1 mutations increase breast cancer risk.", "Carriers of BRCA1 variants have a lifetime breast cancer risk of up to 72 percent."),
    ("Coffee consumption causes hypertension.", "Habitual coffee drinking was not associated with incident hypertension in a large cohort."),
    ("CRISPR can correct disease mutations in embryos.", "Germline editing of MYBPC3 in human embryos repaired the mutant allele in most cells."),
    ("Air pollution is linked to asthma in children.", "Traffic-related particulate matter exposure predicted new asthma diagnoses in schoolchildren."),
    ("Tau aggregation drives neurodegeneration.", "Reducing tau expression protected mice from amyloid-induced cognitive deficits."),
    ("Measles vaccination causes autism.", "A cohort of 650,000 Danish children showed no increased autism risk after MMR vaccination."),
)


@dataclass(frozen=True)
class NaiveVerdict:
    score: float
    reasoning: str
    reasoning_tokens: int
    ended: Ended


# One query for every call, as reranking asks one question of many passages; the passage carries
# the claim, so the pairs above still give documents of different kinds.
QUERY = "Does the evidence in the passage support its claim?"


def benchmark_request(
    documents: int, budget: int, length_tokens: int = 0, max_passage_tokens: int | None = None
) -> JudgeRequest:
    """A judge call over `documents` passages of PAIRS (cycled); with `length_tokens`, each
    passage is repeated to about that many tokens (it is then cut to the passage cap and to fit
    the judge's context)."""
    passages = []
    for i in range(documents):
        claim, evidence = PAIRS[i % len(PAIRS)]
        text = f"Claim: {claim} Evidence: {evidence}"
        if length_tokens:
            text = " ".join([text] * (length_tokens // 20 + 1))
        passages.append(PassageText("", text))
    return JudgeRequest(
        query=QUERY, instruction="", passages=tuple(passages), budget=budget, max_passage_tokens=max_passage_tokens
    )


def request_prompts(manifest: JudgeManifest, request: JudgeRequest) -> list[str]:
    """The Rank1 prompts of a request's passages (untruncated), for the naive loop."""
    return [judge_prompt(manifest, request.query, request.instruction, p.title, p.text) for p in request.passages]


def naive_judge(model: Any, tokenizer: Any, manifest: JudgeManifest, prompts: list[str], budget: int) -> list[NaiveVerdict]:
    """Rank1 one document at a time: generate(), then a separate scoring forward for p(true)."""
    import torch

    def p_true(ids: list[int]) -> float:
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, -1].float()
        lp = torch.log_softmax(logits, dim=-1)
        lp_true, lp_false = lp[manifest.true_token_id].exp(), lp[manifest.false_token_id].exp()
        return float(lp_true / (lp_true + lp_false))

    def decode(ids: list[int]) -> str:
        return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    verdicts = []
    with torch.inference_mode():
        for prompt in prompts:
            prompt_ids = tokenizer(prompt)["input_ids"]
            generated: list[int] = []
            if budget:
                out = model.generate(
                    input_ids=torch.tensor([prompt_ids], device=model.device),
                    max_new_tokens=budget,
                    do_sample=False,
                    stop_strings=list(manifest.answer_stops),
                    tokenizer=tokenizer,
                    eos_token_id=manifest.eos_token_id,
                    pad_token_id=manifest.pad_token_id,
                )
                generated = out[0, len(prompt_ids) :].tolist()
            text_ids = generated[:-1] if generated and generated[-1] == manifest.eos_token_id else generated
            text = decode(prompt_ids + text_ids)[len(decode(prompt_ids)) :]
            at = answer_stop(text, manifest.answer_stops)
            if at is not None:
                # Re-run the sequence up to the answer token: its logits are the answer position.
                score = p_true(prompt_ids + generated[:-1])
                verdicts.append(NaiveVerdict(score, text[:at], len(generated), "answered"))
            else:
                forced_ids = tokenizer(prompt + forced_continuation(text, manifest.think_end))["input_ids"]
                ended: Ended = "forced_eos" if generated and generated[-1] == manifest.eos_token_id else "forced"
                verdicts.append(NaiveVerdict(p_true(forced_ids), text, len(generated), ended))
    return verdicts

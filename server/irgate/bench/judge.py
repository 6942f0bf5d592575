"""Judge runtime vs the naive loop users would write: one document at a time with generate().

Both sides get the same prompts, the same greedy budget and the same Rank1 rules; the naive side
scores p(true) with a separate forward pass, as the usual recipe does. The ratio of their
docs/s, measured in one run on one machine, is the claim; absolute times are only context.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from irgate.backends.judge import Ended, JudgeOutcome, LocalJudge
from irgate.core.judging import answer_stop, forced_continuation, judge_prompt
from irgate.models.judge import JudgeManifest

R = TypeVar("R")

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


def benchmark_prompts(manifest: JudgeManifest, documents: int) -> list[str]:
    """`documents` prompts for one pass over PAIRS (cycled when more are asked for)."""
    pairs = [PAIRS[i % len(PAIRS)] for i in range(documents)]
    return [judge_prompt(manifest, query, "", "", passage) for query, passage in pairs]


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
                verdicts.append(NaiveVerdict(p_true(forced_ids), text, len(generated), "forced"))
    return verdicts


async def _collect(judge: LocalJudge, prompts: list[str], budget: int) -> list[JudgeOutcome]:
    outcomes = [event async for event in judge.judge(prompts, budget) if isinstance(event, JudgeOutcome)]
    return sorted(outcomes, key=lambda outcome: outcome.index)


def _median_run(run: Callable[[], R], repeats: int) -> tuple[float, R]:
    """Median wall time of `repeats` runs, and the last run's result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def run_judge_benchmark(
    folder: Path, documents: int = 16, max_reasoning_tokens: int = 64, repeats: int = 3
) -> dict[str, Any]:
    """Time LocalJudge and the naive loop on the same model folder and prompts; JSON-able results."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    judge = LocalJudge(folder)
    prompts = benchmark_prompts(judge.manifest, documents)
    # One small warm-up each, so neither side pays first-call allocation in its timing; then the
    # median of `repeats` runs, since a shared machine makes any single run noisy.
    asyncio.run(_collect(judge, prompts[:1], 2))
    judge_s, outcomes = _median_run(lambda: asyncio.run(_collect(judge, prompts, max_reasoning_tokens)), repeats)
    asyncio.run(judge.close())

    device = torch.device(judge.device)  # the same device for both sides
    tokenizer = AutoTokenizer.from_pretrained(folder)
    dtype = torch.float32 if device.type == "cpu" else "auto"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    naive_judge(model, tokenizer, judge.manifest, prompts[:1], 2)
    naive_s, verdicts = _median_run(
        lambda: naive_judge(model, tokenizer, judge.manifest, prompts, max_reasoning_tokens), repeats
    )

    docs_per_s, naive_docs_per_s = documents / judge_s, documents / naive_s
    return {
        "documents": documents,
        "max_reasoning_tokens": max_reasoning_tokens,
        "repeats": repeats,
        "runtime": "transformers-prefix-cache-own-decode-loop",
        "docs_per_s": round(docs_per_s, 3),
        "tokens_per_s": round(sum(o.reasoning_tokens for o in outcomes) / judge_s, 1),
        "naive_docs_per_s": round(naive_docs_per_s, 3),
        "naive_tokens_per_s": round(sum(v.reasoning_tokens for v in verdicts) / naive_s, 1),
        "judge_vs_naive": round(docs_per_s / naive_docs_per_s, 2),
        "max_score_diff": max(abs(o.score - v.score) for o, v in zip(outcomes, verdicts)),
        "answered": sum(o.ended == "answered" for o in outcomes),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads of {os.cpu_count()} cores)",
    }

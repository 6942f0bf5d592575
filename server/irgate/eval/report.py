"""`--report DIR`: a Markdown report, PNG plots (matplotlib) and the raw numbers as JSON.

Plots are drawn on matplotlib's Figure objects (no pyplot, no global state, no display needed).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from irgate.eval.pmrr import Run, write_run
from irgate.eval.runner import SEARCH_CONCURRENCY

RAW_FILE = "results.json"
REPORT_FILE = "report.md"


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ValueError("--report draws its plots with matplotlib, which is not installed: "
                         "pip install 'irgate[eval]' (or pip install matplotlib)") from None
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return figure, figure.subplots()


def _save(figure: Any, folder: Path, name: str) -> str:
    figure.savefig(folder / name)
    return name


def _sign_colour(value: float) -> str:
    return "tab:green" if value > 0 else "tab:red" if value < 0 else "tab:gray"


def _sorted_bars(folder: Path, name: str, values: Mapping[str, float], title: str, ylabel: str) -> str:
    """One bar per query, sorted, green above zero and red below: where a change helped and where it hurt."""
    figure, axes = _figure()
    ordered = sorted(values.values())
    axes.bar(range(len(ordered)), ordered, width=1.0, color=[_sign_colour(v) for v in ordered])
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set(title=title, xlabel=f"queries, sorted ({len(ordered)})", ylabel=ylabel)
    axes.set_xticks([])
    return _save(figure, folder, name)


def _latency_plot(folder: Path, samples: Mapping[str, Sequence[float]], title: str) -> str:
    figure, axes = _figure(7.0, 0.9 + 0.35 * len(samples))
    labels = list(samples)
    axes.boxplot([samples[label] for label in labels], vert=False, tick_labels=labels, showfliers=True)
    axes.set(title=f"{title} ({SEARCH_CONCURRENCY} queries in flight)", xlabel="milliseconds per query call")
    axes.invert_yaxis()
    return _save(figure, folder, "latency.png")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _model_line(result: Mapping[str, Any]) -> str:
    model = result.get("model") or {}
    parts = [f"embedder {model['embedder']} ({model['dimension']} dimensions, {model['pooling']} pooling)"] if model else []
    if "judge" in model:
        parts.append(f"judge {model['judge']} (reasoning cap {model['reasoning_cap']} tokens)")
    return "Model: " + ", ".join(parts) + "." if parts else ""


def _server_line(result: Mapping[str, Any]) -> str:
    """Where the numbers came from, and how many of them from the cache (an earlier run's answers)."""
    server = result.get("server") or {}
    if not server:
        return ""
    engine = server.get("index_engine") or "unknown"
    parts = [f"index {engine}" + (f" at {server['index_address']}" if server.get("index_address") else ""),
             f"{server.get('precision', 'f16')} vectors", f"embedder on {server['backend']}"]
    if server.get("judge_backend"):
        parts.append(f"judge on {server['judge_backend']}")
    line = f"Server: irgate {server['version']}, " + ", ".join(parts) + "."
    if "query_runs" in result:
        line += (f" {result['cached_queries']} of {result['query_runs']} query runs came from the cache "
                 "(`--no-cache` runs every query again).")
    return line


def _prompts(folder: Path, result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    runs = result["runs"]
    figure, axes = _figure(7.0, 4.5)
    names = [run["name"] for run in runs]
    values = [run["ndcg@10"] for run in runs]
    bars = axes.barh(names, values, color=["tab:gray"] + ["tab:blue"] * (len(runs) - 1))
    axes.bar_label(bars, fmt="%.4f", padding=3, fontsize=8)
    axes.axvline(result["prompts"]["mean"], color="tab:orange", linestyle="--", label="mean of the 10 prompts")
    axes.set_xlim(max(0.0, min(values) - 0.05), max(values) + 0.03)
    axes.invert_yaxis()
    axes.set(title=f"nDCG@10 per prompt ({result['queries']} queries)", xlabel="nDCG@10")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
    plots = [_save(figure, folder, "prompts.png")]
    baseline = runs[0]["per_query"]
    deltas = {qid: statistics.fmean(run["per_query"][qid] for run in runs[1:]) - baseline[qid] for qid in baseline}
    plots.append(_sorted_bars(folder, "per_query_deltas.png", deltas,
                              "Per query: mean nDCG@10 over the 10 prompts minus no prompt", "nDCG@10 change"))
    plots.append(_latency_plot(folder, result["latency_samples_ms"], "Search latency per prompt"))
    stats = result["prompts"]
    lines = [
        f"No prompt: nDCG@10 = {result['no_prompt']:.4f}. The 10 generic prompts: mean {stats['mean']:.4f}, "
        f"standard deviation {stats['std']:.4f} (sample, n - 1), spread {stats['spread']:.4f} "
        f"(from {stats['min']:.4f} to {stats['max']:.4f}). Best: {result['best_prompt']} "
        f"({result['best_minus_no_prompt']:+.4f} against no prompt).",
        "",
        _table(["run", "nDCG@10", "vs no prompt", "prompt appended as the instruction"],
               [[run["name"], f"{run['ndcg@10']:.4f}", f"{run['ndcg@10'] - result['no_prompt']:+.4f}", run["prompt"] or "(none)"]
                for run in runs]),
    ]
    return lines, plots


def _reranking(folder: Path, result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    rows, plots = result["reranking"], []
    last = rows[-1]
    deltas = {qid: last["per_query"]["ndcg@10"][qid] - result["per_query"]["ndcg@10"][qid]
              for qid in result["per_query"]["ndcg@10"]}
    plots.append(_sorted_bars(folder, "per_query_deltas.png", deltas,
                              f"Per query: nDCG@10 after judging the top {result['rerank']} minus before", "nDCG@10 change"))
    figure, axes = _figure()
    budgets = [row["reasoning_budget"] for row in rows]
    axes.plot(budgets, [row["ndcg@10_after"] for row in rows], marker="o", label=f"judged top {result['rerank']}")
    axes.axhline(result["ndcg@10"], color="tab:gray", linestyle="--", label="dense only")
    axes.set(title="nDCG@10 against the judge's reasoning budget", xlabel="reasoning tokens per document (budget)",
             ylabel="nDCG@10")
    axes.legend()
    plots.append(_save(figure, folder, "budget.png"))
    table = _table(
        ["budget", "nDCG@10 before", "after", "change", "answered", "forced", "forced_eos", "reasoning tokens (mean)",
         "judge s/query"],
        [[row["reasoning_budget"], f"{row['ndcg@10_before']:.4f}", f"{row['ndcg@10_after']:.4f}", f"{row['ndcg@10_change']:+.4f}",
          row["ended"].get("answered", 0), row["ended"].get("forced", 0), row["ended"].get("forced_eos", 0),
          row["reasoning_tokens_mean"], row["judge_seconds_per_query"]] for row in rows])
    lines = ["", f"Judge reranking of the top {result['rerank']} dense hits. Judge time per query: the judged search's "
             f"wall time minus the dense search's, with {SEARCH_CONCURRENCY} queries in flight sharing the judge.", "", table]
    return lines, plots


def _beir(folder: Path, result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    lines = [_table(["measure", "value"], [["nDCG@10", result["ndcg@10"]], ["Recall@100", result["recall@100"]],
                                           ["queries", result["queries"]], ["documents", result["docs"]]])]
    samples = {"dense search": result["latency_samples_ms"]}
    plots: list[str] = []
    if result.get("reranking"):
        more_lines, plots = _reranking(folder, result)
        lines += more_lines
        for row in result["reranking"]:
            samples[f"judged, budget {row['reasoning_budget']}"] = row["latency_samples_ms"]
    plots.append(_latency_plot(folder, samples, "Latency per query"))
    return lines, plots


def _followir(folder: Path, result: Mapping[str, Any], runs: tuple[Run, Run, Mapping[str, Sequence[str]]] | None) -> tuple[list[str], list[str]]:
    measure = result["measure"]
    lines = [
        f"p-MRR = {result['p-MRR']:+.4f} over {result['pmrr_queries']} queries ({result['pmrr_documents']} documents "
        "made non-relevant by the changed instruction); -1..1, above 0 when those documents moved down.",
        "",
        _table(["instructions", measure], [["original", result["original"]], ["changed", result["changed"]]]),
    ]
    plots = [_sorted_bars(folder, "per_query_deltas.png", result["per_query"]["p-MRR"], "p-MRR per query", "p-MRR")]
    plots.append(_latency_plot(folder, result["latency_samples_ms"], "Latency per query"))
    if runs is not None:
        run_og, run_changed, changed = runs
        write_run(folder / "run_og.trec", run_og)
        write_run(folder / "run_changed.trec", run_changed)
        (folder / "changed_qrels.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t1\n" for q in sorted(changed) for d in changed[q]),
            encoding="utf-8")
        lines += ["", "The two runs and the changed qrels are beside this report (run_og.trec, run_changed.trec, "
                  "changed_qrels.tsv): `irgate eval pmrr --run-og run_og.trec --run-changed run_changed.trec "
                  "--changed-qrels changed_qrels.tsv` recomputes p-MRR from them."]
    return lines, plots


def _pmrr(folder: Path, result: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    lines = [f"p-MRR = {result['p-MRR']:+.4f} over {result['queries']} queries ({result['documents']} documents)."]
    if result["skipped_queries"]:
        lines.append(f"Left out (missing from a run): {', '.join(result['skipped_queries'])}.")
    return lines, [_sorted_bars(folder, "per_query_deltas.png", result["per_query"], "p-MRR per query", "p-MRR")]


TITLES = {"prompts": "Prompt sensitivity", "beir": "BEIR evaluation", "followir": "Instruction following (FollowIR)",
          "pmrr": "p-MRR"}


def write_report(folder: Path, result: Mapping[str, Any], command: str = "",
                 runs: tuple[Run, Run, Mapping[str, Sequence[str]]] | None = None) -> list[Path]:
    """Writes report.md, the plots and results.json into `folder`; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    suite = result["suite"]
    body, plots = {"prompts": _prompts, "beir": _beir, "pmrr": _pmrr}[suite](folder, result) if suite != "followir" \
        else _followir(folder, result, runs)
    (folder / RAW_FILE).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    lines = [f"# {TITLES[suite]}", ""]
    if command:
        lines += ["Made by:", "", "```", command, "```", ""]
    for line in (_model_line(result), _server_line(result)):
        if line:
            lines += [line, ""]
    for plot in plots:
        body += ["", f"![{plot}]({plot})"]
    lines += body + ["", f"Raw numbers: {RAW_FILE}.", ""]
    (folder / REPORT_FILE).write_text("\n".join(lines), encoding="utf-8")
    extra = ["run_og.trec", "run_changed.trec", "changed_qrels.tsv"] if runs is not None else []
    return [folder / name for name in (REPORT_FILE, RAW_FILE, *plots, *extra)]

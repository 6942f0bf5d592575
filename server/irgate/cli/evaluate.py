"""`irgate eval ...`: the evaluation suites' flags and what each command runs.

Every suite that needs a model talks to a server through the SDK: the one at --server, or a
temporary `irgate serve` on a free loopback port with --embedder (and --judge when reranking).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rich.table import Table

from irgate.cli.shared import (
    DEFAULT_MODELS,
    REASONING_HELP,
    add_client_options,
    add_command,
    call_timeout,
    console,
    print_table,
    root_certificates,
    say,
)
from irgate.eval.runner import Evaluation, digest_files
from irgate_client import AsyncClient

T = TypeVar("T")
DEFAULT_CACHE = Path(os.environ.get("IRGATE_EVAL_CACHE")
                     or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "irgate" / "eval")


def _budgets(text: str) -> list[int]:
    try:
        budgets = [int(item) for item in text.split(",")]
    except ValueError:
        budgets = []
    if not budgets or min(budgets) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a budget: give tokens (0 or more), several comma-separated (0,32,128)")
    return budgets


def _server_options(parser: argparse.ArgumentParser, judge: bool) -> None:
    """Where the model runs, where results are kept, and how they are shown: the same on every suite."""
    parser.add_argument("--embedder", default=os.environ.get("IRGATE_EMBEDDER", f"onnx:{DEFAULT_MODELS / 'embedder'}"),
                        help="embedder of the temporary server when --server is not given (env IRGATE_EMBEDDER)")
    if judge:
        parser.add_argument("--judge", default=os.environ.get("IRGATE_JUDGE", f"local:{DEFAULT_MODELS / 'judge'}"),
                            help="judge of the temporary server when --rerank is used without --server (env IRGATE_JUDGE)")
    parser.add_argument("--precision", choices=("f16", "f32", "i8"), default="f16",
                        help="vector precision of the temporary collection the corpus is indexed into")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                        help="finished queries are kept here, keyed by a hash of model, server (index engine, "
                             "backends, judge caps), data and settings: a rerun resumes or repeats from it "
                             "(env IRGATE_EVAL_CACHE)")
    parser.add_argument("--no-cache", action="store_true", help="run every query again and keep nothing")
    _output_options(parser)
    add_client_options(parser, server_default="",
                    server_help="HOST:PORT of a running irgate; without it a temporary server is started (env IRGATE_SERVER)")


def _output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object (every number, per query too)")
    parser.add_argument("--report", type=Path, metavar="DIR",
                        help="write report.md, PNG plots and results.json (the raw numbers) into DIR")


def add_eval_commands(commands: Any) -> None:
    """The `eval` command and its suites, under the top-level `commands` subparsers."""
    evaluate = add_command(commands, "eval", "evaluate retrieval quality through the gRPC API")
    suites = evaluate.add_subparsers(dest="suite", required=True, metavar="SUITE")

    beir = add_command(suites, "beir", "a BEIR data set folder (corpus, queries, qrels/); with --rerank, what judging changes")
    beir.add_argument("--data", type=Path, required=True, help="the BEIR folder")
    beir.add_argument("--split", default="test", help="qrels/SPLIT.tsv to score against")
    beir.add_argument("--instruction", default="", help="instruction given with every query")
    beir.add_argument("--mode", choices=("dense", "lexical", "hybrid"), default="dense",
                      help="how the server finds candidates: by embedding, by BM25, or both fused")
    beir.add_argument("--rerank", type=int, default=0, metavar="N", help="also judge the top N hits of every query and "
                      "report nDCG@10 before and after, verdicts by ending and judge time per query")
    beir.add_argument("--max-reasoning-tokens", type=_budgets, default=None, metavar="N[,N...]",
                      help=f"{REASONING_HELP}; several, comma-separated, rerank once each (nDCG@10 against the budget)")
    _server_options(beir, judge=True)

    prompts = add_command(suites, "prompts", "prompt sensitivity (Promptriever): nDCG@10 with no prompt and with each "
                                          "of 10 generic prompts appended as the instruction")
    prompts.add_argument("--data", type=Path, required=True, help="the BEIR folder")
    prompts.add_argument("--split", default="test", help="qrels/SPLIT.tsv to score against")
    _server_options(prompts, judge=False)

    followir = add_command(suites, "followir", "instruction following on FollowIR-format data: the standard score under "
                                            "the original and the changed instructions, and p-MRR")
    followir.add_argument("--data", type=Path, required=True,
                          help="the folder: corpus, queries with instruction_og and instruction_changed, qrels_og/, "
                               "qrels_changed/, optional top_ranked.jsonl")
    followir.add_argument("--split", default="test", help="qrels_og/SPLIT.tsv and qrels_changed/SPLIT.tsv")
    followir.add_argument("--measure", default="",
                          help="score to report, e.g. map@1000 or ndcg@5 (default: nDCG@5 when the folder's name holds "
                               "core17, else MAP@1000, as FollowIR reports them)")
    followir.add_argument("--k", type=int, default=1000, help="hits per search")
    followir.add_argument("--rerank", type=int, default=0, metavar="N",
                          help="judge the first N documents of each top-ranked list (without lists: the top N hits)")
    followir.add_argument("--max-reasoning-tokens", type=int, default=None, help=REASONING_HELP)
    _server_options(followir, judge=True)

    pmrr = add_command(suites, "pmrr", "FollowIR's p-MRR of two TREC runs (original and changed instruction)")
    pmrr.add_argument("--run-og", type=Path, required=True, help="TREC run under the original instructions "
                      "(qid Q0 docid rank score tag; ranks come from the scores, ties by doc id)")
    pmrr.add_argument("--run-changed", type=Path, required=True, help="TREC run under the changed instructions")
    pmrr.add_argument("--changed-qrels", type=Path, required=True,
                      help="BEIR qrels TSV of the documents relevant under the original instruction and not under the "
                           "changed one (rows with score 0 are ignored)")
    _output_options(pmrr)

    derive = add_command(suites, "derive-followir", "build a FollowIR-format set from a BEIR folder: the changed "
                                                 "instruction excludes documents that mention a term (see docs/evaluation.md)")
    derive.add_argument("--data", type=Path, required=True, help="the BEIR folder")
    derive.add_argument("--split", default="test", help="qrels/SPLIT.tsv whose queries are used")
    derive.add_argument("--out", type=Path, required=True, help="folder to write the FollowIR-format set into")
    derive.add_argument("--json", action="store_true", help="one JSON object")


# ---------------------------------------------------------------------------------------------
# running
# ---------------------------------------------------------------------------------------------


def _with_server(args: argparse.Namespace, judge: bool, work: Callable[[AsyncClient], Awaitable[T]]) -> T:
    """Runs `work` with a client of the server at --server, or of a temporary one."""
    from irgate.local_server import LocalServer

    async def connect(address: str, remote: bool) -> T:
        async with AsyncClient(address, api_key=args.api_key or None, tls=remote and args.tls,
                               root_certificates=root_certificates(args) if remote else None,
                               timeout=call_timeout(args)) as client:
            return await work(client)

    if args.server:
        return asyncio.run(connect(args.server, remote=True))
    with tempfile.TemporaryDirectory(prefix="irgate-eval-") as data_dir:
        server_args = ["--embedder", args.embedder, "--judge", args.judge if judge else "none"]
        with LocalServer(Path(data_dir), server_args) as server:
            return asyncio.run(connect(server.address, remote=False))


def _evaluation(args: argparse.Namespace, client: AsyncClient, corpus: dict[str, tuple[str, str]],
                files: Sequence[Path]) -> Evaluation:
    return Evaluation(client, corpus, digest_files(files), None if args.no_cache else args.cache, console,
                      precision=args.precision)


def _finish(args: argparse.Namespace, result: dict[str, Any], runs: Any = None) -> None:
    if args.json:
        print(json.dumps(result))
    else:
        _print_summary(result)
    if args.report:
        from irgate.eval.report import write_report

        command = "irgate " + shlex.join(sys.argv[1:])
        written = write_report(args.report, result, command=command, runs=runs)
        say(f"report: {written[0]} ({len(written)} files in {args.report})")


def _print_summary(result: dict[str, Any]) -> None:
    """The headline numbers; per-query values and latency samples are in --json and --report."""
    table = Table("measure", "value")
    for key, value in result.items():
        if not isinstance(value, (dict, list)):
            table.add_row(key, str(value))
    for key in ("prompts", "model", "server"):
        if isinstance(result.get(key), dict):
            table.add_row(key, ", ".join(f"{name} {value}" for name, value in result[key].items()))
    print_table(table)
    if result["suite"] == "prompts":
        runs = Table("run", "nDCG@10", "prompt")
        for run in result["runs"]:
            runs.add_row(run["name"], f"{run['ndcg@10']:.4f}", run["prompt"][:60] or "(none)")
        print_table(runs)
    for row in result.get("reranking", []):
        judged = Table("reranking", "value")
        for key, value in row.items():
            if key not in ("per_query", "latency_samples_ms"):
                judged.add_row(key, str(value))
        print_table(judged)


def _beir(args: argparse.Namespace) -> None:
    from irgate.eval.beir import evaluate, load_beir

    data = load_beir(args.data, args.split)
    if args.rerank < 0:
        raise ValueError(f"--rerank is {args.rerank}; give 0 (no reranking) or the number of top hits to judge")

    async def work(client: AsyncClient) -> dict[str, Any]:
        evaluation = _evaluation(args, client, data.corpus, data.files)
        await evaluation.start(with_judge=bool(args.rerank), k=100)
        try:
            return await evaluate(evaluation, data, instruction=args.instruction, rerank=args.rerank,
                                  budgets=args.max_reasoning_tokens or [None], mode=args.mode)
        finally:
            await evaluation.close()

    _finish(args, _with_server(args, judge=bool(args.rerank), work=work))


def _prompts(args: argparse.Namespace) -> None:
    from irgate.eval.beir import load_beir
    from irgate.eval.prompts import K, evaluate

    data = load_beir(args.data, args.split)

    async def work(client: AsyncClient) -> dict[str, Any]:
        evaluation = _evaluation(args, client, data.corpus, data.files)
        await evaluation.start(k=K)
        try:
            return await evaluate(evaluation, data)
        finally:
            await evaluation.close()

    _finish(args, _with_server(args, judge=False, work=work))


def _followir(args: argparse.Namespace) -> None:
    from irgate.eval.followir import evaluate, load_followir, standard_measure

    data = load_followir(args.data, args.split)
    measure = standard_measure(data.name, args.measure)
    if args.rerank < 0 or args.k < 1:
        raise ValueError("--rerank must be 0 or more and --k 1 or more")

    async def work(client: AsyncClient) -> Any:
        evaluation = _evaluation(args, client, data.corpus, data.files)
        await evaluation.start(with_judge=bool(args.rerank), k=args.k)
        try:
            return await evaluate(evaluation, data, measure=measure, k=args.k, rerank=args.rerank,
                                  max_reasoning_tokens=args.max_reasoning_tokens)
        finally:
            await evaluation.close()

    result = _with_server(args, judge=bool(args.rerank), work=work)
    _finish(args, result.summary, runs=(result.run_og, result.run_changed, result.changed))


def _pmrr(args: argparse.Namespace) -> None:
    from irgate.eval.beir import read_qrels
    from irgate.eval.pmrr import p_mrr, read_run

    changed = {qid: [doc for doc, score in docs.items() if score > 0] for qid, docs in read_qrels(args.changed_qrels).items()}
    result = p_mrr(read_run(args.run_og), read_run(args.run_changed), changed)
    for query_id in result.skipped_queries:
        say(f"query {query_id} of the changed qrels is missing from a run: left out, as FollowIR does")
    _finish(args, {"suite": "pmrr", **result.as_dict()})


def _derive(args: argparse.Namespace) -> None:
    from irgate.eval.beir import load_beir
    from irgate.eval.followir import derive_exclusion_set

    summary = derive_exclusion_set(load_beir(args.data, args.split), args.out)
    if args.json:
        print(json.dumps(summary))
    else:
        say(f"{summary['queries']} queries written to {args.out} ({summary['skipped_queries']} without a term); "
             f"{summary['made_non_relevant']} of {summary['relevant_before']} relevant documents are not relevant "
             "under the changed instructions")


SUITES = {"beir": _beir, "prompts": _prompts, "followir": _followir, "pmrr": _pmrr, "derive-followir": _derive}


def run_eval(args: argparse.Namespace) -> None:
    SUITES[args.suite](args)

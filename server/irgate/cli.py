"""The `irgate` command: serve, prepare models, manage collections, index, search, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from irgate.errors import IrgateError as ServerSideError
from irgate.errors import StartupError
from irgate_client import AsyncClient, Client, Document, IrgateError, Verdict

console = Console(stderr=True)

DEFAULT_MODELS = Path("models")


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--server", default=os.environ.get("IRGATE_SERVER", "127.0.0.1:50051"),
                        help="HOST:PORT of a running irgate (env IRGATE_SERVER)")
    parser.add_argument("--api-key", default=os.environ.get("IRGATE_API_KEY", ""), help="API key (env IRGATE_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    parser.add_argument("--ca-cert", type=Path, default=os.environ.get("IRGATE_CA_CERT") or None,
                        help="PEM CA certificate to trust instead of the system roots; implies --tls (env IRGATE_CA_CERT)")
    parser.add_argument("--timeout", type=float, default=120.0, help="deadline per call in seconds")


def _root_certificates(args: argparse.Namespace) -> bytes | None:
    return Path(args.ca_cert).read_bytes() if args.ca_cert else None


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, api_key=args.api_key or None, tls=args.tls, timeout=args.timeout,
                  root_certificates=_root_certificates(args))


def _parser() -> argparse.ArgumentParser:
    from irgate.config import add_arguments
    from irgate.logs import FORMATS, LEVELS

    parser = argparse.ArgumentParser(prog="irgate", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gRPC server")
    add_arguments(serve)
    serve.add_argument("--log-level", type=str.upper, choices=LEVELS, default=os.environ.get("IRGATE_LOG_LEVEL", "INFO").upper(),
                       help="least severe log lines written (env IRGATE_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=FORMATS, default=os.environ.get("IRGATE_LOG_FORMAT", "text"),
                       help="log lines as text, or one JSON object per line (env IRGATE_LOG_FORMAT)")

    prepare = commands.add_parser("prepare", help="build the default models (or your own) for serving")
    prepare.add_argument("--out", type=Path, default=DEFAULT_MODELS, help="models folder (default: %(default)s)")
    prepare.add_argument("--embedder-source", type=Path, help="a local Hugging Face checkpoint instead of all-MiniLM-L6-v2")
    prepare.add_argument("--preset", choices=("sentence-transformers", "promptriever"), help="how the source was trained")
    prepare.add_argument("--lora", type=Path, help="LoRA adapter folder merged into --embedder-source")
    prepare.add_argument("--max-tokens", type=int, help="override the model's input limit")
    prepare.add_argument("--judge-source", type=Path, help="a local Hugging Face causal LM (e.g. rank1-7b) instead of SmolLM2")
    prepare.add_argument("--no-judge", action="store_true", help="prepare the embedder only")
    prepare.add_argument("--triton", action="store_true", help="also fill a Triton model repository")
    prepare.add_argument("--triton-flavour", choices=("gpu", "cpu"), default="gpu",
                         help="gpu: the embedder for the onnxruntime backend (judge: build-judge-engine); cpu: embedder and "
                              "judge as python-backend models that run anywhere (default: %(default)s)")
    prepare.add_argument("--model-repository", type=Path,
                         help="Triton model repository (default: model_repository for gpu, OUT/triton for cpu)")

    engine = commands.add_parser("build-judge-engine",
                                 help="on a CUDA machine with TensorRT-LLM: build the judge engine for Triton (trtllm-build)")
    engine.add_argument("checkpoint", type=Path, help="Hugging Face checkpoint of the judge (e.g. rank1-7b)")
    engine.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    engine.add_argument("--dtype", default="bfloat16")
    engine.add_argument("--max-batch-size", type=int, default=64)
    engine.add_argument("--max-seq-len", type=int, help="default: the model's positions, at most Rank1's 16k")

    collection = commands.add_parser("collection", help="create, list, describe or delete collections")
    collection_commands = collection.add_subparsers(dest="action", required=True)
    for action in ("create", "describe", "delete"):
        sub = collection_commands.add_parser(action)
        sub.add_argument("name")
        _client_options(sub)
        if action == "create":
            sub.add_argument("--precision", choices=("f16", "f32", "i8"), default="f16")
    _client_options(collection_commands.add_parser("list"))
    check = collection_commands.add_parser(
        "check", help="verify that a collection's store and index agree (reads the files; stop the server first)")
    check.add_argument("name")
    check.add_argument("--data-dir", type=Path, default=Path(os.environ.get("IRGATE_DATA_DIR", "data")),
                       help="the server's --data-dir (env IRGATE_DATA_DIR; default: %(default)s)")

    index = commands.add_parser("index", help="upsert a BEIR corpus file (.jsonl or .jsonl.gz) into a collection")
    index.add_argument("collection")
    index.add_argument("file", type=Path)
    index.add_argument("--batch-size", type=int, default=128)
    index.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    _client_options(index)

    search = commands.add_parser("search", help="search a collection")
    search.add_argument("collection")
    search.add_argument("query")
    search.add_argument("--instruction", default="")
    search.add_argument("--k", type=int, default=10)
    search.add_argument("--rerank", type=int, default=0, metavar="N", help="let the judge rerank the top N hits")
    search.add_argument("--max-reasoning-tokens", type=int, default=64, help="judge's reasoning budget per document")
    search.add_argument("--json", action="store_true", help="one JSON object per hit")
    _client_options(search)

    judge = commands.add_parser("judge", help="ask the reasoning judge whether documents are relevant to a query")
    judge.add_argument("query")
    judge.add_argument("--doc", action="append", required=True, metavar="TEXT", help="a passage; repeat for more")
    judge.add_argument("--instruction", default="")
    judge.add_argument("--max-reasoning-tokens", type=int, default=64)
    judge.add_argument("--json", action="store_true", help="one JSON object per document, as each verdict is ready")
    _client_options(judge)

    bench = commands.add_parser("bench", help="measure speed against the naive baseline")
    bench_commands = bench.add_subparsers(dest="suite", required=True)
    bench_judge = bench_commands.add_parser("judge", help="in-process judge vs one-document-at-a-time generate")
    bench_judge.add_argument("--model", type=Path, default=DEFAULT_MODELS / "judge", help="prepared judge folder")
    bench_judge.add_argument("--documents", type=int, default=16)
    bench_judge.add_argument("--max-reasoning-tokens", type=int, default=64)
    bench_judge.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median counts")
    bench_judge.add_argument("--json", action="store_true")
    bench_embed = bench_commands.add_parser("embed", help="irgate over gRPC vs raw ONNX Runtime vs sentence-transformers")
    bench_embed.add_argument("--model", type=Path, default=DEFAULT_MODELS / "embedder", help="prepared embedder folder")
    bench_embed.add_argument("--data", type=Path, help="a BEIR folder whose corpus to embed (default: synthetic passages)")
    bench_embed.add_argument("--documents", type=int, default=512)
    bench_embed.add_argument("--json", action="store_true")

    health = commands.add_parser("health", help="ask the server's grpc.health.v1 service")
    health.add_argument("--service", default="", help="service name; empty for the whole server")
    _client_options(health)

    evaluate = commands.add_parser("eval", help="evaluate retrieval quality through the gRPC API")
    eval_commands = evaluate.add_subparsers(dest="suite", required=True)
    beir = eval_commands.add_parser("beir", help="a BEIR data set folder (corpus, queries, qrels/)")
    beir.add_argument("--data", type=Path, required=True)
    beir.add_argument("--split", default="test")
    beir.add_argument("--instruction", default="")
    beir.add_argument("--json", action="store_true")
    beir.add_argument("--embedder", default=os.environ.get("IRGATE_EMBEDDER", f"onnx:{DEFAULT_MODELS / 'embedder'}"),
                      help="embedder of the temporary server when --server is not given")
    beir.add_argument("--rerank", type=int, default=0, metavar="N", help="judge the top N hits of every query")
    beir.add_argument("--max-reasoning-tokens", type=int, default=64)
    beir.add_argument("--judge", default=os.environ.get("IRGATE_JUDGE", f"local:{DEFAULT_MODELS / 'judge'}"),
                      help="judge of the temporary server when --rerank is used without --server")
    beir.add_argument("--server", default=os.environ.get("IRGATE_SERVER", ""),
                      help="HOST:PORT of a running irgate; without it a temporary server is started")
    beir.add_argument("--api-key", default=os.environ.get("IRGATE_API_KEY", ""))
    return parser


def _serve(args: argparse.Namespace) -> None:
    from irgate.config import settings_from
    from irgate.logs import configure
    from irgate.server import serve

    configure(args.log_level, args.log_format)
    asyncio.run(serve(settings_from(args)))


def _prepare(args: argparse.Namespace) -> None:
    from irgate.models.prepare import export_embedder, prepare_default_embedder

    target = args.out / "embedder"
    if args.embedder_source:
        manifest = export_embedder(args.embedder_source, target, preset=args.preset, lora=args.lora, max_tokens=args.max_tokens)
    else:
        manifest = prepare_default_embedder(target)
    console.print(f"embedder ready: {manifest.name}, {manifest.dimension} dims, {manifest.pooling} pooling -> {target}")
    if not args.no_judge:
        from irgate.models.judge import prepare_judge

        judge = prepare_judge(args.judge_source, args.out / "judge")
        console.print(f"judge ready: {judge.name}, reasoning cap {judge.max_reasoning_tokens} tokens -> {args.out / 'judge'}")
    if args.triton:
        from irgate.models.triton import prepare_triton_repository

        cpu = args.triton_flavour == "cpu"
        repository = args.model_repository or (args.out / "triton" if cpu else Path("model_repository"))
        config = prepare_triton_repository(target, repository, flavour=args.triton_flavour,
                                           judge_folder=args.out / "judge" if cpu and not args.no_judge else None)
        console.print(f"Triton repository ready ({args.triton_flavour} flavour): {config.parent.parent}")


def _build_judge_engine(args: argparse.Namespace) -> None:
    from irgate.models.triton import build_judge_engine

    engine = build_judge_engine(args.checkpoint, args.model_repository, dtype=args.dtype,
                                max_batch_size=args.max_batch_size, max_seq_len=args.max_seq_len)
    console.print(f"judge engine built: {engine}; serve with tritonserver --model-repository {args.model_repository}")


def _check_collection(args: argparse.Namespace) -> None:
    from irgate.index.store import check_collection

    problems = check_collection(args.data_dir / "collections", args.name)
    for problem in problems:
        print(f"{args.name}: {problem}")
    if problems:
        sys.exit(1)
    print(f"{args.name}: store and index agree")


def _collection(args: argparse.Namespace) -> None:
    if args.action == "check":
        _check_collection(args)
        return
    with _client(args) as client:
        if args.action == "create":
            info = client.create_collection(args.name, precision=args.precision)
            console.print(f"created {info.name} ({info.dimension} dims, {info.precision}, model {info.model})")
        elif args.action == "delete":
            client.delete_collection(args.name)
            console.print(f"deleted {args.name}")
        else:
            infos = [client.describe_collection(args.name)] if args.action == "describe" else client.list_collections()
            table = Table("name", "documents", "dimension", "precision", "model")
            for info in infos:
                table.add_row(info.name, str(info.documents), str(info.dimension), info.precision, info.model)
            Console().print(table)


def _beir_documents(path: Path, progress: Progress) -> Iterator[Document]:
    from irgate.eval.beir import read_jsonl

    task = progress.add_task(f"indexing {path.name}", total=None)
    for row in read_jsonl(path):
        yield Document(id=str(row["_id"]), title=row.get("title", ""), text=row["text"],
                       metadata=row.get("metadata") or {})
        progress.advance(task)


def _index(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.create and args.collection not in {info.name for info in client.list_collections()}:
            client.create_collection(args.collection)
        with Progress(console=console) as progress:
            result = client.upsert(args.collection, _beir_documents(args.file, progress),
                                   batch_size=args.batch_size, timeout=None)
        console.print(f"upserted {result.upserted} ({result.replaced} replaced, {result.total_tokens} tokens); "
                      f"{args.collection} holds {result.documents} documents")


def _search(args: argparse.Namespace) -> None:
    with _client(args) as client:
        hits = client.search(args.collection, args.query, instruction=args.instruction, k=args.k, include_documents=True,
                             rerank=args.rerank, max_reasoning_tokens=args.max_reasoning_tokens)
    if args.json:
        for rank, hit in enumerate(hits, 1):
            document = hit.document
            print(json.dumps({"rank": rank, "id": hit.id, "score": hit.score, "dense_score": hit.dense_score,
                              "judged": hit.verdict is not None, "title": document.title if document else "",
                              "text": document.text if document else ""}))
        return
    table = Table("rank", "score", "dense", "id", "title / text")
    for rank, hit in enumerate(hits, 1):
        snippet = (hit.document.title or hit.document.text)[:100] if hit.document else ""
        table.add_row(str(rank), f"{hit.score:.4f}", f"{hit.dense_score:.4f}", hit.id, snippet)
    Console().print(table)


def _health(args: argparse.Namespace) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    secure = args.tls or args.ca_cert
    channel = (grpc.secure_channel(args.server, grpc.ssl_channel_credentials(_root_certificates(args))) if secure
               else grpc.insecure_channel(args.server))
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    print(status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        sys.exit(1)


def _eval(args: argparse.Namespace) -> None:
    from irgate.eval.beir import evaluate, load_beir
    from irgate.local_server import LocalServer

    data = load_beir(args.data, args.split)

    async def run(address: str) -> dict[str, object]:
        async with AsyncClient(address, api_key=args.api_key or None, timeout=600) as client:
            return await evaluate(client, data, instruction=args.instruction, rerank=args.rerank,
                                  max_reasoning_tokens=args.max_reasoning_tokens, show_progress=not args.json)

    if args.server:
        result = asyncio.run(run(args.server))
    else:
        with tempfile.TemporaryDirectory(prefix="irgate-eval-") as data_dir:
            judge = args.judge if args.rerank else "none"
            with LocalServer(Path(data_dir), ["--embedder", args.embedder, "--judge", judge]) as server:
                result = asyncio.run(run(server.address))
    if args.json:
        print(json.dumps(result))
    else:
        table = Table("metric", "value")
        for key, value in result.items():
            table.add_row(key, str(value))
        Console().print(table)


def _judge(args: argparse.Namespace) -> None:
    with _client(args) as client:
        events = client.judge_stream(args.query, args.doc, instruction=args.instruction,
                                     max_reasoning_tokens=args.max_reasoning_tokens, return_reasoning=True)
        verdicts = []
        for event in events:  # completion order: print each verdict the moment it is ready
            if isinstance(event, Verdict):
                verdicts.append(event)
                if args.json:
                    print(json.dumps({"index": event.index, "score": event.score, "relevant": event.relevant,
                                      "reasoning": event.reasoning, "reasoning_tokens": event.reasoning_tokens,
                                      "ended": event.ended}), flush=True)
    if args.json:
        return
    table = Table("doc", "relevant", "score", "tokens", "ended", "reasoning")
    for verdict in sorted(verdicts, key=lambda item: item.index):
        table.add_row(str(verdict.index), str(verdict.relevant), f"{verdict.score:.4f}", str(verdict.reasoning_tokens),
                      verdict.ended, verdict.reasoning[-120:])
    Console().print(table)


def _bench(args: argparse.Namespace) -> None:
    if args.suite == "judge":
        from irgate.bench.judge import run_judge_benchmark

        result = run_judge_benchmark(args.model, documents=args.documents,
                                     max_reasoning_tokens=args.max_reasoning_tokens, repeats=args.repeats)
    else:
        from irgate.bench.embed import run_embed_benchmark, synthetic_texts
        from irgate.eval.beir import load_beir

        if args.data:
            corpus = load_beir(args.data).corpus
            texts = [f"{title} {text}".strip() for title, text in list(corpus.values())[: args.documents]]
        else:
            texts = synthetic_texts(args.documents)
        result = run_embed_benchmark(args.model, texts)
    if args.json:
        print(json.dumps(result))
        return
    table = Table("measure", "value")
    for key, value in result.items():
        table.add_row(key, str(value))
    Console().print(table)


COMMANDS = {"serve": _serve, "prepare": _prepare, "build-judge-engine": _build_judge_engine, "collection": _collection, "index": _index,
            "search": _search, "judge": _judge, "bench": _bench, "health": _health, "eval": _eval}


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    # The user's to fix (a status from the server, a missing file, a tool that is not installed): no traceback.
    except (IrgateError, ServerSideError, StartupError, FileNotFoundError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        sys.exit(2)

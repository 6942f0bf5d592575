"""The `irgate` commands but `eval`: serve, prepare models, manage collections and documents, index,
embed, search, judge, bench. `add_commands` declares their flags, `COMMANDS` runs each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gzip
import importlib
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from rich.console import Console
from rich.table import Table
from rich.text import Text

import irgate
from irgate.backends.judge.families import PRESETS as JUDGE_PRESETS
from irgate.cli.shared import (
    DEFAULT_MODELS,
    EXIT_NO,
    EXIT_NO_ANSWER,
    REASONING_HELP,
    add_client_options,
    add_command,
    call_timeout,
    console,
    print_table,
    root_certificates,
    say,
)
from irgate.jsonl import CORPUS_FIELDS, CORPUS_LINE, read_jsonl
from irgate.models.prepare import PRESETS
from irgate.progress import ProgressReport
from irgate_client import Client, Document, IrgateError, Query, UpsertResult, Verdict

def _whole_number(minimum: int, allowed: str) -> Callable[[str], int]:
    """An argparse type: checked as the command line is read, before anything is sent or printed."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; {allowed}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is out of range; {allowed}")
        return value

    return parse


K = _whole_number(1, "it must be between 1 and the server's max_k (`irgate info` shows it)")
RERANK = _whole_number(0, "give the number of top hits the judge reranks, or 0 for none")
REASONING_TOKENS = _whole_number(0, "give reasoning tokens per document, 0 or more")
BATCH_SIZE = _whole_number(1, "give documents per upsert message, 1 to the server's max_batch_size")
PASSAGE_TOKENS = _whole_number(1, "give tokens of each passage the judge reads, 1 to the server's passage cap "
                                   "(`irgate info` shows it)")
PASSAGE_HELP = ("tokens of each passage the judge reads; longer ones are cut at their end "
                "(default: the server's passage cap, see `irgate info`)")



def _client(args: argparse.Namespace) -> Client:
    return Client(args.server, api_key=args.api_key or None, tls=args.tls, timeout=call_timeout(args),
                  root_certificates=root_certificates(args))



def _filter_value(text: str) -> object:
    """A filter value: JSON when it parses (2001, true, "x", [1]), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _filters(items: list[str]) -> dict[str, object]:
    """The search filter: KEY=VALUE pairs, and JSON objects of the filter language (an item starting
    with '{'), all of which must hold."""
    pairs: dict[str, object] = {}
    objects: list[dict[str, object]] = []
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                objects.append(json.loads(item))
            except ValueError as error:
                raise ValueError(f"--filter {item!r} is not a JSON object ({error})") from None
            if not isinstance(objects[-1], dict):
                raise ValueError(f"--filter {item!r} is not a JSON object")
            continue
        key, equals, value = item.partition("=")
        if not equals or not key:
            raise ValueError(f"--filter {item!r} is neither KEY=VALUE nor a JSON object "
                             """(e.g. --filter year=2001 or --filter '{"year": {"$gte": 2020}}')""")
        pairs[key] = _filter_value(value)
    parts = [pairs, *objects] if pairs else objects
    return parts[0] if len(parts) == 1 else ({"$and": parts} if parts else {})



def add_commands(commands: Any) -> None:
    """Every command but `eval`, under the top-level `commands` subparsers."""
    from irgate.config import add_arguments
    from irgate.logs import FORMATS, LEVELS

    serve = add_command(commands, "serve", "run the gRPC server")
    add_arguments(serve)
    serve.add_argument("--log-level", type=str.upper, choices=LEVELS, default=os.environ.get("IRGATE_LOG_LEVEL", "INFO").upper(),
                       help="least severe log lines written (env IRGATE_LOG_LEVEL)")
    serve.add_argument("--log-format", choices=FORMATS, default=os.environ.get("IRGATE_LOG_FORMAT", "text"),
                       help="log lines as text, or one JSON object per line (env IRGATE_LOG_FORMAT)")

    prepare = add_command(commands, "prepare", "build the default models (or your own) for serving")
    prepare.add_argument("--out", type=Path, default=DEFAULT_MODELS, help="models folder")
    prepare.add_argument("--embedder-source", type=Path, help="a local Hugging Face checkpoint instead of all-MiniLM-L6-v2")
    prepare.add_argument("--preset", choices=PRESETS, help="how the source was trained (see docs/models.md)")
    prepare.add_argument("--lora", type=Path, help="LoRA adapter folder merged into --embedder-source")
    prepare.add_argument("--max-tokens", type=int, help="override the model's input limit")
    prepare.add_argument("--judge-source", type=Path, help="a local Hugging Face causal LM (e.g. rank1-7b) instead of SmolLM2")
    prepare.add_argument("--judge-preset", choices=JUDGE_PRESETS, default="rank1",
                         help="the judge family --judge-source was trained as: its prompt, truncation and score rule "
                              "(see docs/models.md)")
    prepare.add_argument("--no-judge", action="store_true", help="prepare the embedder only")
    prepare.add_argument("--triton", action="store_true", help="also fill a Triton model repository")
    prepare.add_argument("--triton-flavour", choices=("gpu", "cpu"), default="gpu",
                         help="gpu: the embedder for the onnxruntime backend (judge: build-judge-engine); cpu: embedder and "
                              "judge as python-backend models that run anywhere")
    prepare.add_argument("--model-repository", type=Path,
                         help="Triton model repository (default: model_repository for gpu, OUT/triton for cpu)")

    engine = add_command(commands, "build-judge-engine",
                      "on a CUDA machine with TensorRT-LLM: build the judge engine for Triton (trtllm-build)")
    engine.add_argument("checkpoint", type=Path, help="Hugging Face checkpoint of the judge (e.g. rank1-7b)")
    engine.add_argument("--model-repository", type=Path, default=Path("model_repository"), help="Triton model repository")
    engine.add_argument("--dtype", default="bfloat16", help="weights and activations of the engine")
    engine.add_argument("--max-batch-size", type=int, default=64, help="most sequences the engine runs at once")
    engine.add_argument("--max-seq-len", type=int, help="default: the model's positions, at most Rank1's 16k")

    info = add_command(commands, "info", "what the server runs: version, models and their backends, limits")
    info.add_argument("--json", action="store_true", help="one JSON object")
    add_client_options(info)

    health = add_command(commands, "health", f"ask the server's grpc.health.v1 service; exit 0 when SERVING, {EXIT_NO} when "
                                          f"not, {EXIT_NO_ANSWER} when the server cannot be reached")
    health.add_argument("--service", default="", help="service name (irgate.v1.Search, ...); empty for the whole server")
    add_client_options(health)

    collection = add_command(commands, "collection", "create, list, describe, delete, export or check collections")
    collection_commands = collection.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = add_command(collection_commands, "create", "create an empty collection")
    create.add_argument("name", help="collection name: letters, digits, '_' and '-'")
    create.add_argument("--precision", choices=("f16", "f32", "i8"), default="f16", help="index precision")
    create.add_argument("--exist-ok", action="store_true", help="succeed when the collection exists already")
    add_client_options(create)
    for action, help in (("describe", "a collection's document count, dimension, precision and model"),
                         ("delete", "delete a collection and all its documents")):
        sub = add_command(collection_commands, action, help)
        sub.add_argument("name", help="collection name")
        if action == "describe":
            sub.add_argument("--json", action="store_true", help="one JSON object")
        add_client_options(sub)
    export = add_command(collection_commands, "export",
                      "write a collection's documents as a BEIR corpus file (JSONL, gzipped when FILE ends in .gz) "
                      "with their metadata, in id order; `irgate index` reads it back")
    export.add_argument("name", help="collection name")
    export.add_argument("file", type=Path, help="corpus file to write (.jsonl or .jsonl.gz); replaced when it exists")
    export.add_argument("--vectors", action="store_true",
                        help="also write each document's stored vector, which `irgate index` then stores as it is "
                             "instead of embedding the text again")
    export.add_argument("--page-size", type=_whole_number(1, "1 to 1000"), default=500, help="documents per call")
    add_client_options(export)
    listing = add_command(collection_commands, "list", "every collection with its document count")
    listing.add_argument("--json", action="store_true", help="one JSON object per collection")
    add_client_options(listing)
    check = add_command(collection_commands, "check",
                     "verify that a collection's store and index agree (reads the files; stop the server first)")
    check.add_argument("name", help="collection name")
    check.add_argument("--data-dir", type=Path, default=Path(os.environ.get("IRGATE_DATA_DIR", "data")),
                       help="the server's --data-dir (env IRGATE_DATA_DIR)")

    documents = add_command(commands, "documents", "get or delete documents by id")
    document_commands = documents.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = add_command(document_commands, "get", "print documents as JSON lines; exit 1 if an id does not exist")
    get.add_argument("collection", help="collection name")
    get.add_argument("ids", nargs="+", metavar="ID", help="document ids")
    get.add_argument("--vectors", action="store_true", help="include each document's stored vector")
    add_client_options(get)
    delete = add_command(document_commands, "delete", "delete documents; ids that do not exist are counted")
    delete.add_argument("collection", help="collection name")
    delete.add_argument("ids", nargs="+", metavar="ID", help="document ids")
    add_client_options(delete)

    index = add_command(commands, "index", "upsert a BEIR corpus file (.jsonl or .jsonl.gz) into a collection; "
                                        "a rerun skips documents stored unchanged")
    index.add_argument("collection", help="collection name")
    index.add_argument("file", type=Path, help="BEIR corpus: one {\"_id\", \"title\", \"text\"} object per line, optionally "
                                               "with \"metadata\" (an object) and \"vector\" (stored as given, not embedded)")
    index.add_argument("--batch-size", type=BATCH_SIZE, default=128, help="documents per upsert message")
    index.add_argument("--create", action="store_true", help="create the collection if it does not exist")
    add_client_options(index)

    embed = add_command(commands, "embed", "embed texts with the server's model")
    embed.add_argument("texts", nargs="+", metavar="TEXT", help="texts to embed")
    embed.add_argument("--query", action="store_true", help="embed the texts as queries (documents otherwise)")
    embed.add_argument("--instruction", default="", help="with --query: the instruction appended as the model was trained")
    embed.add_argument("--raw", action="store_true", help="return the pooled vectors without L2 normalisation")
    embed.add_argument("--json", action="store_true", help="one JSON object per text, with every value")
    add_client_options(embed)

    search = add_command(commands, "search", "search a collection, optionally reranked by the judge")
    search.add_argument("collection", help="collection name")
    search.add_argument("query", help="the query text")
    search.add_argument("--instruction", default="", help="free-text instruction, formatted as the models were trained")
    search.add_argument("--k", type=K, default=10, help="hits to return")
    search.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE|JSON",
                        help="only documents whose metadata KEY equals VALUE (read as JSON when it parses: 2001, true), "
                             """or that match a JSON filter ('{"year": {"$gte": 2020}}', see the README); repeat for more""")
    search.add_argument("--mode", choices=("dense", "lexical", "hybrid"), default="dense",
                        help="find candidates by embedding (dense), by words with BM25 (lexical), or both fused (hybrid)")
    search.add_argument("--rerank", type=RERANK, default=0, metavar="N", help="let the judge rerank the top N hits")
    search.add_argument("--max-reasoning-tokens", type=REASONING_TOKENS, default=None, help=REASONING_HELP)
    search.add_argument("--max-passage-tokens", type=PASSAGE_TOKENS, default=None, help=PASSAGE_HELP)
    search.add_argument("--reasoning", action="store_true", help="also show the judge's reasoning for each judged hit")
    search.add_argument("--json", action="store_true", help="one JSON object per hit, with the verdict of judged hits")
    add_client_options(search)

    judge = add_command(commands, "judge", "ask the reasoning judge whether documents are relevant to a query")
    judge.add_argument("query", help="the query text")
    judge.add_argument("--doc", action="append", required=True, metavar="TEXT", help="a passage; repeat for more")
    judge.add_argument("--instruction", default="", help="free-text instruction joined to the query")
    judge.add_argument("--max-reasoning-tokens", type=REASONING_TOKENS, default=None, help=REASONING_HELP)
    judge.add_argument("--max-passage-tokens", type=PASSAGE_TOKENS, default=None, help=PASSAGE_HELP)
    judge.add_argument("--reasoning", action="store_true",
                       help="also show each document's whole reasoning (the table shows its end; --json always has it)")
    judge.add_argument("--json", action="store_true", help="one JSON object per document, as each verdict is ready")
    add_client_options(judge)

    bench = add_command(commands, "bench", "measure speed against the naive baseline")
    bench_commands = bench.add_subparsers(dest="suite", required=True, metavar="SUITE")
    bench_judge = add_command(bench_commands, "judge", "in-process judge vs one-document-at-a-time generate")
    bench_judge.add_argument("--model", type=Path, default=DEFAULT_MODELS / "judge", help="prepared judge folder")
    bench_judge.add_argument("--documents", type=int, default=16, help="documents judged per run")
    bench_judge.add_argument("--max-reasoning-tokens", type=int, default=64, help="reasoning budget per document")
    bench_judge.add_argument("--repeats", type=int, default=3, help="timed runs per side; the median counts")
    bench_judge.add_argument("--scheduling", action=argparse.BooleanOptionalAction, default=True,
                             help="also measure the continuous-batching scheduler (minutes on a CPU)")
    bench_judge.add_argument("--big", type=int, default=100,
                             help="documents of the big call in the scheduler figures (the concurrent calls hold big/5 each, the shared-prefix rerank big/2)")
    bench_judge.add_argument("--long-passages", action="store_true",
                             help="instead: a top-N rerank (--documents) of context-length passages at the judge's default "
                                  "budget, with its passage cap and without, and a 1 MB passage's cost to the event loop")
    bench_judge.add_argument("--json", action="store_true", help="one JSON object")
    bench_embed = add_command(bench_commands, "embed", "irgate over gRPC vs raw ONNX Runtime vs sentence-transformers")
    bench_embed.add_argument("--model", type=Path, default=DEFAULT_MODELS / "embedder", help="prepared embedder folder")
    bench_embed.add_argument("--data", type=Path, help="a BEIR folder whose corpus to embed (default: synthetic passages)")
    bench_embed.add_argument("--documents", type=int, default=512, help="texts embedded per side")
    bench_embed.add_argument("--triton", action="store_true",
                             help="instead: the Embed RPC through a local tritonserver (make triton) vs in-process, at 1 and 16 clients")
    bench_embed.add_argument("--http", action="store_true",
                             help="instead: the OpenAI embeddings route (openai SDK) vs the gRPC Embed RPC of one server, at 1 and 16 clients")
    bench_embed.add_argument("--json", action="store_true", help="one JSON object")


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

        judge = prepare_judge(args.judge_source, args.out / "judge", preset=args.judge_preset)
        how = f"reasoning cap {judge.max_reasoning_tokens} tokens" if judge.scoring == "reasoning" else "scores in one step"
        console.print(f"judge ready: {judge.name} ({judge.family}), {how} -> {args.out / 'judge'}")
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




def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _info(args: argparse.Namespace) -> None:
    with _client(args) as client:
        info = client.info()
    if args.json:
        print(json.dumps(dataclasses.asdict(info)))
        return
    table = Table("field", "value")
    for key, value in dataclasses.asdict(info).items():
        # An instruction format holds a newline; shown escaped it stays one readable row.
        table.add_row(key, value.replace("\n", "\\n") if isinstance(value, str) else str(value))
    print_table(table)


def _health(args: argparse.Namespace) -> None:
    with _client(args) as client:
        status = client.health(args.service)
    print(status)
    if status != "SERVING":
        sys.exit(EXIT_NO)


def _check_collection(args: argparse.Namespace) -> None:
    from irgate.index.store import check_collection

    problems = check_collection(args.data_dir / "collections", args.name)
    for problem in problems:
        print(f"{args.name}: {problem}")
    if problems:
        sys.exit(EXIT_NO)
    print(f"{args.name}: store and index agree")


def _collection(args: argparse.Namespace) -> None:
    if args.action == "check":
        _check_collection(args)
        return
    with _client(args) as client:
        if args.action == "export":
            _export(client, args)
            return
        if args.action == "create":
            info = client.create_collection(args.name, precision=args.precision, exist_ok=args.exist_ok)
            say(f"{info.name}: {_count(info.documents, 'document')}, {info.dimension} dims, {info.precision}, model {info.model}")
            return
        if args.action == "delete":
            client.delete_collection(args.name)
            say(f"deleted {args.name}")
            return
        infos = [client.describe_collection(args.name)] if args.action == "describe" else client.list_collections()
    if not infos:  # on stderr, so that --json's output stays valid (no lines)
        say("no collections yet: create one with `irgate collection create NAME`")
    if args.json:
        for info in infos:
            created = info.create_time.isoformat() if info.create_time else None  # RFC 3339, as JSON has no time type
            print(json.dumps({**dataclasses.asdict(info), "create_time": created}))
        return
    table = Table("name", "documents", "dimension", "precision", "model")
    for info in infos:
        if info.state == "DAMAGED":  # its files cannot be read: nothing to show but why, below
            table.add_row(info.name, "damaged", "", "", "")
        else:
            table.add_row(info.name, str(info.documents), str(info.dimension), info.precision, info.model)
    print_table(table)
    for info in infos:
        if info.state == "DAMAGED":
            say(info.damage)


def _export(client: Client, args: argparse.Namespace) -> None:
    """Streams the collection page by page into a file beside FILE, renamed to FILE once complete, so
    that an interrupted export never leaves a file that looks whole."""
    total = client.describe_collection(args.name).documents
    partial = args.file.with_name(f".{args.file.name}.partial")
    written = 0
    try:
        with (gzip.open(partial, "wt", encoding="utf-8") if args.file.suffix == ".gz" else partial.open("w", encoding="utf-8")) as out, \
                ProgressReport(console, f"exporting {args.name}", total, "docs") as progress:
            for page in client.list_documents(args.name, include_vectors=args.vectors, page_size=args.page_size,
                                              timeout=call_timeout(args)):
                for document in page.documents:
                    row: dict[str, Any] = {"_id": document.id, "title": document.title, "text": document.text,
                                           "metadata": dict(document.metadata)}
                    if args.vectors:
                        row["vector"] = document.vector
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                written += len(page.documents)
                progress.advance(len(page.documents))
        partial.replace(args.file)
    finally:
        partial.unlink(missing_ok=True)
    say(f"exported {_count(written, 'document')} of {args.name} to {args.file}"
         + (" with their vectors" if args.vectors else ""))


def _documents(args: argparse.Namespace) -> None:
    with _client(args) as client:
        if args.action == "delete":
            deleted, not_found = client.delete(args.collection, args.ids)
            say(f"deleted {deleted}; {not_found} not found")
            return
        found, missing = client.get(args.collection, args.ids, include_vectors=args.vectors)
    for document in found:
        print(json.dumps({key: value for key, value in dataclasses.asdict(document).items()
                          if key != "vector" or args.vectors}))
    if missing:
        say(f"not found in {args.collection}: {', '.join(missing)}")
        sys.exit(EXIT_NO)


class _Corpus:
    """The documents of a BEIR corpus file; counts the ones without title and text (embedded as empty strings)."""

    def __init__(self, path: Path):
        self.path = path
        self.empty = 0

    def __iter__(self) -> Iterator[Document]:
        # A bad line raises ValueError naming the file, the line and what was expected.
        for row in read_jsonl(self.path, CORPUS_FIELDS, CORPUS_LINE):
            # A vector (as `irgate collection export --vectors` writes) is stored as it is, not embedded again.
            document = Document(id=str(row["_id"]), title=row.get("title") or "", text=row.get("text") or "",
                                metadata=row.get("metadata") or {}, vector=row.get("vector"))
            if not (document.title.strip() or document.text.strip()):
                self.empty += 1
            yield document


def _batches(documents: Iterator[Document], size: int) -> Iterator[list[Document]]:
    while batch := list(itertools.islice(documents, size)):
        yield batch


def _existing(client: Client, collection: str) -> None:
    """Fails before the first document is read when the collection is missing, saying how to make it."""
    try:
        client.describe_collection(collection)
    except IrgateError as error:
        if error.code != grpc.StatusCode.NOT_FOUND:
            raise
        raise IrgateError(error.code, f"collection '{collection}' does not exist; create it with "
                                      f"`irgate collection create {collection}`, or rerun with --create") from None


def _holding(client: Client, collection: str) -> str:
    """What the collection holds after a failed ingest, or why that is unknown."""
    try:
        return f"{collection} now holds {_count(client.describe_collection(collection).documents, 'document')}"
    except IrgateError as error:
        return f"how many documents {collection} holds now is unknown (asking failed: {error.code.name})"


def _index(args: argparse.Namespace) -> None:
    # A first pass for the total that the ETA needs (reading is cheap next to embedding); it also
    # finds a bad line before anything is sent.
    total = sum(1 for _ in read_jsonl(args.file, CORPUS_FIELDS, CORPUS_LINE))
    corpus = _Corpus(args.file)
    committed = UpsertResult(upserted=0, replaced=0, total_tokens=0, documents=0, unchanged=0)
    done = 0
    with _client(args) as client:
        if args.create:
            client.create_collection(args.collection, exist_ok=True)
        else:
            _existing(client, args.collection)
        with ProgressReport(console, f"indexing {args.file.name}", total, "docs") as progress:
            try:
                # One upsert per batch, so that the progress counts what the server committed, not what gRPC buffered.
                for batch in _batches(iter(corpus), args.batch_size):
                    result = client.upsert(args.collection, batch, batch_size=args.batch_size,
                                           timeout=call_timeout(args, bulk=True))
                    committed = UpsertResult(
                        upserted=committed.upserted + result.upserted, replaced=committed.replaced + result.replaced,
                        total_tokens=committed.total_tokens + result.total_tokens, documents=result.documents,
                        unchanged=committed.unchanged + result.unchanged)
                    done += len(batch)
                    progress.advance(len(batch))
            except (IrgateError, ValueError) as error:
                stopped = (f"; {done} of the {total} documents of {args.file.name} were committed (or stored unchanged) "
                           f"before it, {_holding(client, args.collection)}; rerun the same command to resume: "
                           "documents stored unchanged are skipped")
                if isinstance(error, ValueError):
                    raise ValueError(f"{error}{stopped}") from None
                raise IrgateError(error.code, error.message + stopped) from None
    say(f"upserted {committed.upserted} ({committed.replaced} replaced), {committed.unchanged} unchanged and skipped, "
         f"{committed.total_tokens} tokens embedded; {args.collection} holds {_count(committed.documents, 'document')}")
    if corpus.empty:
        say(f"{_count(corpus.empty, 'document')} without title and text: embedded as empty strings, as BEIR and MTEB do")


def _warn_if_not_instructable(client: Client, instruction: str) -> None:
    """An embedder not trained with instructions reads one as more query text: its vector and scores change."""
    if not instruction:
        return
    info = client.info()
    if not info.supports_instructions:
        say(f"warning: the embedder {info.model} was not trained with instructions; the instruction is appended to "
             "the query as plain text (as MTEB does), which changes its vector and every dense score")


def _embed(args: argparse.Namespace) -> None:
    if args.instruction and not args.query:
        raise ValueError("--instruction applies to queries; add --query")
    inputs: list[str | Query] = [Query(text, instruction=args.instruction) for text in args.texts] if args.query else args.texts
    with _client(args) as client:
        _warn_if_not_instructable(client, args.instruction)
        embeddings = client.embed(inputs, raw=args.raw)
    if args.json:
        for text, embedding in zip(args.texts, embeddings):
            print(json.dumps({"text": text, "tokens": embedding.tokens, "truncated": embedding.truncated,
                              "values": embedding.values}))
        return
    table = Table("text", "tokens", "truncated", "dimension", "first values")
    for text, embedding in zip(args.texts, embeddings):
        table.add_row(text[:60], str(embedding.tokens), str(embedding.truncated), str(len(embedding.values)),
                      " ".join(f"{value:+.4f}" for value in embedding.values[:4]) + " ...")
    print_table(table)


def _verdict_json(verdict: Verdict, reasoning: bool) -> dict[str, Any]:
    """Every field of the verdict (score is p(true)); the reasoning only when asked for."""
    return {key: value for key, value in dataclasses.asdict(verdict).items()
            if key not in ("index", "id") and (key != "reasoning" or reasoning)}


@contextlib.contextmanager
def _waiting(message: str) -> Iterator[None]:
    """A spinner on a terminal; one plain line elsewhere."""
    if console.is_terminal:
        with console.status(message):
            yield
    else:
        say(message)
        yield


def _print_reasoning(judged: list[tuple[str, Verdict]]) -> None:
    """Each judged document's whole reasoning, on stdout after the table: (label, verdict) in the table's order."""
    out = Console()
    for label, verdict in judged:
        out.print(f"\n{label} ({verdict.reasoning_tokens} tokens, {verdict.ended}):", markup=False)
        out.print(verdict.reasoning.strip() or "(no reasoning)", markup=False, highlight=False)


def _search(args: argparse.Namespace) -> None:
    filters = _filters(args.filter)
    with _client(args) as client:
        _warn_if_not_instructable(client, args.instruction)
        budget = "up to the server's reasoning cap" if args.max_reasoning_tokens is None else (
            f"up to {args.max_reasoning_tokens} reasoning tokens each")
        with _waiting(f"the judge reranks the top {args.rerank} hits ({budget})") if args.rerank else contextlib.nullcontext():
            hits = client.search(args.collection, args.query, instruction=args.instruction, k=args.k, filter=filters or None,
                                 include_documents=True, rerank=args.rerank, max_reasoning_tokens=args.max_reasoning_tokens,
                                 return_reasoning=args.reasoning, max_passage_tokens=args.max_passage_tokens,
                                 mode=args.mode)
    if not hits:  # on stderr, so that --json's output stays valid (no lines)
        say(f"no hits: {args.collection} holds no document" + (" that matches every --filter" if filters else ""))
    if args.json:
        for rank, hit in enumerate(hits, 1):
            document = hit.document or Document(id=hit.id)
            print(json.dumps({"rank": rank, "id": hit.id, "score": hit.score, "dense_score": hit.dense_score,
                              "lexical_score": hit.lexical_score, "fused_score": hit.fused_score,
                              "verdict": _verdict_json(hit.verdict, args.reasoning) if hit.verdict else None,
                              "title": document.title, "text": document.text, "metadata": dict(document.metadata)}))
        return
    judged = any(hit.verdict for hit in hits)
    # With a rerank the order is the judge's: p(true) and cosine are different scales, so each has its column.
    table = Table()
    stages = {"dense": ("dense",), "lexical": ("lexical",), "hybrid": ("fused", "dense", "lexical")}[args.mode]
    widths = {"rank": 4, "id": 10, **{stage: 6 for stage in stages}, **({"relevant": 8, "p(true)": 7, "ended": 8, "tokens": 6} if judged else {})}
    for header, width in widths.items():
        table.add_column(header, no_wrap=True, min_width=width)
    table.add_column("title / text", no_wrap=True, overflow="ellipsis", ratio=1)  # what gives way in a narrow terminal
    for rank, hit in enumerate(hits, 1):
        verdict = hit.verdict
        judgement = ([str(verdict.relevant), f"{verdict.score:.4f}", verdict.ended, str(verdict.reasoning_tokens)]
                     if verdict else ["-"] * 4) if judged else []
        snippet = (hit.document.title or hit.document.text)[:100] if hit.document else ""
        scores = {"dense": hit.dense_score, "lexical": hit.lexical_score, "fused": hit.fused_score}
        table.add_row(str(rank), hit.id, *("-" if scores[stage] is None else f"{scores[stage]:.4f}" for stage in stages),
                      *judgement, snippet)
    print_table(table)
    if args.reasoning:
        _print_reasoning([(f"{rank}. {hit.id}", hit.verdict) for rank, hit in enumerate(hits, 1) if hit.verdict])



def _judge(args: argparse.Namespace) -> None:
    verdicts = []
    with _client(args) as client, ProgressReport(console, "judging", len(args.doc), "docs") as progress:
        events = client.judge_stream(args.query, args.doc, instruction=args.instruction,
                                     max_reasoning_tokens=args.max_reasoning_tokens, return_reasoning=True,
                                     max_passage_tokens=args.max_passage_tokens)
        for event in events:  # completion order: print each verdict the moment it is ready
            if isinstance(event, Verdict):
                verdicts.append(event)
                progress.advance()
                if args.json:
                    print(json.dumps({"index": event.index, **_verdict_json(event, reasoning=True)}), flush=True)
    if args.json:
        return
    table = Table("doc", "relevant", "p(true)", "tokens", "ended", "reasoning (its end)")
    for verdict in sorted(verdicts, key=lambda item: item.index):
        table.add_row(str(verdict.index), str(verdict.relevant), f"{verdict.score:.4f}", str(verdict.reasoning_tokens),
                      verdict.ended, Text(" ".join(verdict.reasoning.split())[-120:]))
    print_table(table)
    if args.reasoning:
        _print_reasoning([(f"doc {verdict.index}", verdict) for verdict in sorted(verdicts, key=lambda item: item.index)])


# The benchmarks live in the checkout beside server/ (benchmarks/), not in the package: an installed
# irgate has none, and no server module imports them.
BENCHMARKS = Path(irgate.__file__).resolve().parents[2] / "benchmarks"


def _benchmark(name: str) -> Any:
    """benchmarks/NAME.py of the checkout this irgate runs from; its modules import each other by bare name."""
    if not (BENCHMARKS / f"{name}.py").is_file():
        raise FileNotFoundError(f"`irgate bench` runs from a source checkout of irgate, whose benchmarks/ folder "
                                f"holds it: this irgate has no {BENCHMARKS / name}.py (an installed irgate has none)")
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _bench(args: argparse.Namespace) -> None:
    if args.suite == "judge":
        judge = _benchmark("judge")
        if args.long_passages:
            result = judge.run_long_passage_benchmark(args.model, documents=args.documents, console=console)
        else:
            result = judge.run_judge_benchmark(args.model, documents=args.documents,
                                               max_reasoning_tokens=args.max_reasoning_tokens, repeats=args.repeats,
                                               scheduling=args.scheduling, big=args.big, console=console)
    else:
        from irgate.eval.beir import load_beir

        embed = _benchmark("embed")
        if args.data:
            corpus = load_beir(args.data).corpus
            texts = [f"{title} {text}".strip() for title, text in list(corpus.values())[: args.documents]]
        else:
            texts = embed.synthetic_texts(args.documents)
        if args.triton:
            result = embed.run_triton_embed_benchmark(args.model, texts, console=console)
        elif args.http:
            result = embed.run_http_embed_benchmark(args.model, texts, console=console)
        else:
            result = embed.run_embed_benchmark(args.model, texts, console=console)
    if args.json:
        print(json.dumps(result))
        return
    table = Table("measure", "value")
    for key, value in result.items():
        table.add_row(key, str(value))
    print_table(table)




COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "serve": _serve, "prepare": _prepare, "build-judge-engine": _build_judge_engine, "info": _info, "health": _health,
    "collection": _collection, "documents": _documents, "index": _index, "embed": _embed, "search": _search,
    "judge": _judge, "bench": _bench}

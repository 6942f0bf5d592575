"""Builds the layers from Settings and runs the gRPC server until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import signal
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from irgate import __version__, tracing
from irgate.api import reflection
from irgate.api.auth import ApiKeyInterceptor
from irgate.api.collections import CollectionsServicer
from irgate.api.http import HttpFront, HttpServices
from irgate.api.embed import EmbedServicer
from irgate.api.info import InfoServicer
from irgate.api.judge import JudgeServicer
from irgate.api.malformed import MalformedRequestInterceptor
from irgate.api.metrics import (
    COLLECTION_DOCUMENTS,
    JUDGE_BUSY,
    JUDGE_QUEUE_WAIT,
    JUDGE_WORK,
    QUEUED_TEXTS,
    serve_metrics,
)
from irgate.api.rpc import Admission
from irgate.api.search import SearchServicer
from irgate.backends.embedder import EmbedderBackend, OnnxEmbedder
from irgate.backends.judge.contract import JudgeBackend
from irgate.backends.judge.engine import EngineLimits, default_device
from irgate.backends.judge.local import LocalJudge
from irgate.backends.triton import is_triton_address  # tritonclient itself is imported only when used
from irgate.config import Settings
from irgate.core.batching import BatchingQueue
from irgate.core.collections import CollectionService
from irgate.core.embedding import EmbeddingService
from irgate.core.index import Index
from irgate.core.judge import JudgeService
from irgate.core.search import SearchPipeline
from irgate.core.tokenization import TextEncoder
from irgate.errors import ConfigError, StartupError, Unavailable
from irgate.logs import ready_line
from irgate.index.collection import FILES_PER_COLLECTION
from irgate.index.store import CollectionStore
from irgate_client.v1 import irgate_pb2_grpc as pb_grpc

log = logging.getLogger("irgate")

SERVICES = ("irgate.v1.Info", "irgate.v1.Embed", "irgate.v1.Collections", "irgate.v1.Search", "irgate.v1.Judge")
JUDGE_SERVICE = "irgate.v1.Judge"
# What cannot serve while the index engine does not answer: the server as a whole, and the services reading collections.
INDEX_SERVICES = ("", "irgate.v1.Collections", "irgate.v1.Search")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HEALTH_INTERVAL_S = 5.0


def _prepared(folder: Path, what: str, flag: str) -> Path:
    if not (folder / "manifest.json").exists():
        raise ConfigError(f"no prepared {what} at {folder}: run `irgate prepare` first (or set {flag})")
    return folder


def open_embedder(settings: Settings) -> EmbedderBackend:
    """`onnx:FOLDER` -> in-process ONNX Runtime; `triton://HOST:PORT/MODEL` -> Triton (KServe v2)."""
    address = settings.embedder
    if is_triton_address(address):
        from irgate.backends.triton_embedder import TritonEmbedder  # the [triton] extra

        return TritonEmbedder(address, _prepared(settings.embedder_folder, "embedder", "--embedder-folder"))
    scheme, _, target = address.partition(":")
    if scheme == "onnx" and target:
        return OnnxEmbedder(_prepared(Path(target), "embedder", "--embedder"), threads=settings.threads or None)
    raise ConfigError(f"--embedder {address!r} is not supported; use onnx:FOLDER or triton://HOST:PORT/MODEL")


def open_index(settings: Settings, dimension: int, model: str) -> Index:
    """`local` -> usearch + SQLite under DATA_DIR/collections; `milvus://HOST:PORT` -> a Milvus server."""
    milvus = settings.milvus_address
    if milvus is None:
        store = CollectionStore(
            settings.data_dir / "collections", dimension, model, snapshot_every=settings.snapshot_every,
            max_open=settings.max_open_collections,
        )
        for reason in store.unavailable.values():
            log.error("%s", reason)
        return store
    try:
        from irgate.index.milvus import MilvusIndex  # the [milvus] extra
    except ImportError:
        raise ConfigError("--index milvus:// needs pymilvus: pip install 'irgate[milvus]'") from None
    return MilvusIndex(milvus, dimension, model)


def raise_open_file_limit(settings: Settings) -> None:
    """Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit: open collections, sockets and
    model files all hold descriptors, and the common soft limit of 1024 is far below the usual hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as error:  # e.g. an unlimited hard limit that the kernel caps lower
            log.warning("open files: the soft limit %s stays, the hard limit %s was refused (%s)",
                        _files(soft), _files(hard), error)
    raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    log.info("open files: soft limit %s (was %s), hard limit %s", _files(raised), _files(soft), _files(hard))
    held = FILES_PER_COLLECTION * settings.max_open_collections
    if settings.milvus_address is None and raised != resource.RLIM_INFINITY and held > raised // 2:
        log.warning("--max-open-collections %d holds up to %d files open, over half the limit of %d; lower it or raise "
                    "the limit (ulimit -n)", settings.max_open_collections, held, raised)


def _files(limit: int) -> str:
    return "unlimited" if limit == resource.RLIM_INFINITY else str(limit)


def open_judge(settings: Settings) -> JudgeBackend | None:
    """`local:FOLDER` -> in-process judge; `triton://HOST:PORT/MODEL` -> Triton; `none` -> no judge."""
    address = settings.judge
    if address in ("", "none"):
        return None
    if is_triton_address(address):
        from irgate.backends.triton_judge import TritonJudge  # the [triton] extra

        return TritonJudge(address, _prepared(settings.judge_folder, "judge", "--judge-folder"))
    scheme, _, target = address.partition(":")
    if scheme == "local" and target:
        device = default_device()
        log.info("the in-process judge runs on torch device %s", device)
        limits = EngineLimits.for_device(
            device,
            max_batch_tokens=settings.judge_max_batch_tokens,
            max_batch_rows=settings.judge_max_batch_rows,
            prefill_chunk_tokens=settings.judge_prefill_chunk_tokens,
        )
        return LocalJudge(_prepared(Path(target), "judge", "--judge"), threads=settings.threads or None, device=device, limits=limits)
    raise ConfigError(f"--judge {address!r} is not supported; use local:FOLDER, triton://HOST:PORT/MODEL or none")


@dataclass
class App:
    """The running layers, so that shutdown can close them in order."""

    server: grpc.aio.Server
    port: int
    queue: BatchingQueue
    store: Index
    embedder: EmbedderBackend
    judge: JudgeBackend | None
    health: health.aio.HealthServicer
    # The same statuses as the gRPC health service, by service name, for the HTTP health path.
    statuses: dict[str, str]
    http: HttpFront
    http_port: int
    _watch: asyncio.Task[None] | None = None

    async def _set_health(self, service: str, status: int) -> None:
        await self.health.set(service, status)
        self.statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(status)

    async def report_health(self) -> None:
        """Health follows the backends: a Triton or a Milvus that goes down turns its services NOT_SERVING."""
        index_ready = await asyncio.to_thread(self.store.ready)
        for service in ("", *SERVICES):
            backend: EmbedderBackend | JudgeBackend | None = self.judge if service == JUDGE_SERVICE else self.embedder
            ready = backend is not None and await backend.ready() and (index_ready or service not in INDEX_SERVICES)
            await self._set_health(service, SERVING if ready else NOT_SERVING)

    def watch_health(self, every: float = HEALTH_INTERVAL_S) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(every)
                await self.report_health()

        self._watch = asyncio.get_running_loop().create_task(loop(), name="irgate-health")

    async def stop(self, grace: float = 5.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for service in ("", *SERVICES):
            await self._set_health(service, NOT_SERVING)
        await self.http.stop()
        await self.server.stop(grace)
        await self.queue.stop()
        await asyncio.to_thread(self.store.close)  # snapshots every index: a fast next start
        await self.embedder.close()
        if self.judge is not None:
            await self.judge.close()
        await asyncio.to_thread(tracing.shutdown)  # sends the spans still queued


def _collection_documents(store: Index) -> list[tuple[str, int]]:
    """Documents per collection for a metrics scrape; none while the index does not answer, so that
    the scrape still brings every other metric (health says why)."""
    try:
        return [(info.name, info.documents) for info in store.list()]
    except Unavailable:
        return []


async def start(settings: Settings) -> App:
    """Builds and starts every layer; raises a StartupError (ConfigError: a setting) that says what to change."""
    settings = settings.validated()
    if settings.otlp_endpoint:
        tracing.export_to(settings.otlp_endpoint)
    raise_open_file_limit(settings)
    embedder = open_embedder(settings)
    manifest = embedder.manifest
    encoder = TextEncoder(manifest, embedder.folder)
    queue = BatchingQueue(embedder, max_batch_tokens=settings.max_batch_tokens)
    queue.start()
    embedding = EmbeddingService(embedder, encoder, queue)
    store = open_index(settings, manifest.dimension, manifest.name)
    message_bytes = settings.max_message_mb * 1024 * 1024
    admission = Admission(settings.max_concurrent_requests, message_bytes, settings.stream_send_timeout_s)
    judge_backend = open_judge(settings)
    judge = (
        JudgeService(
            judge_backend, store, settings.max_judge_documents, settings.max_reasoning_tokens,
            settings.judge_max_passage_tokens,
        )
        if judge_backend is not None
        else None
    )

    interceptors: list[grpc.aio.ServerInterceptor] = [ApiKeyInterceptor(settings.api_key)] if settings.api_key else []
    interceptors.append(MalformedRequestInterceptor())
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
            # gRPC's default SO_REUSEPORT would let a second server share the port silently.
            ("grpc.so_reuseport", 0),
            # gRPC core's defaults allow a client's keepalive ping every 5 minutes, none on an
            # idle channel, and answer a third early one with GOAWAY "too_many_pings", closing
            # calls in flight: SDKs and meshes ping far more often (every 10-30 s). A ping every
            # 10 s, idle or not, is accepted (gRPC clients' own floor).
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ],
    )
    statuses: dict[str, str] = {}
    # The HTTP front answers through the same servicers as gRPC.
    services = HttpServices(
        info=InfoServicer(embedding, judge, settings, admission),
        embed=EmbedServicer(embedding, admission, settings.max_batch_size),
        collections=CollectionsServicer(
            CollectionService(store, embedding), admission, settings.max_batch_size, manifest.dimension, settings.stream_idle_s
        ),
        search=SearchServicer(
            SearchPipeline(embedding, store, judge), admission, settings.max_k, settings.max_batch_size
        ),
        judge=JudgeServicer(judge, admission),
        embedding=embedding,
        judge_model=judge.backend.manifest.name if judge is not None else "",
        settings=settings,
        health=statuses.get,
    )
    pb_grpc.add_InfoServicer_to_server(services.info, server)
    pb_grpc.add_EmbedServicer_to_server(services.embed, server)
    pb_grpc.add_CollectionsServicer_to_server(services.collections, server)
    pb_grpc.add_SearchServicer_to_server(services.search, server)
    pb_grpc.add_JudgeServicer_to_server(services.judge, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable((*SERVICES, health.SERVICE_NAME), server)
    http = HttpFront(services, settings.api_key, message_bytes)  # before the try: its except stops it
    try:
        if settings.tls_cert and settings.tls_key:
            credentials = grpc.ssl_server_credentials(
                [(Path(settings.tls_key).read_bytes(), Path(settings.tls_cert).read_bytes())]
            )
            port = server.add_secure_port(settings.address, credentials)
        else:
            port = server.add_insecure_port(settings.address)
        await server.start()
        tls = (settings.tls_cert, settings.tls_key) if settings.tls_cert else None
        http_port = await http.start(settings.host, settings.http_port, tls) if settings.http_port else 0
        metrics_port = 0
        if settings.metrics_port:
            metrics_port = serve_metrics(
                settings.metrics_host or settings.host,
                settings.metrics_port,
                statuses.get,
                api_key=settings.api_key,
                tls=tls,
            )
    except (RuntimeError, OSError) as error:  # the port is taken, or the address is not ours
        await http.stop()
        store.close()
        raise StartupError(f"cannot listen on {settings.address} (HTTP port {settings.http_port}, "
                           f"metrics port {settings.metrics_port}): {error}") from None
    QUEUED_TEXTS.set_function(lambda: queue.queued_texts)
    COLLECTION_DOCUMENTS.set_function(lambda: _collection_documents(store))
    if judge_backend is not None:
        JUDGE_BUSY.set_function(lambda: float(judge_backend.busy))
    if judge is not None:
        stats = judge.backend.stats
        if stats is not None:
            stats.on_queue_wait = JUDGE_QUEUE_WAIT.observe
        JUDGE_WORK.watch(lambda: judge.counts, (lambda: stats) if stats is not None else None)
    app = App(server=server, port=port, queue=queue, store=store, embedder=embedder, judge=judge_backend,
              health=health_servicer, statuses=statuses, http=http, http_port=http_port)
    await app.report_health()
    app.watch_health()
    for line in _summary(settings, port, http_port, metrics_port, embedder, judge, store):
        log.info("%s", line)
    return app


def _summary(
    settings: Settings, port: int, http_port: int, metrics_port: int, embedder: EmbedderBackend, judge: JudgeService | None,
    store: Index,
) -> list[str]:
    """What an operator checks first: where it listens, which models run where, what it holds, its limits."""
    scheme = "https" if settings.tls_cert else "http"
    metrics_host = settings.metrics_host or settings.host
    metrics = f"{scheme}://{metrics_host}:{metrics_port}/metrics (health: /health)" if metrics_port else "off"
    manifest = embedder.manifest
    collections = ", ".join(f"{info.name} ({info.documents} documents)" for info in store.list()) or "none yet"
    judged = (f"{judge.backend.manifest.name} on {judge.backend.address}, reasoning cap {judge.max_reasoning_tokens} tokens, "
              f"passage cap {judge.max_passage_tokens} tokens"
              if judge is not None else "none (Judge and rerank answer FAILED_PRECONDITION)")
    return [
        f"irgate {__version__}: gRPC on {settings.host}:{port}{' (TLS)' if settings.tls_cert else ''}, "
        f"HTTP {f'{scheme}://{settings.host}:{http_port}' if http_port else 'off'}, "
        f"API key {'required' if settings.api_key else 'off'}; metrics {metrics}",
        f"embedder: {manifest.name} on {embedder.address} ({manifest.dimension} dimensions, {manifest.max_tokens} tokens, "
        f"{manifest.pooling} pooling)",
        f"judge: {judged}",
        f"collections {store.location}: {collections}",
        f"limits: {settings.max_batch_size} texts per Embed or upsert message, k up to {settings.max_k}, "
        f"{settings.max_judge_documents} judged documents per call, {settings.max_concurrent_requests} concurrent calls, "
        f"{settings.max_batch_tokens} tokens per model batch, {settings.max_message_mb} MiB per message",
    ]


async def serve(settings: Settings) -> None:
    app = await start(settings)
    # Tests and scripts read this line to learn the port when --port 0 picked one.
    print(ready_line(f"{settings.host}:{app.port}", os.getpid()), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down")
    await app.stop()

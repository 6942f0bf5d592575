"""Server settings: one dataclass, every field settable by a `--flag` and by an `IRGATE_*` variable.

Precedence: command-line flag > environment variable > default. Settings.validated() checks every
value before anything starts and raises ConfigError with one line naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from irgate.errors import ConfigError

MAX_PORT = 65535
MILVUS_SCHEME = "milvus://"
# gRPC message limits are signed 32-bit byte counts.
MAX_MESSAGE_MB = 2047


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 0.0.0.0 exposes the server beyond this machine"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free one and prints it)"})
    data_dir: Path = field(default=Path("data"), metadata={"help": "collections live under DATA_DIR/collections (with --index local)"})
    index: str = field(default="local", metadata={"help": "collection index: local (usearch + SQLite under DATA_DIR) or milvus://HOST:PORT (a Milvus server holds every collection; gateways sharing it hold no state)"})
    embedder: str = field(default="onnx:models/embedder", metadata={"help": "embedder backend: onnx:FOLDER (a prepared model) or triton://HOST:PORT/MODEL"})
    embedder_folder: Path = field(default=Path("models/embedder"), metadata={"help": "with a triton:// embedder: the prepared folder whose manifest and tokenizer the gateway uses"})
    judge: str = field(default="local:models/judge", metadata={"help": "judge backend: local:FOLDER (a prepared causal LM), triton://HOST:PORT/MODEL, or none"})
    judge_folder: Path = field(default=Path("models/judge"), metadata={"help": "with a triton:// judge: the prepared folder whose manifest and tokenizer the gateway uses"})
    max_reasoning_tokens: int = field(default=8192, metadata={"help": "server cap on reasoning tokens per judged document (the judge manifest may cap lower)"})
    judge_max_passage_tokens: int = field(default=0, metadata={"help": "most tokens of each passage (title included) the judge reads, longer ones are cut at their end; requests may lower it; 0: the judge manifest's default (256 for SmolLM2, 2048 for Rank1)"})
    api_key: str = field(default="", metadata={"help": "when set, every call needs 'authorization: Bearer KEY' (prefer --api-key-file: ps shows arguments)"})
    api_key_file: str = field(default="", metadata={"help": "file holding the API key (one line); instead of --api-key"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain; with --tls-key the server speaks TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert"})
    http_port: int = field(default=8080, metadata={"help": "HTTP/JSON port on --host (OpenAI, Cohere, Jina and text-embeddings-inference routes, and irgate's own API as JSON); 0 disables"})
    otlp_endpoint: str = field(default="", metadata={"help": "OTLP/gRPC collector (HOST:PORT, or an https:// URL) to send traces to: a span per call, children per stage, parented by the caller's traceparent; empty: no tracing"})
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus metrics port; 0 disables. With an API key, /metrics needs it too"})
    metrics_host: str = field(default="", metadata={"help": "address the metrics port binds; empty: the same as --host"})
    threads: int = field(default=0, metadata={"help": "model threads; 0 uses every core"})
    # 2048 measured fastest on a 2-core CPU (39.6 docs/s at 1024, 38.4 at 2048, 32.5 at 16384 on SciFact);
    # a GPU wants larger batches (text-embeddings-inference uses 16384).
    max_batch_tokens: int = field(default=2048, metadata={"help": "token budget of one model batch (padding included); raise it on a GPU"})
    max_batch_size: int = field(default=256, metadata={"help": "most texts per Embed request or documents per upsert message"})
    max_concurrent_requests: int = field(default=512, metadata={"help": "requests in progress before RESOURCE_EXHAUSTED"})
    max_k: int = field(default=1000, metadata={"help": "largest k a search may ask for"})
    max_judge_documents: int = field(default=100, metadata={"help": "most documents one judge call or rerank stage may judge"})
    max_message_mb: int = field(default=64, metadata={"help": "largest gRPC message in MiB"})
    snapshot_every: int = field(default=50_000, metadata={"help": "snapshot a collection's index after this many changes"})
    max_open_collections: int = field(default=128, metadata={"help": "collections kept open at once with --index local (3 file descriptors each); the least recently used is closed and opens again on use"})
    # The judge engine's capacity; 0 takes the defaults measured for the device (CPU or GPU).
    judge_max_batch_tokens: int = field(default=0, metadata={"help": "KV tokens the in-process judge holds at once: rows in use x the widest row's prompt + reasoning (a row alone always runs); 0: 65536 on CPU, 262144 on GPU"})
    judge_max_batch_rows: int = field(default=0, metadata={"help": "documents the in-process judge decodes at once; 0: 16 on CPU, 256 on GPU"})
    judge_prefill_chunk_tokens: int = field(default=0, metadata={"help": "prompt tokens per prefill step, so cancellation and new requests wait at most one chunk; 0: 256 on CPU, 4096 on GPU"})
    stream_idle_s: int = field(default=60, metadata={"help": "seconds a client stream may wait between messages before it is closed"})
    stream_send_timeout_s: int = field(default=30, metadata={"help": "seconds a server stream (JudgeStream) may wait for its client to read before it is ended and its slot freed"})

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def milvus_address(self) -> str | None:
        """HOST:PORT of --index milvus://HOST:PORT, None for the local index; raises ConfigError otherwise."""
        if self.index == "local":
            return None
        target = self.index.removeprefix(MILVUS_SCHEME) if self.index.startswith(MILVUS_SCHEME) else ""
        host, _, port = target.rpartition(":")
        if not host or "/" in target or not port.isdigit() or not 0 < int(port) <= MAX_PORT:
            raise ConfigError(f"{_flag('index')} is {self.index!r}; use local or milvus://HOST:PORT")
        return target

    def validated(self) -> Settings:
        """These settings checked, with the API key read from --api-key-file; raises ConfigError."""
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise ConfigError(f"{_flag(name)} is {getattr(self, name)}; it must be at least 1")
        for name in ("port", "http_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= MAX_PORT:
                raise ConfigError(f"{_flag(name)} is {getattr(self, name)}; ports are 0 to {MAX_PORT}")
        for name in ("judge_max_batch_tokens", "judge_max_batch_rows", "judge_prefill_chunk_tokens"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_flag(name)} is {getattr(self, name)}; give 0 (the device's default) or more")
        if self.judge_max_passage_tokens < 0:
            raise ConfigError(f"{_flag('judge_max_passage_tokens')} is {self.judge_max_passage_tokens}; give 0 (the judge manifest's default) or more")
        if self.threads < 0:
            raise ConfigError(f"{_flag('threads')} is {self.threads}; give 0 (every core) or more")
        if not 1 <= self.max_message_mb <= MAX_MESSAGE_MB:
            raise ConfigError(f"{_flag('max_message_mb')} is {self.max_message_mb}; it must be 1 to {MAX_MESSAGE_MB}")
        self.milvus_address  # noqa: B018 - raises ConfigError for a malformed --index
        if not self.host.strip():
            raise ConfigError(f"{_flag('host')} is empty; give an address such as 127.0.0.1")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS needs both --tls-cert and --tls-key; refusing to fall back to plaintext")
        api_key = self.api_key
        if self.api_key_file:
            if api_key:
                raise ConfigError("--api-key and --api-key-file are both set; give the key one way")
            try:
                api_key = Path(self.api_key_file).read_text().strip()
            except OSError as error:
                raise ConfigError(f"{_flag('api_key_file')}: cannot read {self.api_key_file} ({error.strerror})") from None
            if not api_key:
                raise ConfigError(f"{_flag('api_key_file')}: {self.api_key_file} is empty; write the key in it")
        if any(not 0x21 <= ord(character) <= 0x7E for character in api_key):
            # It travels in an HTTP/2 header value: printable ASCII without spaces.
            raise ConfigError("the API key may hold printable ASCII characters only, without spaces")
        return dataclasses.replace(self, api_key=api_key)


_AT_LEAST_ONE = (
    "max_reasoning_tokens",
    "max_batch_tokens",
    "max_batch_size",
    "max_concurrent_requests",
    "max_k",
    "max_judge_documents",
    "snapshot_every",
    "max_open_collections",
    "stream_idle_s",
    "stream_send_timeout_s",
)


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')} (env IRGATE_{name.upper()})"


def _kind(item: dataclasses.Field[object]) -> type:
    return int if isinstance(item.default, int) else (Path if isinstance(item.default, Path) else str)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting; settings_from fills in what the command line leaves out."""
    for item in dataclasses.fields(Settings):
        variable = f"IRGATE_{item.name.upper()}"
        flag = "--" + item.name.replace("_", "-")
        default = "none" if item.default == "" else item.default  # as the README's table says it
        shown = "" if item.name == "api_key" else f"; default: {default}"  # never print a secret
        parser.add_argument(flag, type=_kind(item), default=None, help=f"{item.metadata['help']} (env {variable}{shown})")


def settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Settings:
    """Flag > IRGATE_* variable > default; raises ConfigError for a variable that does not parse."""
    environ = os.environ if environ is None else environ
    values = {}
    for item in dataclasses.fields(Settings):
        value = getattr(args, item.name, None)
        variable = f"IRGATE_{item.name.upper()}"
        if value is None and variable in environ:
            try:
                value = _kind(item)(environ[variable])
            except ValueError:
                raise ConfigError(f"{variable}={environ[variable]!r} is not a whole number") from None
        values[item.name] = item.default if value is None else value
    return Settings(**values)

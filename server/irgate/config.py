"""Server settings: one dataclass, every field settable by a `--flag` and by an `IRGATE_*` variable.

Precedence: command-line flag > environment variable > default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 0.0.0.0 exposes the server beyond this machine"})
    port: int = field(default=50051, metadata={"help": "gRPC port (0 picks a free one and prints it)"})
    data_dir: Path = field(default=Path("data"), metadata={"help": "collections live under DATA_DIR/collections"})
    embedder: str = field(default="onnx:models/embedder", metadata={"help": "embedder backend: onnx:FOLDER (a prepared model) or triton://HOST:PORT/MODEL"})
    embedder_folder: Path = field(default=Path("models/embedder"), metadata={"help": "with a triton:// embedder: the prepared folder whose manifest and tokenizer the gateway uses"})
    judge: str = field(default="local:models/judge", metadata={"help": "judge backend: local:FOLDER (a prepared causal LM), triton://HOST:PORT/MODEL, or none"})
    judge_folder: Path = field(default=Path("models/judge"), metadata={"help": "with a triton:// judge: the prepared folder whose manifest and tokenizer the gateway uses"})
    max_reasoning_tokens: int = field(default=8192, metadata={"help": "server cap on reasoning tokens per judged document (the judge manifest may cap lower)"})
    api_key: str = field(default="", metadata={"help": "when set, every call needs 'authorization: Bearer KEY'"})
    tls_cert: str = field(default="", metadata={"help": "PEM certificate chain; with --tls-key the server speaks TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key for --tls-cert"})
    metrics_port: int = field(default=9464, metadata={"help": "Prometheus metrics port on HOST; 0 disables"})
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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting, with its IRGATE_* variable as the default."""
    for item in dataclasses.fields(Settings):
        variable = f"IRGATE_{item.name.upper()}"
        flag = "--" + item.name.replace("_", "-")
        kind = int if isinstance(item.default, int) else (Path if isinstance(item.default, Path) else str)
        default = kind(os.environ[variable]) if variable in os.environ else item.default
        shown = "" if item.name == "api_key" else "; default: %(default)s"  # never print a secret
        parser.add_argument(flag, type=kind, default=default, help=f"{item.metadata['help']} (env {variable}{shown})")


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(**{item.name: getattr(args, item.name) for item in dataclasses.fields(Settings)})

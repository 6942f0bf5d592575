"""A `milvus-lite server` child process on a loopback port: the Milvus that `make serve-cluster`
and the tests share between gateways (milvus-lite ships with the [milvus] extra)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from irgate.processes import stop_process

_READY = "gRPC server listening on "


class MilvusLiteServer:
    """`milvus-lite server --data-dir DATA_DIR --host 127.0.0.1 --port PORT`; use as a context manager.

    It binds 0.0.0.0 unless told otherwise, so the host is always given. One process per data directory."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1", start_timeout: float = 60.0) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self.output: deque[str] = deque(maxlen=200)  # its latest lines, for an error report
        self._process: subprocess.Popen[str] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def index_setting(self) -> str:
        """The --index value of gateways that use this server."""
        return f"milvus://{self.address}"

    def start(self) -> MilvusLiteServer:
        self._process = subprocess.Popen(
            [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(self.data_dir),
             "--host", self.host, "--port", str(self.port)],
            # Its own session: a Ctrl-C meant for its owner must not stop it before the gateways using it.
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_output, args=(ready,), daemon=True).start()
        if not ready.wait(self.start_timeout) or self._process.poll() is not None:
            self.stop()
            raise RuntimeError("milvus-lite server did not start:\n" + "".join(self.output))
        return self

    def _read_output(self, ready: threading.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.output.append(line)
            if _READY in line:
                ready.set()
        ready.set()  # it ended before it was ready

    def stop(self, timeout: float = 30.0) -> None:
        if self._process is not None:
            stop_process(self._process, timeout)

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would; start() starts it again on the same data and port."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> MilvusLiteServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

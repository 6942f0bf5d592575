"""Runs `irgate serve` as a child process on a free loopback port (for `irgate eval` and tests)."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from irgate.errors import StartupError
from irgate.logs import READY_PREFIX, ready_address
from irgate.processes import stop_process

__all__ = ["READY_PREFIX", "LocalServer"]


class LocalServer:
    """A real server process; `address` is set once it listens. Use as a context manager."""

    def __init__(
        self,
        data_dir: Path,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = 120.0,
        open_files: int | None = None,
    ):
        """open_files: the server's soft and hard RLIMIT_NOFILE, to run it as under a low limit."""
        self.data_dir = data_dir
        self.open_files = open_files
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.start_timeout = start_timeout
        self.address = ""
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> LocalServer:
        command = [sys.executable, "-m", "irgate", "serve", "--port", "0", "--metrics-port", "0", "--http-port", "0",
                   "--data-dir", str(self.data_dir), *self.args]
        self._process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        ready = threading.Event()
        threading.Thread(target=self._read_output, args=(ready,), daemon=True).start()
        if not ready.wait(self.start_timeout) or not self.address:
            exited = self._process.poll()
            self.stop()
            raise StartupError(self._why_not_started(exited))
        return self

    def _why_not_started(self, exit_code: int | None) -> str:
        """The server's own error lines (it says what to change), else how it ended and its log's end."""
        # irgate's own "error: ..." and argparse's "irgate serve: error: ...", not gRPC core's log lines.
        errors = [line.strip() for line in self.output if line.startswith("error:") or ": error:" in line]
        if errors:
            return "irgate serve did not start: " + "\n".join(errors)
        ended = f"it exited with code {exit_code}" if exit_code is not None else f"no ready line within {self.start_timeout:g} s"
        return f"irgate serve did not start ({ended}):\n" + "".join(self.output[-40:])

    def _limit_open_files(self) -> None:
        """Runs in the child between fork and exec."""
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _read_output(self, ready: threading.Event) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            self.output.append(line)
            address = ready_address(line)
            if address:
                self.address = address
                ready.set()
        ready.set()  # the process ended before it was ready

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM: indexes are snapshotted); returns the exit code."""
        if self._process is None:
            return None
        return stop_process(self._process, timeout)

    def kill(self) -> None:
        """Hard stop (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

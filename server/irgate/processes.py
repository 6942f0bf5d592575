"""Stopping the child processes irgate starts (test servers, a local cluster, tritonserver's gateway)."""

from __future__ import annotations

import signal
import socket
import subprocess


def stop_process(process: subprocess.Popen, timeout: float = 30.0, signum: int = signal.SIGTERM) -> int | None:
    """Ask a child to stop (SIGTERM: servers snapshot and close cleanly), wait up to `timeout`
    seconds, then kill it; returns its exit code."""
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    """A loopback TCP port nobody listens on now, for a child process to take."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]

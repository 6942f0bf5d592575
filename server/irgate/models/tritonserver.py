"""A local NVIDIA Triton Inference Server: unpacked from the nvidia-pytriton wheel, run on loopback ports.

PyPI's `nvidia-pytriton` wheel carries tritonserver 2.51 with its python backend and one
python-backend stub per Python version. Only those binaries are used (pytriton's own package
pins numpy<2): `make` downloads the wheel by its pinned version and `unpack` keeps
- pytriton/tritonserver/bin/tritonserver and nvidia_pytriton.libs/ (its shared libraries),
- pytriton/tritonserver/backends/python/ plus the stub of the running Python, copied beside it
  (the python backend looks for its stub in its own folder; the stub's RPATH still finds
  nvidia_pytriton.libs from there, at the same depth).
The stub embeds libpython of the same minor version: `TritonServer` puts this interpreter's
LIBDIR first on LD_LIBRARY_PATH, so python-backend models run on the very Python of the venv.

Stdlib only at import time: the GPU check script runs `python3 -m irgate.models.tritonserver
unpack ...` on a machine where irgate is not installed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

from irgate.processes import free_port, stop_process

WHEEL_REQUIREMENT = "nvidia-pytriton==0.7.0"  # tritonserver 2.51.0
REPO = Path(__file__).resolve().parents[3]
DEFAULT_INSTALL = REPO / ".cache" / "triton"
INSTALL_ENV = "IRGATE_TRITONSERVER"  # another unpacked install
_BINARY = Path("pytriton/tritonserver/bin/tritonserver")
_BACKENDS = Path("pytriton/tritonserver/backends")
_STUBS = Path("pytriton/tritonserver/python_backend_stubs")
_LIBS = Path("nvidia_pytriton.libs")
_STUB = "triton_python_backend_stub"


class TritonServerError(RuntimeError):
    """tritonserver is not installed, did not start, or did not become ready."""


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def unpack(wheel: Path, install: Path, python_version: str | None = None) -> Path:
    """Extract tritonserver, its libraries, the python backend and one stub from the wheel."""
    version = python_version or _python_version()
    stub = _STUBS / version / _STUB
    wanted = (f"{_BINARY.parent}/", f"{_LIBS}/", f"{_BACKENDS / 'python'}/", str(stub))
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.startswith(wanted)]
        if str(stub) not in names:
            raise TritonServerError(f"{wheel.name} has no python-backend stub for Python {version}")
        archive.extractall(install, names)
    placed = install / _BACKENDS / "python" / _STUB
    shutil.copy2(install / stub, placed)
    for executable in (install / _BINARY, placed):  # zip keeps no run bits
        executable.chmod(executable.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return install


def install_dir(install: Path | None = None) -> Path:
    """The unpacked install to use; a clear error when there is none."""
    folder = Path(install or os.environ.get(INSTALL_ENV) or DEFAULT_INSTALL)
    if not (folder / _BINARY).is_file() or not (folder / _BACKENDS / "python" / _STUB).is_file():
        raise TritonServerError(
            f"no tritonserver in {folder}: run `make triton` (downloads {WHEEL_REQUIREMENT} and unpacks it there)"
        )
    return folder


class TritonServer:
    """tritonserver on 127.0.0.1 with one model repository; a context manager.

    `explicit=True` starts it in explicit model-control mode with every model of the
    repository loaded, so that models can be unloaded and loaded again while it runs.
    """

    def __init__(self, repository: Path, *, install: Path | None = None, grpc_port: int = 0, http_port: int = 0,
                 metrics_port: int = 0, log: Path | None = None, explicit: bool = False,
                 extra_args: list[str] | None = None) -> None:
        self.repository = Path(repository).resolve()
        self.install = install_dir(install)
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.log = Path(log) if log else self.repository.parent / "tritonserver.log"
        self.explicit = explicit
        self.extra_args = list(extra_args or [])
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """host:port of the gRPC endpoint (what triton:// addresses name)."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        command = [
            str(self.install / _BINARY),
            "--model-repository", str(self.repository),
            "--backend-directory", str(self.install / _BACKENDS),
            "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc_port),
            "--http-address", "127.0.0.1", "--http-port", str(self.http_port),
            "--metrics-address", "127.0.0.1", "--metrics-port", str(self.metrics_port),
            "--allow-gpu-metrics", "false",
            # Stop within seconds: a decoupled request in flight would hold the default 30 s.
            "--exit-timeout-secs", "5",
        ]
        if self.explicit:
            command += ["--model-control-mode", "explicit", "--load-model", "*"]
        return command + self.extra_args

    def environment(self) -> dict[str, str]:
        # The stub links libpython of this minor version: this interpreter's first (the venv's
        # packages are built for it), then the wheel's bundled libraries.
        libdirs = [sysconfig.get_config_var("LIBDIR") or "", str(self.install / _LIBS), os.environ.get("LD_LIBRARY_PATH", "")]
        return {**os.environ, "LD_LIBRARY_PATH": os.pathsep.join(part for part in libdirs if part)}

    def start(self, timeout: float = 180.0) -> TritonServer:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(), stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=self.environment(),
            start_new_session=True,  # its python-backend stubs go with it on stop()
        )
        self.wait_ready(timeout)
        return self

    def ready(self) -> bool:
        """GET /v2/health/ready: the server and every loaded model are ready."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/v2/health/ready", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise TritonServerError(f"tritonserver exited with {code} before it was ready:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        self.stop()
        raise TritonServerError(f"tritonserver was not ready within {timeout:.0f}s:\n{self.tail()}")

    def metrics(self) -> str:
        """The Prometheus text of Triton's metrics endpoint (its own and the models' counters)."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as answer:
            return answer.read().decode()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once, as a crash would."""
        self._signal(signal.SIGKILL, wait=10)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait=30)

    def _signal(self, signum: int, wait: float) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is not None:
            # The server is gone (it crashed, or was killed): its python-backend stubs do not
            # notice and would stay, holding their models' memory.
            signum = signal.SIGKILL
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(repository: Path, embedder_folder: Path, judge_folder: Path, irgate_args: list[str]) -> int:
    """tritonserver on 127.0.0.1:8000-8002 and `irgate serve` with triton:// backends in front of it,
    until Ctrl-C (or either exits); then both stop."""
    server = TritonServer(repository, grpc_port=8001, http_port=8000, metrics_port=8002,
                          log=Path(repository).resolve().parent / "tritonserver.log")
    print(f"starting tritonserver (log: {server.log})", file=sys.stderr, flush=True)
    server.start()
    irgate = [
        str(Path(sys.executable).with_name("irgate")), "serve",
        "--embedder", f"triton://{server.address}/embedder", "--embedder-folder", str(embedder_folder),
        "--judge", f"triton://{server.address}/judge", "--judge-folder", str(judge_folder), *irgate_args,
    ]
    print(f"tritonserver ready on {server.address}; starting {' '.join(irgate[1:])}", file=sys.stderr, flush=True)
    gateway = subprocess.Popen(irgate)
    try:
        while gateway.poll() is None and server.process is not None and server.process.poll() is None:
            time.sleep(0.5)
        if gateway.poll() is None:
            print(f"tritonserver exited:\n{server.tail()}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        stop_process(gateway, signum=signal.SIGINT)
        server.stop()
    return gateway.returncode or 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irgate.models.tritonserver", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    unpack_command = commands.add_parser("unpack", help="extract what irgate runs from the nvidia-pytriton wheel")
    unpack_command.add_argument("wheel", type=Path)
    unpack_command.add_argument("install", type=Path)
    unpack_command.add_argument("--python-version", help="the stub's Python, e.g. 3.12 (default: this interpreter's)")
    serve_command = commands.add_parser("serve", help="tritonserver + irgate serve with triton:// backends")
    serve_command.add_argument("--model-repository", type=Path, required=True, help="a CPU-flavour repository")
    serve_command.add_argument("--embedder-folder", type=Path, required=True)
    serve_command.add_argument("--judge-folder", type=Path, required=True)
    serve_command.add_argument("irgate_args", nargs=argparse.REMAINDER, help="more `irgate serve` options, after --")
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            print(unpack(args.wheel, args.install, args.python_version))
            return 0
        extra = args.irgate_args[1:] if args.irgate_args[:1] == ["--"] else args.irgate_args
        return serve(args.model_repository, args.embedder_folder, args.judge_folder, extra)
    except TritonServerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

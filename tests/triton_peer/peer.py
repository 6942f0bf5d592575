"""An independent KServe v2 gRPC server for the Triton backends' tests: MLServer 1.7.1.

MLServer pins grpcio 1.85 where irgate pins 1.81 (REFERENCE section 6), so it runs from its own
virtualenv under .cache/mlserver-venv (git-ignored), created on first use (about a minute:
mlserver + onnxruntime + the local CPU torch wheel + transformers) and reused afterwards. A
failed install fails the tests that need the peer: nothing is skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = REPO / ".cache" / "mlserver-venv"
MLSERVER_VERSION = "1.7.1"
# What the runtimes import. torch is pinned to the CPU wheel on local disk (a looser pin pulls
# a multi-GB CUDA build); the others follow what the main environment has.
PACKAGES = [f"mlserver=={MLSERVER_VERSION}", "onnxruntime", "torch==2.13.0", "transformers>=5.0"]
_STAMP = VENV / ".irgate-peer-installed"


def ensure_venv() -> Path:
    """The MLServer virtualenv's `mlserver` executable, installing it when missing."""
    mlserver = VENV / "bin" / "mlserver"
    wanted = "\n".join(PACKAGES)
    if _STAMP.is_file() and _STAMP.read_text() == wanted and mlserver.is_file():
        return mlserver
    if VENV.exists():
        shutil.rmtree(VENV)
    VENV.parent.mkdir(parents=True, exist_ok=True)
    python = shutil.which("python3") or sys.executable
    log = VENV.parent / "mlserver-venv-install.log"
    with log.open("w") as out:
        for command in ([python, "-m", "venv", str(VENV)],
                        [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *PACKAGES]):
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"installing MLServer failed ({' '.join(command)}); see {log}")
    _STAMP.write_text(wanted)
    return mlserver


class MLServerPeer:
    """`mlserver start` on loopback ports with the given models; a context manager."""

    def __init__(self, workdir: Path, models: dict[str, dict]) -> None:
        self.workdir = Path(workdir)
        self.models = models  # name -> {"implementation": ..., "uri": ...}
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "mlserver.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _write(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        settings = {
            # Workers > 0 crash at start under uvloop 0.23 (REFERENCE section 6).
            "parallel_workers": 0,
            "host": "127.0.0.1",
            "grpc_port": self.grpc_port,
            "http_port": self.http_port,
            "metrics_port": self.metrics_port,
            "grpc_max_message_length": 256 * 1024 * 1024,
            "debug": False,
        }
        (self.workdir / "settings.json").write_text(json.dumps(settings, indent=2))
        for name, spec in self.models.items():
            folder = self.workdir / name
            folder.mkdir(exist_ok=True)
            template = json.loads((HERE / "model-settings" / f"{spec['template']}.json").read_text())
            template["name"] = name
            template["parameters"]["uri"] = str(spec["uri"])
            (folder / "model-settings.json").write_text(json.dumps(template, indent=2))

    def start(self, timeout: float = 180.0) -> MLServerPeer:
        mlserver = ensure_venv()
        self._write()
        env = {**os.environ, "PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("VIRTUAL_ENV", None)
        self.process = subprocess.Popen(
            [str(mlserver), "start", str(self.workdir)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.process.returncode}:\n{self.tail()}")
            if self._ready():
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlserver was not ready within {timeout:.0f}s:\n{self.tail()}")

    def _ready(self) -> bool:
        import tritonclient.grpc as grpcclient

        try:
            with grpcclient.InferenceServerClient(self.address) as client:
                if not client.is_server_ready(client_timeout=2):
                    return False
                return all(client.is_model_ready(name, client_timeout=2) for name in self.models)
        except Exception:  # noqa: BLE001 - not up yet
            return False

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        # Its own session: signal the group so MLServer's children go too.
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> MLServerPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

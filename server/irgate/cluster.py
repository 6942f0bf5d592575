"""A local cluster in one command (`make serve-cluster`): a `milvus-lite server` on loopback and N
irgate gateways that share it as their index, each on its own loopback port. Ctrl-C (or SIGTERM)
stops the gateways, then Milvus.

    python -m irgate.cluster --ports 50051 50052 -- --judge none

Arguments after `--` go to every `irgate serve`; IRGATE_* variables reach them too.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from irgate.index.milvus_lite import MilvusLiteServer
from irgate.logs import ready_address
from irgate.processes import stop_process

HOST = "127.0.0.1"


class Gateway:
    """One `irgate serve` child whose output is passed on, each line prefixed with its port."""

    def __init__(self, port: int, metrics_port: int, http_port: int, index: str, data_dir: Path, args: Sequence[str]) -> None:
        self.port = port
        # Its own session: Ctrl-C reaches the cluster only, which stops the gateways before Milvus.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "irgate", "serve", "--host", HOST, "--port", str(port), "--metrics-port",
             str(metrics_port), "--http-port", str(http_port), "--index", index, "--data-dir", str(data_dir), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._pass_on_output, daemon=True).start()

    def _pass_on_output(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            print(f"[gateway {self.port}] {line}", end="", flush=True)
            if ready_address(line):
                self.ready.set()
        self.ready.set()  # it ended

    def stop(self, timeout: float = 30.0) -> None:
        stop_process(self.process, timeout)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m irgate.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/cluster"), help="Milvus keeps its data under DATA_DIR/milvus")
    parser.add_argument("--milvus-port", type=int, default=19530, help="Milvus gRPC port on 127.0.0.1")
    parser.add_argument("--ports", type=int, nargs="+", default=[50051, 50052], help="one gateway per port on 127.0.0.1")
    parser.add_argument("--metrics-port", type=int, default=9464, help="the first gateway's metrics port; the next ones count up")
    parser.add_argument("--http-port", type=int, default=8080, help="the first gateway's HTTP port; the next ones count up")
    parser.add_argument("serve_args", nargs="*", help="after --: flags for every irgate serve")
    options = parser.parse_args(argv)

    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    options.data_dir.mkdir(parents=True, exist_ok=True)
    milvus = MilvusLiteServer(options.data_dir / "milvus", options.milvus_port).start()
    print(f"milvus-lite serving on {milvus.address} (data in {options.data_dir / 'milvus'})", flush=True)
    gateways: list[Gateway] = []
    try:
        for offset, port in enumerate(options.ports):
            gateways.append(Gateway(port, options.metrics_port + offset, options.http_port + offset,
                                    milvus.index_setting,
                                    options.data_dir / f"gateway-{port}", options.serve_args))
        for gateway in gateways:
            gateway.ready.wait()
            if gateway.process.poll() is not None:
                print(f"gateway on port {gateway.port} did not start (exit code {gateway.process.returncode})", file=sys.stderr)
                return 1
        addresses = [f"{HOST}:{port}" for port in options.ports]
        print(f"cluster ready: gateways on {', '.join(addresses)} sharing Milvus at {milvus.address}; "
              f"Client({addresses!r}) balances over them; Ctrl-C stops everything", flush=True)
        while not stop.wait(1.0):
            if all(gateway.process.poll() is not None for gateway in gateways):
                print("every gateway has stopped", file=sys.stderr)
                return 1
        return 0
    finally:
        for gateway in gateways:
            gateway.stop()
        milvus.stop()
        print("cluster stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())

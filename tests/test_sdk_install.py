"""The SDK installs on its own (grpcio + protobuf only) and talks to a real server from there."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

from irgate.local_server import LocalServer
from support import REPO

SCRIPT = """
import sys, importlib.util
from irgate_client import Client, Document, IrgateError, Query
assert importlib.util.find_spec("torch") is None and importlib.util.find_spec("onnxruntime") is None
with Client(sys.argv[1]) as client:
    client.create_collection("sdk-alone")
    client.upsert("sdk-alone", [Document(id="a", text="Rain forms when vapour condenses."),
                                Document(id="b", text="Cats are mammals.")])
    print(client.info().model, client.search("sdk-alone", "what causes rain", k=1)[0].id,
          len(client.embed([Query("rain", instruction="be strict")])[0].values))
    try:
        client.search("sdk-alone", "rain", k=100_000)
    except IrgateError as error:  # the server's error details, read by the SDK's own dependencies
        print(error.reason, error.field_violations[0].field)
"""


def test_sdk_installs_alone_and_works(server: LocalServer, tmp_path: Path) -> None:
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = environment / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "--quiet", str(REPO / "clients" / "python")], check=True, timeout=600)
    installed = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True).stdout
    names = {line.split("==")[0].split(" @ ")[0].lower() for line in installed.splitlines()}
    assert names <= {"irgate-client", "grpcio", "grpcio-health-checking", "grpcio-status", "googleapis-common-protos",
                     "protobuf", "typing-extensions", "typing_extensions"}, names
    result = subprocess.run([python, "-c", SCRIPT, server.address], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["all-MiniLM-L6-v2", "a", "384", "INVALID_ARGUMENT", "k"]

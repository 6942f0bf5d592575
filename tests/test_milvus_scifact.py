"""BEIR SciFact through a gateway whose index is Milvus (a real `milvus-lite server` process):
all-MiniLM-L6-v2 scores the published nDCG@10 (MTEB: 0.64508) as it does on the in-process index.

Tens of minutes on 2 shared cores (the corpus is embedded and each search of a fresh milvus-lite
collection is brute force in Python), so `make soak` runs it (IRGATE_SOAK_MILVUS=1), not `make test`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from irgate.local_server import LocalServer
from support import SHARED

pytestmark = pytest.mark.skipif(os.environ.get("IRGATE_SOAK_MILVUS") != "1", reason="tens of minutes: make soak runs it")


def test_scifact_through_a_milvus_backed_gateway(milvus, minilm_folder: Path, tmp_path: Path) -> None:
    data = SHARED / "data" / "scifact"
    if not data.exists():
        pytest.skip(f"{data} is not here (shared/ lies beside the checkout)")
    with LocalServer(tmp_path, ["--embedder", f"onnx:{minilm_folder}", "--judge", "none", "--index", milvus.index_setting]) as gateway:
        result = subprocess.run(
            [sys.executable, "-m", "irgate", "eval", "beir", "--data", str(data), "--json", "--no-cache", "--server", gateway.address],
            capture_output=True, text=True, check=True, timeout=3600,
        )
    report = json.loads(result.stdout)
    print(json.dumps({key: report[key] for key in ("ndcg@10", "recall@100", "queries", "docs", "index_seconds", "search_seconds")}))
    assert (report["queries"], report["docs"]) == (300, 5183)
    assert abs(report["ndcg@10"] - 0.64508) <= 0.005, report

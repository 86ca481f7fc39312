"""The continuous-batching engine behind local GGUF teachers, on the real SmolLM2-135M model.

What must hold: requests in flight decode together and each still gets the answer it would get
alone; a finished slot's cache is reused for a prompt that shares its prefix, without changing
the answer; cancelled and cut requests end at once and free their slot for the next one; and
closing the engine fails the requests still waiting instead of leaving them hanging.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading

import pytest

from alpacakit.errors import TeacherError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason='llama-cpp-python is not installed (pip install "alpacakit[llama]")',
)

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # goes on for as long as it is allowed to
PROMPTS = ["1, 2, 3, 4, 5,", "Monday, Tuesday, Wednesday,", "a, b, c, d,", "10, 20, 30, 40,"]


@pytest.fixture(scope="module")
def llm(smollm2_gguf):
    from alpacakit.models.backends.llamacpp import open_llama

    model = open_llama(smollm2_gguf, n_ctx=256, n_threads=2)
    yield model
    model.close()


@pytest.fixture
def engine_factory(llm):
    from alpacakit.models.backends.llama_engine import BatchEngine

    made = []

    def make(**kw):
        kw.setdefault("n_slots", 4)
        kw.setdefault("n_ctx_per_slot", 512)
        kw.setdefault("n_threads", 2)
        e = BatchEngine(llm._model.model, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        e.close()


def job(llm, prompt: str, **kw):
    from alpacakit.models.backends.llama_engine import Job, Sampling

    kw.setdefault("max_tokens", 8)
    kw.setdefault("sampling", Sampling(temperature=0.0))
    return Job(tokens=llm.tokenize(prompt.encode(), add_bos=True, special=True), **kw)


@pytest.mark.slow
def test_requests_in_flight_decode_together_and_each_gets_its_own_answer(llm, engine_factory):
    alone = engine_factory(n_slots=1)
    expected = [alone.submit(job(llm, p)).result(timeout=60).text for p in PROMPTS]
    together = engine_factory(n_slots=4)
    futures = [together.submit(job(llm, p)) for p in PROMPTS]
    got = [f.result(timeout=60) for f in futures]
    assert together.stats.max_active == 4
    # four sequences per step: about as many steps as one answer needs, not four times as many
    assert together.stats.steps < 2 * max(r.completion_tokens for r in got) + 4
    assert [r.text for r in got] == expected
    assert all(r.finish_reason == "length" and r.completion_tokens == 8 for r in got)


def test_a_shared_prefix_is_reused_from_a_finished_slot_with_the_same_answer(llm, engine_factory):
    preamble = "Here is a list of the planets of the solar system in order from the sun: "
    first, second = preamble + "Mercury, Venus,", preamble + "Mercury, Venus, Earth,"
    fresh = engine_factory(n_slots=1, prefix_reuse=False)
    expected = fresh.submit(job(llm, second)).result(timeout=60)
    eng = engine_factory(n_slots=2)
    eng.submit(job(llm, first)).result(timeout=60)
    again = eng.submit(job(llm, second)).result(timeout=60)
    n_first = len(llm.tokenize(first.encode(), add_bos=True, special=True))
    assert again.reused_tokens >= n_first - 2  # everything but where the prompts part
    assert eng.stats.reused_tokens == again.reused_tokens
    assert again.text == expected.text and again.prompt_tokens == expected.prompt_tokens


@pytest.mark.slow
def test_requests_sent_together_evaluate_their_shared_preamble_once(llm, engine_factory):
    preamble = "Rules: answer briefly, in English, with one item per line, and never repeat an item. " * 3
    prompts = [preamble + "Fruits: apple, pear,", preamble + "Tools: hammer, saw,"]
    fresh = engine_factory(n_slots=1, prefix_reuse=False)
    expected = [fresh.submit(job(llm, p)).result(timeout=60).text for p in prompts]
    eng = engine_factory(n_slots=2)
    futures = [eng.submit(job(llm, p)) for p in prompts]
    got = [f.result(timeout=60) for f in futures]
    n_preamble = len(llm.tokenize(preamble.encode(), add_bos=True, special=True))
    assert got[0].reused_tokens == 0 and got[1].reused_tokens >= n_preamble - 2  # copied from the first
    assert eng.stats.prompt_tokens < sum(r.prompt_tokens for r in got) - n_preamble + 4
    assert [r.text for r in got] == expected


def test_a_cut_request_ends_at_once_and_keeps_what_it_wrote(llm, engine_factory):
    eng = engine_factory(n_slots=1)
    seen = threading.Event()
    j = job(llm, COUNTING, max_tokens=400, on_text=lambda piece: seen.set())
    fut = eng.submit(j)
    assert seen.wait(60)
    j.cut.set()
    r = fut.result(timeout=60)
    assert r.finish_reason == "length" and 0 < r.completion_tokens < 400 and r.text


def test_a_cancelled_request_frees_its_slot_for_the_next_one(llm, engine_factory):
    eng = engine_factory(n_slots=1)
    long = job(llm, COUNTING, max_tokens=400)
    queued = job(llm, PROMPTS[0])
    f_long, f_queued = eng.submit(long), eng.submit(queued)
    long.cancelled.set()
    assert f_long.result(timeout=60).finish_reason == "cancelled"
    assert f_queued.result(timeout=60).completion_tokens == 8


def test_stop_strings_end_the_answer_and_are_never_shown_in_part(llm, engine_factory):
    eng = engine_factory(n_slots=1)
    pieces: list[str] = []
    r = eng.submit(job(llm, PROMPTS[0], max_tokens=20, stop=["8,"], on_text=pieces.append)).result(timeout=60)
    assert r.finish_reason == "stop" and "8" not in r.text and "7" in r.text
    assert "".join(pieces) == r.text


def test_a_prompt_that_cannot_fit_is_refused_before_queueing(llm, engine_factory):
    eng = engine_factory(n_slots=1, n_ctx_per_slot=64)
    with pytest.raises(TeacherError, match="exceed context window of 64"):
        eng.submit(job(llm, "word " * 100))


def test_closing_fails_what_is_still_waiting(llm, engine_factory):
    eng = engine_factory(n_slots=1)
    running = eng.submit(job(llm, COUNTING, max_tokens=400))
    waiting = eng.submit(job(llm, PROMPTS[0]))
    eng.close()
    for fut in (running, waiting):
        with pytest.raises(TeacherError, match="was closed"):
            fut.result(timeout=60)
    with pytest.raises(TeacherError, match="was closed"):
        eng.submit(job(llm, PROMPTS[0]))


def test_the_teacher_sends_concurrent_calls_through_one_batch(smollm2_gguf):
    from alpacakit.config import TeacherConfig
    from alpacakit.models.backends import make_backend

    teacher = make_backend(
        TeacherConfig(model="smollm2-135m-instruct", n_ctx=512, n_threads=2, temperature=0.0, max_concurrency=4)
    )
    try:

        async def many():
            return await asyncio.gather(*(teacher.complete(p, max_tokens=6) for p in PROMPTS))

        out = asyncio.run(many())
        assert [c.usage.completion_tokens for c in out] == [6, 6, 6, 6]
        assert teacher.engine_stats["max_active"] == 4 and teacher.max_concurrency == 4
    finally:
        teacher.close()

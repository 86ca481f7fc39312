"""A model folder decodes concurrent greedy requests together (HFModel): the same answers as one
at a time, in fewer `generate()` calls, with each request's own stop strings, max_tokens and
cancellation. Speed is measured in benchmarks/hf_batched.py, not here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from alpacakit.config import TeacherConfig  # noqa: E402
from alpacakit.models.backends.base import Completion  # noqa: E402
from alpacakit.models.backends.hf import HFModel  # noqa: E402

QUESTIONS = [
    "Name a colour.",
    "Say hello to the world and then count to ten please.",
    "What is two plus two?",
    "Write a very long sentence about the sea and the sky.",
    "Hi",
    "Tell me about cats and dogs.",
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from alpacakit.train.tiny import make_tiny_base

    return make_tiny_base(tmp_path_factory.mktemp("hfb") / "chat", chat_template=True, seed=5)


def teacher(folder: Path, n: int) -> HFModel:
    t = HFModel(
        folder, TeacherConfig(model=str(folder), max_tokens=20, temperature=0.0, max_concurrency=n), device="cpu"
    )
    calls: list[int] = []
    generate = t.model.generate

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["input_ids"].shape[0]))
        return generate(*args, **kwargs)

    t.model.generate = counted  # the real generate, counted
    t.calls = calls  # type: ignore[attr-defined]
    return t


def ask_all(t: HFModel, **kw: Any) -> list[Completion]:
    async def run() -> list[Completion]:
        return await asyncio.gather(*(t.chat([{"role": "user", "content": q}], **kw) for q in QUESTIONS))

    return asyncio.run(run())


def test_concurrent_greedy_requests_are_decoded_together_with_the_same_answers(folder: Path) -> None:
    alone, together = teacher(folder, 1), teacher(folder, 4)
    a, b = ask_all(alone), ask_all(together)
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.usage.completion_tokens for c in a] == [c.usage.completion_tokens for c in b]
    assert alone.calls == [1] * len(QUESTIONS)
    assert len(together.calls) < len(QUESTIONS) and max(together.calls) > 1 and max(together.calls) <= 4
    assert sum(together.calls) == len(QUESTIONS)


def test_each_row_keeps_its_own_max_tokens_and_stop_strings(folder: Path) -> None:
    t = teacher(folder, 6)
    reference = {q: c.text for q, c in zip(QUESTIONS, ask_all(teacher(folder, 1), max_tokens=20))}

    async def run() -> list[Completion]:
        jobs = []
        for i, q in enumerate(QUESTIONS):
            kw: dict[str, Any] = {"max_tokens": 5 if i % 2 else 20}
            if i == 0 and len(reference[q]) > 6:
                kw["stop"] = [reference[q][4:6]]  # a stop string inside the reference answer
            jobs.append(t.chat([{"role": "user", "content": q}], **kw))
        return await asyncio.gather(*jobs)

    out = asyncio.run(run())
    for i, (q, c) in enumerate(zip(QUESTIONS, out)):
        if i % 2:
            assert c.usage.completion_tokens <= 5 and c.finish_reason in ("length", "stop")
            assert reference[q].startswith(c.text)
    if len(reference[QUESTIONS[0]]) > 6:
        assert out[0].text == reference[QUESTIONS[0]][:4] and out[0].stopped_by == "stop_string"


def test_a_cancelled_stream_leaves_the_rest_of_its_batch_intact(folder: Path) -> None:
    t = teacher(folder, 4)
    reference = [c.text for c in ask_all(teacher(folder, 1))[:3]]

    async def run() -> list[Any]:
        async def leave_early() -> str:
            stream = t.stream_chat([{"role": "user", "content": QUESTIONS[3]}], max_tokens=20)
            async for _piece in stream:
                await stream.aclose()  # the reader goes away after the first piece
                return "left"
            return "empty"

        jobs = [t.chat([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]
        return await asyncio.gather(*jobs, leave_early())

    *done, left = asyncio.run(run())
    assert left == "left"
    assert [c.text for c in done] == reference

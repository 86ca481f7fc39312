"""Several endpoints serving one model (a farm of vLLM or llama.cpp servers): requests spread
over the ones that answer, a dead one is skipped for a while and tried again, and the job never
notices. Real HTTP: two scripted OpenAI-compatible servers on 127.0.0.1 and a port nobody
listens on."""

from __future__ import annotations

import asyncio
import socket
import time

from fake_openai import FakeOpenAIServer

from alpacakit.config import TeacherConfig
from alpacakit.models.backends.endpoint import EndpointModel


def _dead_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    return f"http://127.0.0.1:{port}/v1"


def _ask(teacher: EndpointModel, n: int) -> list[str]:
    async def run() -> list[str]:
        try:
            outs = await asyncio.gather(*(teacher.chat([{"role": "user", "content": f"q{i}"}]) for i in range(n)))
        finally:
            await teacher.aclose()
        return [o.text for o in outs]

    return asyncio.run(run())


def _cfg(urls: list[str], monkeypatch, **kw) -> TeacherConfig:
    monkeypatch.setenv("FARM_KEY", "sk-farm")
    return TeacherConfig(
        model="openai:m",
        base_url=urls[0],
        base_urls=urls[1:],
        api_key_env="FARM_KEY",
        max_concurrency=8,
        max_retries=3,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        timeout_s=5.0,
        **kw,
    )


def test_requests_spread_over_the_endpoints_by_load(monkeypatch) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        for srv in (a, b):
            srv.responder = lambda body: {"sleep": 0.1, "text": "ok"}
        out = _ask(EndpointModel(_cfg([a.url, b.url], monkeypatch)), 16)
        assert out == ["ok"] * 16
        assert len(a.requests) + len(b.requests) == 16 and min(len(a.requests), len(b.requests)) >= 6


def test_a_dead_endpoint_is_skipped_and_the_answers_all_arrive(monkeypatch) -> None:
    dead = _dead_url()
    with FakeOpenAIServer() as a:
        a.responder = lambda body: "ok"
        teacher = EndpointModel(_cfg([dead, a.url], monkeypatch, endpoint_cooldown_s=60.0))
        out = _ask(teacher, 12)
        assert out == ["ok"] * 12 and len(a.requests) == 12
        assert teacher._down_until[dead.rstrip("/")] > time.monotonic()  # cooling down, not asked again meanwhile
        assert teacher.describe()["base_urls"] == [dead.rstrip("/"), a.url.rstrip("/")]


def test_a_cooled_down_endpoint_is_tried_again(monkeypatch) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        a.responder = lambda body: "from a"
        b.script([{"status": 503}])  # b fails once, then answers
        b.responder = lambda body: "from b"
        teacher = EndpointModel(_cfg([b.url, a.url], monkeypatch, endpoint_cooldown_s=0.2))
        first = _ask(teacher, 1)
        assert first == ["from a"]  # b's 503 sent the request to a at once
        time.sleep(0.3)
        assert _ask(teacher, 1) == ["from b"]  # b is back in the rotation (least busy, listed first)

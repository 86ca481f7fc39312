"""`alpacakit serve` against hostile clients: each attack runs against a real uvicorn server on
127.0.0.1 (scripted model backend), and each must get a clear error without costing a token,
while the server keeps answering well-behaved clients."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from serve_fakes import ScriptedTeacher

from alpacakit.serve.app import host_name

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello."}]}


def _rss_mb() -> float:
    for line in open("/proc/self/status", encoding="ascii"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _ok(url: str) -> None:
    """A well-behaved client still gets its answer."""
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "Hello, world!"


def test_a_chunked_body_over_the_cap_is_413_before_it_is_read_whole(start):
    url, teacher = start(max_body_bytes=64_000)
    sent = [0]
    before = _rss_mb()  # the server runs in this process: what it buffers shows here

    def body() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        yield b'{"messages": "'
        for _ in range(2_000):  # 128 MB: the old server held all of it in memory before refusing
            sent[0] += 65_536
            yield b"x" * 65_536

    try:
        r = httpx.post(
            f"{url}/v1/chat/completions", content=body(), headers={"Content-Type": "application/json"}, timeout=30
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the server answered 413 and closed while we were still sending: also a refusal
    grown = _rss_mb() - before
    assert grown < 64, f"the server kept {grown:.0f} MB of a body it had refused"
    assert teacher.calls == []
    _ok(url)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_cross_site_simple_request_is_refused_without_generating(start, ctype):
    url, teacher = start()
    headers = {"Content-Type": ctype} if ctype else {}
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(CHAT).encode(), headers=headers)
    assert r.status_code == 415 and "application/json" in r.json()["error"]["message"]
    assert teacher.calls == []
    _ok(url)


def test_dns_rebinding_a_foreign_host_name_is_403(start):
    url, teacher = start()
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Host": "attacker.example:8000"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    assert httpx.get(f"{url}/v1/models", headers={"Host": "attacker.example"}).status_code == 403
    assert teacher.calls == []
    for ok_host in ("localhost:8000", "127.0.0.1", "[::1]:9"):
        assert httpx.get(f"{url}/v1/models", headers={"Host": ok_host}).status_code == 200


def test_allowed_hosts_opens_a_named_host(start):
    url, _ = start(allowed_hosts=["chat.internal"])
    assert httpx.get(f"{url}/v1/models", headers={"Host": "chat.internal:443"}).status_code == 200
    assert httpx.get(f"{url}/v1/models", headers={"Host": "other.internal"}).status_code == 403


def test_host_names_are_parsed_like_browsers_send_them():
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("") == ""


def test_deeply_nested_json_is_400_not_500(start):
    url, teacher = start()
    body = '{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}"
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]
    assert teacher.calls == []
    _ok(url)


class _Crashing(ScriptedTeacher):
    async def stream_chat(self, messages: Any, **kw: Any) -> Any:
        raise RuntimeError("secret-internal-path /home/op/.keys")
        yield  # pragma: no cover


def test_a_500_does_not_echo_the_exception(start):
    url, _ = start(_Crashing())
    r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": False})
    assert r.status_code == 500
    assert "secret-internal-path" not in r.text and "RuntimeError" not in r.text
    assert "server log" in r.json()["error"]["message"]


def test_binding_every_interface_without_a_key_is_refused(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "serve",
            "smollm2-135m-instruct",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "refusing to listen on 0.0.0.0 without an API key" in r.stderr and "--api-key-env" in r.stderr


def test_safety_off_from_yaml_or_set_means_no_filter():
    from alpacakit.config import load_config

    assert load_config(None, ["serve.safety=off"]).serve.safety is None
    assert load_config(None, ["serve.safety=blocklist"]).serve.safety == "blocklist"


class _CrashingMidStream(ScriptedTeacher):
    async def stream_chat(self, messages: Any, **kw: Any) -> Any:
        yield "Hello"
        raise RuntimeError("secret-internal-path /home/op/.keys")


def test_a_stream_that_fails_midway_reports_in_band_without_the_exception(start):
    url, _ = start(_CrashingMidStream())
    r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200  # headers were sent: the error comes in-band, as OpenAI sends it
    assert '"code":"generation_failed"' in r.text and r.text.rstrip().endswith("data: [DONE]")
    assert "secret-internal-path" not in r.text and "RuntimeError" not in r.text

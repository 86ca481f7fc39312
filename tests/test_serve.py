"""`alpacakit serve`'s HTTP behaviour: a real uvicorn server on 127.0.0.1 with a scripted backend.

The backend is scripted (tests/serve_fakes.py) so that queueing, cancellation and safety cuts
are deterministic; the same server with the real SmolLM2 model is tested in
test_serve_model.py, and the web page in test_webchat_browser.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from serve_fakes import ScriptedTeacher, wait_for

from alpacakit.errors import ConfigError
from alpacakit.serve.app import create_app
from alpacakit.serve.backend import ServeBackend
from alpacakit.serve.config import ServeConfig
from alpacakit.serve.safety import Blocklist, make_safety, parse_moderation
from alpacakit.serve.server import BackgroundServer

KEY = "sk-serve-test-4f1c2a"
CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "Say hello."}]}


@pytest.fixture
def start() -> Iterator[Callable[..., str]]:
    """start(teacher, safety=None, api_key=None, **serve_config) -> base URL of a running server."""
    servers: list[BackgroundServer] = []

    def _start(teacher: Any, *, safety: Any = None, api_key: str | None = None, **cfg: Any) -> str:
        app = create_app(ServeBackend(teacher), ServeConfig(**cfg), safety=safety, api_key=api_key or "")
        srv = BackgroundServer(app).start()
        servers.append(srv)
        return srv.url

    yield _start
    for s in servers:
        s.stop()


def sse_events(response: httpx.Response) -> list[Any]:
    """The data payloads of an SSE response, JSON-decoded except the final [DONE]."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ---------------------------------------------------------------------- models, auth


def test_models_lists_the_served_model(start):
    url = start(ScriptedTeacher(name="my-alpaca"))
    body = httpx.get(f"{url}/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["my-alpaca"]
    assert body["data"][0]["object"] == "model"
    assert httpx.get(f"{url}/v1/models/my-alpaca").json()["id"] == "my-alpaca"
    missing = httpx.get(f"{url}/v1/models/other")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_missing_api_key_is_401_with_an_openai_error_body(start):
    url = start(ScriptedTeacher(), api_key=KEY)
    for path, call in (("/v1/models", httpx.get), ("/v1/chat/completions", httpx.post)):
        r = call(f"{url}{path}", **({"json": CHAT} if call is httpx.post else {}))
        assert r.status_code == 401
        err = r.json()["error"]
        assert err["code"] == "invalid_api_key" and err["type"] == "invalid_request_error"
        assert "Authorization: Bearer" in err["message"]
        assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_api_key_is_401_and_the_right_one_passes(start):
    teacher = ScriptedTeacher()
    url = start(teacher, api_key=KEY)
    for header in (f"Bearer {KEY}x", f"Basic {KEY}", KEY):
        r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Authorization": header})
        assert r.status_code == 401, header
        assert "Incorrect API key" in r.json()["error"]["message"]
        assert KEY not in r.text  # the key is never echoed back
    assert teacher.started == 0  # nothing was generated for rejected requests
    ok = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
    assert ok.status_code == 200, ok.text


def test_no_key_configured_means_no_auth(start):
    url = start(ScriptedTeacher())
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200


def test_api_key_env_that_is_not_set_fails_at_start_naming_the_variable(monkeypatch):
    monkeypatch.delenv("ALPACAKIT_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="ALPACAKIT_NO_SUCH_KEY"):
        create_app(ServeBackend(ScriptedTeacher()), ServeConfig(api_key_env="ALPACAKIT_NO_SUCH_KEY"))


# ---------------------------------------------------------------------- answers


def test_chat_completion_has_openai_shape_and_passes_sampling_settings(start):
    teacher = ScriptedTeacher()
    url = start(teacher)
    body = dict(CHAT, max_tokens=50, temperature=0.2, top_p=0.9, seed=7, stop=["\n\n"])
    r = httpx.post(f"{url}/v1/chat/completions", json=body).json()
    assert r["object"] == "chat.completion" and r["id"].startswith("chatcmpl-")
    assert r["model"] == "fake-model"
    assert r["choices"][0]["message"] == {"role": "assistant", "content": "Hello, world!"}
    assert r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"] == {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    call = teacher.calls[-1]
    assert call["messages"] == [{"role": "user", "content": "Say hello."}]
    assert (call["max_tokens"], call["temperature"], call["top_p"], call["seed"], call["stop"]) == (
        50,
        0.2,
        0.9,
        7,
        ["\n\n"],
    )


def test_text_parts_and_developer_role_become_plain_messages(start):
    teacher = ScriptedTeacher()
    url = start(teacher)
    body = {
        "model": "m",
        "messages": [
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]},
        ],
    }
    assert httpx.post(f"{url}/v1/chat/completions", json=body).status_code == 200
    assert teacher.calls[-1]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi there"},
    ]


def test_missing_max_tokens_uses_the_server_default(start):
    teacher = ScriptedTeacher()
    url = start(teacher, default_max_tokens=3, max_tokens_cap=100)
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT).json()
    assert teacher.calls[-1]["max_tokens"] == 3
    assert r["choices"][0]["finish_reason"] == "length" and r["choices"][0]["message"]["content"] == "Hello, world"


def test_completions_endpoint(start):
    teacher = ScriptedTeacher(pieces=["Paris", "."])
    url = start(teacher)
    r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "The capital of France is", "max_tokens": 5})
    body = r.json()
    assert body["object"] == "text_completion" and body["choices"][0]["text"] == "Paris."
    assert teacher.calls[-1]["prompt"] == "The capital of France is"
    listed = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": ["one prompt"]})
    assert listed.status_code == 200 and teacher.calls[-1]["prompt"] == "one prompt"


# ---------------------------------------------------------------------- validation (400)


@pytest.mark.parametrize("field,value", [("max_tokens", 101), ("max_completion_tokens", 5000)])
def test_max_tokens_over_the_cap_is_400(start, field, value):
    teacher = ScriptedTeacher()
    url = start(teacher, max_tokens_cap=100)
    r = httpx.post(f"{url}/v1/chat/completions", json=dict(CHAT, **{field: value}))
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == field and err["code"] == "max_tokens_exceeded"
    assert str(value) in err["message"] and "100" in err["message"]
    r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 101})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"
    assert teacher.started == 0


def test_prompt_longer_than_the_limit_is_400(start):
    url = start(ScriptedTeacher(), max_prompt_tokens=20)
    long_text = "word " * 30
    r = httpx.post(
        f"{url}/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": long_text}]}
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "at most 20" in err["message"]
    r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": long_text})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    "body,param,words",
    [
        (b"{not json", None, "could not parse the JSON"),
        (b"", None, "empty"),
        (b"[1, 2]", None, "must be a JSON object"),
        (json.dumps({"model": "m"}).encode(), "messages", "Missing required parameter"),
        (json.dumps({"model": "m", "messages": []}).encode(), "messages", "at least 1"),
        (json.dumps({"model": "m", "messages": "hi"}).encode(), "messages", "valid list"),
        (
            json.dumps({"model": "m", "messages": [{"role": "tool", "content": "x"}]}).encode(),
            "messages.0.role",
            "'user'",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}).encode(),
            "temperature",
            "less than or equal to 2",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}).encode(),
            "max_tokens",
            "greater than or equal to 1",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "tempreature": 1}).encode(),
            "tempreature",
            "Unrecognized request argument",
        ),
        (
            json.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}).encode(),
            "n",
            "not supported",
        ),
        (
            json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}
            ).encode(),
            "tools",
            "not supported",
        ),
        (
            json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "x"}], "stop": ["a", "b", "c", "d", "e"]}
            ).encode(),
            "stop",
            "at most 4",
        ),
        (
            json.dumps(
                {"model": "m", "messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]}
            ).encode(),
            "messages",
            "last message",
        ),
    ],
)
@pytest.mark.slow
def test_bad_bodies_are_400_naming_the_problem(start, body, param, words):
    teacher = ScriptedTeacher()
    url = start(teacher)
    r = httpx.post(f"{url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param
    assert words in err["message"]
    assert teacher.started == 0


def test_oversized_body_is_413(start):
    url = start(ScriptedTeacher(), max_body_bytes=2048)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_chat_on_a_model_without_chat_template_is_400_pointing_to_completions(start):
    url = start(ScriptedTeacher(has_chat_template=False))
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
    assert r.status_code == 400 and "/v1/completions" in r.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "x"}).status_code == 200


def test_unknown_path_and_method_get_openai_style_errors(start):
    url = start(ScriptedTeacher())
    r = httpx.get(f"{url}/v1/nothing")
    assert r.status_code == 404 and "/v1/chat/completions" in r.json()["error"]["message"]
    r = httpx.get(f"{url}/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# ---------------------------------------------------------------------- streaming


def test_streaming_chat_sends_openai_chunks_then_done(start):
    url = start(ScriptedTeacher())
    with httpx.stream(
        "POST", f"{url}/v1/chat/completions", json=dict(CHAT, stream=True, stream_options={"include_usage": True})
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [
        c["choices"][0]["delta"].get("content")
        for c in chunks[1:]
        if c["choices"] and c["choices"][0]["delta"].get("content")
    ]
    assert pieces == ["Hello", ", ", "world", "!"]
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


def test_streaming_completions(start):
    url = start(ScriptedTeacher(pieces=["a", "b"]))
    with httpx.stream("POST", f"{url}/v1/completions", json={"model": "m", "prompt": "x", "stream": True}) as r:
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "ab"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_client_disconnect_cancels_generation_and_frees_the_slot(start):
    teacher = ScriptedTeacher(pieces=["tick "], forever=True, piece_delay_s=0.01)
    url = start(teacher, max_concurrency=1, queue_size=0)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=dict(CHAT, stream=True, max_tokens=1000)) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any("tick" in line for line in got)
    # the connection is closed mid-stream: the generation is cancelled and the slot is free again
    wait_for(lambda: teacher.cancelled == 1)
    wait_for(lambda: httpx.get(f"{url}/health").json()["running"] == 0)
    assert teacher.finished == 0
    after = httpx.post(f"{url}/v1/chat/completions", json=dict(CHAT, max_tokens=3))
    assert after.status_code == 200


# ---------------------------------------------------------------------- queue (429)


def test_queue_full_is_429_with_retry_after_and_queued_requests_still_finish(start):
    gate = threading.Event()
    teacher = ScriptedTeacher(gate=gate)
    url = start(teacher, max_concurrency=1, queue_size=1)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_for(lambda: httpx.get(f"{url}/health").json()["running"] == 1)
        second = pool.submit(httpx.post, f"{url}/v1/chat/completions", json=CHAT, timeout=30)
        wait_for(lambda: httpx.get(f"{url}/health").json()["waiting"] == 1)
        third = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
        streamed = httpx.post(f"{url}/v1/chat/completions", json=dict(CHAT, stream=True))
        gate.set()
        assert first.result().status_code == 200
        assert second.result().status_code == 200
    assert third.status_code == 429
    err = third.json()["error"]
    assert err["code"] == "queue_full" and err["type"] == "rate_limit_error"
    assert third.headers["retry-after"] == "1"
    assert streamed.status_code == 429  # streams queue the same way
    health = httpx.get(f"{url}/health").json()
    assert (health["running"], health["waiting"], health["rejected"]) == (0, 0, 2)
    assert teacher.finished == 2


def test_requests_wait_their_turn_when_the_queue_has_room(start):
    teacher = ScriptedTeacher(piece_delay_s=0.01)
    url = start(teacher, max_concurrency=1, queue_size=8)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=30), range(4)))
    assert [r.status_code for r in results] == [200] * 4
    wait_for(lambda: teacher.finished == 4)  # the generator counts after its last piece is sent


# ---------------------------------------------------------------------- openai SDK against the server


def test_openai_sdk_maps_our_errors_to_its_exceptions(start):
    import openai

    url = start(ScriptedTeacher(), api_key=KEY, max_tokens_cap=10)
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0)
    assert (
        good.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content
        == "Hello, world!"
    )
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="at most 10"):
        good.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}], max_tokens=11)


# ---------------------------------------------------------------------- safety


def test_blocklist_refuses_a_request_with_400_content_filter(start):
    teacher = ScriptedTeacher()
    url = start(teacher, safety=Blocklist.from_file())
    bad = {"model": "m", "messages": [{"role": "user", "content": "Explain how to BUILD   a\nbomb at home"}]}
    r = httpx.post(f"{url}/v1/chat/completions", json=bad)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "content_filter" and "weapons_of_mass_harm" in err["message"]
    assert teacher.started == 0
    r = httpx.post(f"{url}/v1/completions", json={"model": "m", "prompt": "how to make a pipe bomb"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    # ordinary requests, including ones that merely contain a listed word, pass
    ok = {"model": "m", "messages": [{"role": "user", "content": "The movie was a bomb at the box office. Why?"}]}
    assert httpx.post(f"{url}/v1/chat/completions", json=ok).status_code == 200


def test_blocklist_cuts_an_answer_with_finish_reason_content_filter(start, tmp_path):
    listfile = tmp_path / "list.yaml"
    listfile.write_text("categories:\n  secrets:\n    phrases: [launch code]\n", encoding="utf-8")
    teacher = ScriptedTeacher(pieces=["The ", "launch ", "code ", "is ", "1234"])
    url = start(teacher, safety=Blocklist.from_file(listfile))
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT).json()
    assert r["choices"][0]["finish_reason"] == "content_filter"
    assert "1234" not in r["choices"][0]["message"]["content"]
    assert r["choices"][0]["message"]["content"].startswith("The")
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=dict(CHAT, stream=True)) as s:
        events = sse_events(s)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1] if e["choices"])
    assert "1234" not in text and "code" not in text
    assert events[-2]["choices"][0]["finish_reason"] == "content_filter"
    assert teacher.cancelled == 2  # generation stopped at the cut, not run to the end


def test_blocklist_file_errors_name_the_file_and_problem(tmp_path):
    bad_yaml = tmp_path / "a.yaml"
    bad_yaml.write_text("categories:\n  x: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"a\.yaml:\d+: invalid YAML"):
        Blocklist.from_file(bad_yaml)
    bad_regex = tmp_path / "b.yaml"
    bad_regex.write_text("categories:\n  x:\n    patterns: ['(unclosed']\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"b\.yaml: category 'x', pattern #1"):
        Blocklist.from_file(bad_regex)
    with pytest.raises(ConfigError, match="not found"):
        Blocklist.from_file(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="categories"):
        (tmp_path / "c.yaml").write_text("phrases: [x]\n", encoding="utf-8")
        Blocklist.from_file(tmp_path / "c.yaml")


@pytest.mark.parametrize(
    "answer,blocked,category",
    [
        ("SAFE", False, None),
        ("safe.", False, None),
        ("UNSAFE: weapons", True, "weapons"),
        ("UNSAFE", True, "unsafe"),
        ("**UNSAFE** self-harm", True, "self-harm"),
    ],
)
def test_moderation_answers_are_parsed(answer, blocked, category):
    v = parse_moderation(answer)
    assert v is not None and v.blocked is blocked and v.category == category


def test_unparsable_moderation_answer_is_none():
    assert parse_moderation("I think this is fine") is None
    assert parse_moderation("") is None


def test_moderation_through_a_teacher_endpoint(start, fake_openai, monkeypatch):
    """--safety moderation:openai:MODEL asks an OpenAI-compatible endpoint (here the scripted one) per request."""
    monkeypatch.setenv("MOD_KEY", "sk-mod")
    cfg = ServeConfig(
        safety="moderation:openai:mod-model",
        moderation={
            "base_url": fake_openai.url,
            "api_key_env": "MOD_KEY",
            "fail_closed": True,
            "answer_block_chars": 0,
        },
    )  # requests only here; answers: tests/hostile
    safety = make_safety(cfg.safety, cfg)
    teacher = ScriptedTeacher()
    url = start(teacher, safety=safety)
    fake_openai.script([{"text": "UNSAFE: weapons"}, {"text": "SAFE"}, {"text": "no idea"}])
    refused = httpx.post(f"{url}/v1/chat/completions", json=CHAT)
    assert refused.status_code == 400 and "weapons" in refused.json()["error"]["message"]
    assert httpx.post(f"{url}/v1/chat/completions", json=CHAT).status_code == 200
    failed = httpx.post(f"{url}/v1/chat/completions", json=CHAT)  # unparsable: refused (fail closed)
    assert failed.status_code == 400 and "moderation_unavailable" in failed.json()["error"]["message"]
    assert teacher.started == 1
    sent = fake_openai.requests[0]
    assert sent.path.endswith("/chat/completions") and sent.body["model"] == "mod-model"
    assert "Say hello." in sent.body["messages"][-1]["content"]
    assert sent.headers["authorization"] == "Bearer sk-mod"


def test_unknown_safety_spec_is_a_config_error():
    with pytest.raises(Exception, match="blocklist"):
        ServeConfig(safety="magic")
    with pytest.raises(Exception, match="needs a model"):
        ServeConfig(safety="moderation:")


# ---------------------------------------------------------------------- web page


def test_chat_page_is_served_self_contained(start):
    url = start(ScriptedTeacher())
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    for name in ("chat.js", "chat.css"):
        r = httpx.get(f"{url}/static/{name}")
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text  # no CDN, no external assets
    assert "http://" not in page.text and "https://" not in page.text
    assert httpx.get(f"{url}/static/../app.py").status_code == 404
    assert httpx.get(f"{url}/static/secret.txt").status_code == 404


def test_static_files_ship_in_the_package():
    from importlib import resources

    root = resources.files("alpacakit.serve")
    for rel in (
        "static/index.html",
        "static/chat.js",
        "static/chat.css",
        "data/blocklist.yaml",
        "data/moderation.yaml",
        "data/history.yaml",
    ):
        assert root.joinpath(rel).is_file(), rel
    assert Path(str(root.joinpath("static/index.html"))).read_text().count("/static/chat.js") == 1


# ---------------------------------------------------------------------- the command's own errors


def _serve_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "serve", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )


@pytest.mark.slow
def test_serve_command_refuses_an_unset_key_variable_before_loading_anything():
    r = _serve_cmd("smollm2-135m-instruct", "--port", "0", "--api-key-env", "ALPACAKIT_UNSET_KEY_VAR")
    assert r.returncode == 2
    assert "ALPACAKIT_UNSET_KEY_VAR" in r.stderr and "fix:" in r.stderr


def test_serve_command_reports_a_taken_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = _serve_cmd("smollm2-135m-instruct", "--port", str(port))
    assert r.returncode == 2
    assert f"127.0.0.1:{port}" in r.stderr and "--port" in r.stderr


def test_serve_command_reports_an_unknown_model():
    r = _serve_cmd("no-such-model-anywhere", "--port", "0")
    assert r.returncode == 2 and "no-such-model-anywhere" in r.stderr

"""The OpenAI-compatible teacher against a real HTTP server (tests/fake_openai.py) on 127.0.0.1,
plus cost accounting and the budget check."""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
import time

import openai
import pytest
from fake_openai import FAKE_KEY, FAKE_KEY_ENV, FakeOpenAIServer, unused_port

from alpacakit.config import Price, TeacherConfig
from alpacakit.errors import BudgetExceeded, ConfigError, TeacherError
from alpacakit.models.backends import make_backend
from alpacakit.models.backends.base import ModelBackend, Usage
from alpacakit.models.backends.endpoint import EndpointError, EndpointModel, parse_retry_after
from alpacakit.teachers.accounting import CostTracker, cost_of, estimate_cost, estimate_tokens

USER = [{"role": "user", "content": "Name a colour."}]


def run(coro):
    return asyncio.run(coro)


async def _chat_and_close(teacher, messages=USER, **kw):
    try:
        return await teacher.chat(messages, **kw)
    finally:
        await teacher.aclose()


async def _complete_and_close(teacher, prompt, **kw):
    try:
        return await teacher.complete(prompt, **kw)
    finally:
        await teacher.aclose()


# ----------------------------------------------------------------------------- routes and payloads


def test_openai_reference_builds_an_endpoint_teacher(fake_teacher_config):
    teacher = make_backend(fake_teacher_config())
    assert isinstance(teacher, EndpointModel)
    assert isinstance(teacher, ModelBackend)
    assert teacher.model == "fake-model" and teacher.name == "openai:fake-model"


def test_chat_posts_messages_to_chat_completions_with_the_key(fake_openai, fake_teacher_config):
    fake_openai.script(
        [{"text": "Blue.", "finish_reason": "stop", "usage": {"prompt_tokens": 12, "completion_tokens": 2}}]
    )
    c = run(_chat_and_close(make_backend(fake_teacher_config()), max_tokens=7, temperature=0.3, top_p=0.9))
    assert (c.text, c.finish_reason, c.usage, c.attempts) == ("Blue.", "stop", Usage(12, 2), 1)
    assert c.model == "fake-model" and c.request_id.startswith("chatcmpl-fake-")
    (req,) = fake_openai.requests
    assert req.path == "/v1/chat/completions"
    assert req.authorization == f"Bearer {FAKE_KEY}"
    assert req.body["messages"] == USER and req.body["model"] == "fake-model"
    assert (req.body["max_tokens"], req.body["temperature"], req.body["top_p"]) == (7, 0.3, 0.9)


def test_complete_posts_a_raw_prompt_to_legacy_completions(fake_openai, fake_teacher_config):
    fake_openai.script([{"text": " upon a time", "finish_reason": "length"}])
    c = run(_complete_and_close(make_backend(fake_teacher_config(seed=5)), "Once", stop=["\n\n"]))
    assert (c.text, c.finish_reason) == (" upon a time", "length")
    (req,) = fake_openai.requests
    assert req.path == "/v1/completions"
    assert req.body["prompt"] == "Once" and req.body["stop"] == ["\n\n"] and req.body["seed"] == 5
    assert req.body["max_tokens"] == 64  # from the config


def test_api_chat_sends_raw_prompts_as_one_user_message(fake_openai, fake_teacher_config):
    run(_complete_and_close(make_backend(fake_teacher_config(api="chat")), "Say hi"))
    (req,) = fake_openai.requests
    assert req.path == "/v1/chat/completions"
    assert req.body["messages"] == [{"role": "user", "content": "Say hi"}]


def test_api_completions_refuses_chat(fake_openai, fake_teacher_config):
    with pytest.raises(TeacherError, match="api=completions"):
        run(_chat_and_close(make_backend(fake_teacher_config(api="completions"))))
    assert fake_openai.requests == []


def test_auto_falls_back_to_chat_when_the_endpoint_has_no_completions_route(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 404, "message": "This is a chat model"}, {"text": "a"}, {"text": "b"}])
    teacher = make_backend(fake_teacher_config())

    async def two_calls():
        try:
            return [await teacher.complete("x"), await teacher.complete("y")]
        finally:
            await teacher.aclose()

    assert [c.text for c in run(two_calls())] == ["a", "b"]
    assert [r.path for r in fake_openai.requests] == ["/v1/completions", "/v1/chat/completions", "/v1/chat/completions"]
    assert teacher.describe()["api"] == "chat"


def test_list_models_reads_the_models_route(fake_teacher_config):
    teacher = make_backend(fake_teacher_config())

    async def go():
        try:
            return await teacher.list_models()
        finally:
            await teacher.aclose()

    assert run(go()) == ["fake-model"]


def test_a_teacher_can_be_closed_and_reused_from_another_event_loop(fake_teacher_config):
    teacher = make_backend(fake_teacher_config(max_concurrency=2))
    assert run(_chat_and_close(teacher)).text == "echo: Name a colour."
    assert run(_chat_and_close(teacher)).text == "echo: Name a colour."


# ----------------------------------------------------------------------------- retries


def test_429_is_retried_after_the_retry_after_delay(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 429, "retry_after": 1}, {"text": "ok"}])
    c = run(_chat_and_close(make_backend(fake_teacher_config())))
    assert (c.text, c.attempts) == ("ok", 2)
    first, second = fake_openai.requests
    assert first.status == 429
    # backoff_max_s is 0.05 s: only Retry-After explains a gap of a second
    assert second.received_at - first.received_at >= 1.0


def test_5xx_are_retried_and_every_attempt_is_counted(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 500}, {"status": 503}, {"text": "fine"}])
    tracker = CostTracker()
    c = run(_chat_and_close(make_backend(fake_teacher_config(), tracker)))
    assert (c.text, c.attempts) == ("fine", 3)
    assert len(fake_openai.requests) == 3
    assert tracker.snapshot()["attempts"] == 3 and tracker.snapshot()["requests"] == 1


def test_a_request_slower_than_timeout_is_abandoned_and_retried(fake_openai, fake_teacher_config):
    fake_openai.script([{"sleep": 3, "text": "too late"}, {"text": "on time"}])
    c = run(_chat_and_close(make_backend(fake_teacher_config(timeout_s=0.5))))
    assert (c.text, c.attempts) == ("on time", 2)
    first, second = fake_openai.requests
    # the retry went out while the first request was still unanswered on the server
    assert first.finished_at is None or second.received_at < first.finished_at
    assert first.step["text"] == "too late"


def test_retries_stop_after_max_retries_with_the_last_error(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 500}] * 10)
    tracker = CostTracker()
    with pytest.raises(EndpointError) as err:
        run(_chat_and_close(make_backend(fake_teacher_config(max_retries=2), tracker)))
    assert len(fake_openai.requests) == 3
    msg = str(err.value)
    assert f"{fake_openai.url}/chat/completions" in msg and "3 attempts" in msg and "HTTP 500" in msg
    assert err.value.status == 500 and err.value.attempts == 3
    assert tracker.snapshot() == {
        "requests": 0,
        "failed_requests": 1,
        "attempts": 3,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost_usd": 0.0,
    }


def test_client_errors_are_not_retried(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 400, "message": "max_tokens is too large"}, {"text": "never sent"}])
    with pytest.raises(EndpointError, match="HTTP 400: max_tokens is too large"):
        run(_chat_and_close(make_backend(fake_teacher_config())))
    assert len(fake_openai.requests) == 1


def test_malformed_bodies_are_retried(fake_openai, fake_teacher_config):
    fake_openai.script([{"malformed": True}, {"malformed": "no_choices"}, {"malformed": "html"}, {"text": "good"}])
    c = run(_chat_and_close(make_backend(fake_teacher_config())))
    assert (c.text, c.attempts) == ("good", 4)


def test_persistently_malformed_output_fails_clearly(fake_openai, fake_teacher_config):
    fake_openai.script([{"malformed": "no_choices"}] * 3)
    with pytest.raises(EndpointError, match="3 attempts; last error: malformed response: no choices"):
        run(_chat_and_close(make_backend(fake_teacher_config(max_retries=2))))


def test_null_content_becomes_empty_text_the_caller_can_count(fake_openai, fake_teacher_config):
    fake_openai.script([{"malformed": "null_content"}])
    c = run(_chat_and_close(make_backend(fake_teacher_config())))
    assert (c.text, c.finish_reason, c.attempts) == ("", "stop", 1)


def test_an_unreachable_endpoint_fails_after_its_retries_naming_url_and_attempts(monkeypatch):
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)
    url = f"http://127.0.0.1:{unused_port()}/v1"
    cfg = TeacherConfig(
        model="openai:m",
        base_url=url,
        api_key_env=FAKE_KEY_ENV,
        max_retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        timeout_s=5,
    )
    with pytest.raises(EndpointError) as err:
        run(_chat_and_close(make_backend(cfg)))
    msg = str(err.value)
    assert url in msg and "3 attempts" in msg and "connection failed" in msg
    assert FAKE_KEY not in msg and FAKE_KEY not in repr(err.value)


def test_parse_retry_after_accepts_seconds_milliseconds_and_http_dates():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 <= parse_retry_after({"retry-after": when}) <= 30.5
    assert parse_retry_after({"retry-after": "not a date"}) is None
    assert parse_retry_after({}) is None


def test_retry_after_as_an_http_date_is_honoured(fake_openai, fake_teacher_config):
    not_before = math.ceil(time.time()) + 1  # HTTP dates have whole seconds
    fake_openai.script(
        [{"status": 429, "retry_after": email.utils.formatdate(not_before, usegmt=True)}, {"text": "ok"}]
    )
    assert run(_chat_and_close(make_backend(fake_teacher_config()))).attempts == 2
    first, second = fake_openai.requests
    assert second.received_wall >= not_before


# ----------------------------------------------------------------------------- keys


def test_a_missing_key_names_the_environment_variable(monkeypatch):
    monkeypatch.delenv("ALPACAKIT_NO_SUCH_KEY", raising=False)
    cfg = TeacherConfig(
        model="openai:gpt-x", base_url="https://api.example.com/v1", api_key_env="ALPACAKIT_NO_SUCH_KEY"
    )
    with pytest.raises(TeacherError, match="environment variable ALPACAKIT_NO_SUCH_KEY is not set"):
        make_backend(cfg)


def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(fake_openai):
    cfg = TeacherConfig(model="openai:m", base_url=fake_openai.url, api_key_env="sk-proj-abc123-secret")
    with pytest.raises(ConfigError, match="name of an environment variable") as err:
        make_backend(cfg)
    assert "abc123" not in str(err.value)


def test_a_loopback_endpoint_works_without_a_key(fake_openai, monkeypatch):
    monkeypatch.delenv("ALPACAKIT_NO_SUCH_KEY", raising=False)
    cfg = TeacherConfig(model="openai:fake-model", base_url=fake_openai.url, api_key_env="ALPACAKIT_NO_SUCH_KEY")
    assert run(_chat_and_close(make_backend(cfg))).text == "echo: Name a colour."
    assert fake_openai.requests[0].authorization.startswith("Bearer ")


def test_a_rejected_key_is_reported_without_the_key(fake_openai, fake_teacher_config):
    fake_openai.api_key = "the-right-key"
    with pytest.raises(EndpointError) as err:
        run(_chat_and_close(make_backend(fake_teacher_config())))
    assert err.value.status == 401 and FAKE_KEY_ENV in err.value.hint
    assert FAKE_KEY not in str(err.value)
    assert len(fake_openai.requests) == 1


def test_the_key_is_scrubbed_even_when_a_server_echoes_it(fake_openai, fake_teacher_config):
    fake_openai.script([{"status": 400, "message": f"key {FAKE_KEY} is not allowed"}])
    with pytest.raises(EndpointError) as err:
        run(_chat_and_close(make_backend(fake_teacher_config())))
    assert FAKE_KEY not in str(err.value) and "***" in str(err.value)


def test_bad_base_url_and_empty_model_are_config_errors(monkeypatch):
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_KEY)
    with pytest.raises(ConfigError, match="not an http"):
        make_backend(TeacherConfig(model="openai:m", base_url="127.0.0.1:8000/v1", api_key_env=FAKE_KEY_ENV))
    with pytest.raises(ConfigError, match="no model name"):
        make_backend(TeacherConfig(model="openai:", base_url="http://127.0.0.1:1/v1", api_key_env=FAKE_KEY_ENV))


# ----------------------------------------------------------------------------- concurrency


def test_requests_in_flight_never_exceed_max_concurrency(fake_openai, fake_teacher_config):
    fake_openai.responder = lambda body: {"sleep": 0.3, "text": body["messages"][0]["content"]}
    teacher = make_backend(fake_teacher_config(max_concurrency=3))

    async def many():
        try:
            return await asyncio.gather(*(teacher.chat([{"role": "user", "content": str(i)}]) for i in range(9)))
        finally:
            await teacher.aclose()

    out = run(many())
    assert [c.text for c in out] == [str(i) for i in range(9)]
    assert len(fake_openai.requests) == 9
    assert 2 <= fake_openai.max_in_flight <= 3


# ----------------------------------------------------------------------------- usage, cost, budget


def test_usage_and_cost_follow_the_price_table(fake_openai, fake_teacher_config):
    price = Price(input_per_1m=1.0, output_per_1m=2.0)
    fake_openai.script(
        [
            {"text": "a", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
            {"status": 429, "retry_after": 0},
            {"text": "b", "usage": {"prompt_tokens": 3000, "completion_tokens": 1000}},
        ]
    )
    tracker = CostTracker()
    teacher = make_backend(fake_teacher_config(price=price), tracker)

    async def two():
        try:
            return await teacher.chat(USER), await teacher.complete("p")
        finally:
            await teacher.aclose()

    a, b = run(two())
    assert a.cost == pytest.approx(0.002) and b.cost == pytest.approx(0.005)
    assert tracker.snapshot() == {
        "requests": 2,
        "failed_requests": 0,
        "attempts": 3,
        "prompt_tokens": 4000,
        "completion_tokens": 1500,
        "cost_usd": pytest.approx(0.007),
    }


def test_cost_is_set_without_a_tracker_and_estimated_when_usage_is_missing(fake_openai, fake_teacher_config):
    fake_openai.script([{"text": "some words here", "no_usage": True}])
    c = run(_chat_and_close(make_backend(fake_teacher_config(price=Price(input_per_1m=10, output_per_1m=10)))))
    assert c.usage.prompt_tokens >= 3 and c.usage.completion_tokens >= 3
    assert c.cost == pytest.approx(cost_of(c.usage, Price(input_per_1m=10, output_per_1m=10))) and c.cost > 0


def test_estimates_err_high():
    text = "The quick brown fox jumps over the lazy dog. " * 20  # ~200 BPE tokens
    assert estimate_tokens(text) >= 200
    price = Price(input_per_1m=1.0, output_per_1m=4.0)
    est = estimate_cost(price, messages=[{"role": "user", "content": text}], max_tokens=100)
    assert est >= cost_of(Usage(200, 100), price)


def test_would_exceed_stops_before_the_budget_is_crossed():
    tracker = CostTracker(price=Price(input_per_1m=1.0, output_per_1m=1.0))
    tracker.charge(Usage(600_000, 300_000))  # $0.90
    assert not tracker.would_exceed(1.0, 0.10)
    assert tracker.would_exceed(1.0, 0.11)
    assert not tracker.would_exceed(None, 1e9)


def test_reservations_hold_budget_for_requests_in_flight():
    tracker = CostTracker()
    with tracker.reserve(0.6, max_cost=1.0):
        assert tracker.would_exceed(1.0, 0.5)
        with pytest.raises(BudgetExceeded, match=r"\$1.0000 budget"):
            with tracker.reserve(0.5, max_cost=1.0):
                pass
        assert tracker.reserved == pytest.approx(0.6)
    assert tracker.reserved == 0 and not tracker.would_exceed(1.0, 0.5)


def test_a_resumed_tracker_continues_the_totals():
    first = CostTracker(price=Price(input_per_1m=2.0))
    first.charge(Usage(500_000, 10), attempts=2)
    resumed = CostTracker(price=Price(input_per_1m=2.0), initial=first.snapshot())
    resumed.charge(Usage(500_000, 10))
    snap = resumed.snapshot()
    assert (snap["requests"], snap["attempts"], snap["prompt_tokens"]) == (2, 3, 1_000_000)
    assert snap["cost_usd"] == pytest.approx(2.0)


def test_the_tracker_is_exact_under_threads():
    tracker = CostTracker(price=Price(input_per_1m=1.0, output_per_1m=1.0))

    def work():
        for _ in range(2000):
            tracker.charge(Usage(1, 2))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    snap = tracker.snapshot()
    assert (snap["requests"], snap["prompt_tokens"], snap["completion_tokens"]) == (8000, 8000, 16000)
    assert snap["cost_usd"] == pytest.approx(24000 / 1e6)


# ----------------------------------------------------------------------------- the fake server itself


def test_the_fake_server_streams_sse_for_the_official_client(fake_openai):
    fake_openai.script([{"text": "one two three"}])
    client = openai.OpenAI(base_url=fake_openai.url, api_key="k", max_retries=0)
    chunks = list(client.chat.completions.create(model="m", messages=USER, stream=True))
    client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_a_standalone_fake_server_starts_and_stops_on_a_free_port():
    with FakeOpenAIServer(model="solo") as srv:
        client = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["solo"]
        client.close()
        port = srv.port
    with pytest.raises(openai.APIConnectionError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0, timeout=2).models.list()

"""Capability benchmarks on an OpenAI-compatible endpoint (`eval bench --model openai:MODEL`):
the short-answer tasks run over real HTTP, multiple choice is skipped (or refused when named),
paid answers are journaled and never asked twice, and the teacher gets its row in the report.

Endpoints: the scripted OpenAI-compatible server (answers looked up from the task files, as a
knowledgeable teacher would), and `alpacakit serve` on SmolLM2, whose answers must equal those
of the same model benchmarked locally (the chat template renders the same prompt either way).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from alpacakit.errors import ConfigError
from alpacakit.evaluate.bench.runner import run_bench
from alpacakit.evaluate.bench.tasks import load_task

ANSWERS = {
    it["question"]: it["answers"][0]
    for name in ("facts_qa", "arithmetic_qa", "reading_qa")
    for it in load_task(name).items
}


def knowing_teacher(body: dict[str, Any]) -> str:
    text = body["messages"][-1]["content"]
    for question, answer in ANSWERS.items():
        if question in text:
            return answer
    return "I do not know."


@pytest.fixture
def endpoint(fake_openai, monkeypatch) -> Any:
    monkeypatch.setenv("BENCH_KEY", "sk-bench")
    fake_openai.responder = knowing_teacher
    return fake_openai


def test_short_answer_tasks_run_on_an_endpoint_and_multiple_choice_is_skipped(endpoint, tmp_path: Path) -> None:
    out = tmp_path / "eval" / "bench-teacher.json"
    # first attempt: the endpoint fails for good after 5 answers (a 400 is not retried)
    answered = [0]

    def flaky(body: dict[str, Any]) -> Any:
        answered[0] += 1
        return knowing_teacher(body) if answered[0] <= 5 else {"status": 400, "message": "quota exhausted"}

    endpoint.responder = flaky
    with pytest.raises(Exception, match="quota exhausted"):
        run_bench("openai:fake-model", base_url=endpoint.url, api_key_env="BENCH_KEY", limit=4, out=out)
    assert not out.exists()

    # the rerun, from the CLI, asks only for what was not answered yet
    endpoint.responder = knowing_teacher
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "eval",
            "bench",
            "--model",
            "openai:fake-model",
            "--base-url",
            endpoint.url,
            "--api-key-env",
            "BENCH_KEY",
            "--limit",
            "4",
            "-o",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "facts_mc: skipped (multiple choice needs log-likelihoods" in r.stdout
    res = json.loads(out.read_text())
    assert set(res["tasks"]) == {"facts_qa", "arithmetic_qa", "reading_qa"}
    assert all(t["accuracy"] == 1.0 and t["n"] == 4 for t in res["tasks"].values())
    assert res["model_info"]["kind"] == "endpoint" and res["prompt"]["mode"] == "message"
    assert res["resumed_items"] == 5
    paid = [q for q in endpoint.requests if q.status == 200]
    assert len(paid) == 12  # 5 before the failure + 7 after it: none asked twice
    sent = paid[0]
    assert sent.headers["authorization"] == "Bearer sk-bench" and sent.body["temperature"] == 0.0
    assert "Reply with only the answer" in sent.body["messages"][0]["content"]
    assert "sk-bench" not in out.read_text() and "sk-bench" not in r.stdout + r.stderr


def test_naming_a_multiple_choice_task_for_an_endpoint_is_a_clear_error(endpoint) -> None:
    with pytest.raises(ConfigError, match="facts_mc is multiple choice") as e:
        run_bench("openai:fake-model", tasks=["facts_mc", "facts_qa"], base_url=endpoint.url, api_key_env="BENCH_KEY")
    assert "--tasks facts_qa" in (e.value.hint or "")
    assert endpoint.requests == []


@pytest.mark.slow
def test_an_unreachable_endpoint_names_the_url(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_KEY", "sk-bench")
    from alpacakit.errors import AlpacakitError

    with pytest.raises(AlpacakitError) as e:
        run_bench(
            "openai:m",
            tasks=["facts_qa"],
            limit=1,
            base_url="http://127.0.0.1:9/v1",
            api_key_env="BENCH_KEY",
            out=tmp_path / "bench-x.json",
        )
    assert "127.0.0.1:9" in str(e.value) + (e.value.hint or "")


def test_the_report_gives_an_endpoint_teacher_its_row(endpoint, tmp_path: Path) -> None:
    from alpacakit.evaluate.report import Labels, knowledge_stats

    ev = tmp_path / "eval"
    run_bench(
        "openai:fake-model", base_url=endpoint.url, api_key_env="BENCH_KEY", limit=3, out=ev / "bench-teacher.json"
    )
    teacher = json.loads((ev / "bench-teacher.json").read_text())

    def pretend(correct: bool) -> dict[str, Any]:  # base and student answered the same items
        return {
            "items": [{**it, "correct": correct and it["task"] != "reading_qa"} for it in teacher["items"]]
            + [{"task": "facts_mc", "id": "facts_0", "correct": correct}]
        }

    stats = knowledge_stats(
        {"bench": {"base": pretend(False), "student": pretend(True), "teacher": teacher}},
        Labels("base", "student", "teacher"),
    )
    assert stats["teacher_acc"] == 100.0 and stats["n_all"] == 9  # the items all three answered
    assert stats["gap_closed"] == pytest.approx(100 * 6 / 9)


@pytest.mark.slow
def test_alpacakit_serve_as_the_endpoint_gives_the_local_models_answers(smollm2_gguf: Path, tmp_path: Path) -> None:
    from alpacakit.serve.config import ServeConfig
    from alpacakit.serve.server import BackgroundServer, build_app

    local = run_bench(str(smollm2_gguf), tasks=["facts_qa", "arithmetic_qa"], limit=4, n_threads=2)
    app, backend, _ = build_app(str(smollm2_gguf), ServeConfig(n_threads=2, max_concurrency=1), api_key="")
    import asyncio
    import os

    os.environ.setdefault("SERVE_BENCH_KEY", "unused")
    try:
        with BackgroundServer(app) as srv:
            remote = run_bench(
                "openai:smollm2",
                tasks=["facts_qa", "arithmetic_qa"],
                limit=4,
                base_url=srv.url + "/v1",
                api_key_env="SERVE_BENCH_KEY",
            )
    finally:
        asyncio.run(backend.aclose())
    assert local["prompt"]["mode"] == "format" and remote["prompt"]["mode"] == "message"
    norm = lambda s: re.sub(r"\s+", " ", s).strip()  # noqa: E731
    assert [norm(i["output"]) for i in remote["items"]] == [norm(i["output"]) for i in local["items"]]
    assert remote["overall"]["accuracy"] == local["overall"]["accuracy"]

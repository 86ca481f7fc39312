"""Money that is really capped: a shipped, dated price table for known API models, and `--max-cost`
refused before any request when the price of the model is unknown."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from alpacakit.config import load_config
from alpacakit.teachers.prices import lookup, price_table, resolve_price, table_is_stale

SEEDS = [
    {
        "id": f"s{i}",
        "name": f"t{i}",
        "instruction": f"Write a short poem about the number {i} and the sea.",
        "instances": [{"input": "", "output": f"Poem {i}."}],
        "is_classification": False,
    }
    for i in range(3)
]


def teacher(**fields) -> object:
    return load_config(None, None, {"teacher": fields}).teacher


def test_the_table_prices_known_models_and_dated_prefixes() -> None:
    assert lookup("gpt-4o-mini") == {"input_per_1m": 0.15, "output_per_1m": 0.60}
    assert lookup("gpt-4o-mini-2024-07-18") == lookup("gpt-4o-mini")  # longest prefix, not gpt-4o
    assert lookup("text-davinci-003") == {"input_per_1m": 20.0, "output_per_1m": 20.0}
    assert lookup("llama3") is None
    assert date.fromisoformat(price_table()["as_of"]) <= date.today()
    assert table_is_stale(date(2099, 1, 1)) and not table_is_stale(date.fromisoformat(price_table()["as_of"]))


@pytest.mark.parametrize(
    "fields, source, price",
    [
        ({"model": "openai:gpt-4o"}, "table", (2.5, 10.0)),
        ({"model": "openai:gpt-4o", "base_url": "http://127.0.0.1:4000/v1"}, "table", (2.5, 10.0)),  # a LiteLLM proxy
        ({"model": "openai:llama3", "base_url": "http://127.0.0.1:8000/v1"}, "loopback", (0.0, 0.0)),
        ({"model": "openai:llama3", "base_url": "https://vllm.internal/v1"}, "unknown", (0.0, 0.0)),
        ({"model": "smollm2-135m-instruct"}, "local", (0.0, 0.0)),
        ({"model": "openai:gpt-4o", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}}, "config", (1.0, 2.0)),
        ({"model": "openai:llama3", "base_url": "https://x/v1", "price": {"input_per_1m": 0}}, "config", (0.0, 0.0)),
    ],
)
def test_where_a_price_comes_from(fields: dict, source: str, price: tuple) -> None:
    p, s = resolve_price(teacher(**fields))
    assert s.startswith(source) and (p.input_per_1m, p.output_per_1m) == price


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    tmp_path.mkdir(parents=True, exist_ok=True)
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    env = {**os.environ, "ALPACAKIT_TEST_API_KEY": "sk-test"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "alpacakit.cli.main",
            "generate",
            "--seeds",
            str(seeds),
            "--num",
            "3",
            "--api-key-env",
            "ALPACAKIT_TEST_API_KEY",
            "-o",
            str(tmp_path / "out"),
            "--no-progress",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_a_budget_on_an_unknown_price_is_refused_before_any_request(fake_openai, tmp_path: Path) -> None:
    # not loopback and not in the table: nothing is sent, the error says how to set the price
    r = _run(
        "--teacher",
        "openai:mystery-model",
        "--base-url",
        "https://api.example.invalid/v1",
        "--max-cost",
        "1",
        tmp_path=tmp_path,
    )
    assert r.returncode == 2
    assert "does not know what openai:mystery-model costs" in r.stderr
    assert "--set teacher.price.input_per_1m=" in r.stderr and "gpt-4o-mini" in r.stderr
    assert not (tmp_path / "out" / "responses.jsonl").exists()


@pytest.mark.slow
def test_a_table_model_is_charged_even_at_a_local_proxy(fake_openai, tmp_path: Path) -> None:
    """`openai:gpt-4o-mini` at a server on 127.0.0.1 (as behind LiteLLM's proxy): the table's price
    is charged, the manifest says where it came from, and --max-cost stops the run."""
    from test_generate import responder  # realistic numbered self-instruct answers

    fake_openai.responder = responder(3)
    r = _run("--teacher", "openai:gpt-4o-mini", "--base-url", fake_openai.url, tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["price"].startswith("price from alpacakit's table as of")
    assert manifest["config"]["teacher"]["price"] == {"input_per_1m": 0.15, "output_per_1m": 0.6}
    assert manifest["counts"]["cost_usd"] > 0
    paid = len(fake_openai.requests)
    # a budget smaller than one request's worst case stops before the first request
    r2 = _run(
        "--teacher",
        "openai:gpt-4o-mini",
        "--base-url",
        fake_openai.url,
        "--max-cost",
        "0.0000001",
        tmp_path=tmp_path / "b",
    )
    assert len(fake_openai.requests) == paid
    assert "budget" in (r2.stdout + r2.stderr).lower()


def test_the_quickstart_asks_an_api_teacher_at_its_own_endpoint(fake_openai, tmp_path: Path, monkeypatch) -> None:
    """Follow and bench stages send an `openai:` teacher to the base URL it generated with."""
    from alpacakit.quickstart.pipeline import Run, load_profile, stage_follow

    monkeypatch.setenv("ALPACAKIT_TEST_API_KEY", "sk-test")
    fake_openai.responder = lambda body: "Here is my answer."
    monkeypatch.setattr(Run, "systems", lambda self: {"teacher": self.settings.teacher})  # the teacher's row only
    profile = load_profile(
        "default",
        [
            "teacher.model=openai:fake-model",
            f"teacher.base_url={fake_openai.url}",
            "teacher.api_key_env=ALPACAKIT_TEST_API_KEY",
            "quickstart.follow_teacher_limit=2",
        ],
    )
    run = Run(tmp_path / "qs", profile, say=lambda m: None, progress=False)
    (tmp_path / "qs" / "eval").mkdir(parents=True)
    line = stage_follow(run)
    assert "teacher" in line and len(fake_openai.requests) == 2
    assert fake_openai.requests[0].headers["authorization"] == "Bearer sk-test"

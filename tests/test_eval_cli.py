"""The eval verbs as real commands (subprocesses) against the loopback judge/answer server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_openai import FAKE_KEY_ENV

SRC = str(Path(__file__).resolve().parents[1] / "src")


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


@pytest.mark.slow
def test_generate_then_pairwise_from_the_command_line(fake_openai, fake_teacher_config, tmp_path):
    fake_teacher_config()  # puts the API key in the environment
    evals = tmp_path / "set.jsonl"
    evals.write_text("".join(json.dumps({"id": f"e{i}", "instruction": f"Count to {i}."}) + "\n" for i in range(3)))

    def respond(body):
        content = body["messages"][-1]["content"]
        if "[Answer A]" in content:  # judging: prefer the longer answer
            a = content.split("[Answer A]\n", 1)[1].split("\n[End of answer A]", 1)[0]
            b = content.split("[Answer B]\n", 1)[1].split("\n[End of answer B]", 1)[0]
            return "Verdict: A" if len(a) > len(b) else "Verdict: B"
        return "short" if body["max_tokens"] == 5 else "a much longer answer"

    fake_openai.responder = respond
    common = [
        "--eval-set",
        str(evals),
        "--model",
        "openai:fake-model",
        "--base-url",
        fake_openai.url,
        "--api-key-env",
        FAKE_KEY_ENV,
        "--no-progress",
    ]
    a = run("eval", "generate", *common, "--name", "student", "-o", str(tmp_path / "outputs-student.json"))
    assert a.returncode == 0, a.stderr
    assert "complete: 3/3 answers" in a.stdout
    b = run(
        "eval",
        "generate",
        *common,
        "--name",
        "teacher",
        "--max-tokens",
        "5",
        "-o",
        str(tmp_path / "outputs-teacher.json"),
    )
    assert b.returncode == 0, b.stderr
    p = run(
        "eval",
        "pairwise",
        str(tmp_path / "outputs-student.json"),
        str(tmp_path / "outputs-teacher.json"),
        "--judge-model",
        "openai:fake-model",
        "--base-url",
        fake_openai.url,
        "--api-key-env",
        FAKE_KEY_ENV,
        "--no-progress",
    )
    assert p.returncode == 0, p.stderr
    assert "win rate 100.0%" in p.stdout and "3 wins" in p.stdout
    saved = json.loads((tmp_path / "pairwise-student-vs-teacher.json").read_text())
    assert saved["metrics"]["n_total"] == 3 and saved["cost"]["judgments"] == 6


def test_contamination_exits_1_and_writes_the_clean_file(tmp_path):
    train = tmp_path / "examples.jsonl"
    train.write_text(
        json.dumps({"instruction": "Write a short poem about the sea.", "output": "x"})
        + "\n"
        + json.dumps({"instruction": "Describe the water cycle in detail.", "output": "y"})
        + "\n"
    )
    evals = tmp_path / "evals.jsonl"
    evals.write_text(json.dumps({"instruction": "Write a short poem about the sea"}) + "\n")
    r = run(
        "eval",
        "contamination",
        str(train),
        "--eval-set",
        str(evals),
        "--write-clean",
        str(tmp_path / "clean.jsonl"),
        "-o",
        str(tmp_path / "contamination.json"),
    )
    assert r.returncode == 1
    assert "1 of 2 training examples copy one of 1 eval instructions" in r.stdout
    assert len((tmp_path / "clean.jsonl").read_text().splitlines()) == 1
    assert json.loads((tmp_path / "contamination.json").read_text())["pairs"][0]["train_index"] == 0


def test_a_missing_outputs_file_is_a_clear_error_not_a_traceback(tmp_path):
    r = run("eval", "pairwise", str(tmp_path / "nope.json"), str(tmp_path / "other.json"))
    assert r.returncode == 2
    assert "error:" in r.stderr and "nope.json: no such file" in r.stderr
    assert "Traceback" not in r.stderr

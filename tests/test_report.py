"""`alpacakit report`: the imitation-gap report on synthetic run folders.

The pairwise files are made by the real judging code against the scripted judge server; the
bench files follow the format `eval bench` writes (per-task accuracy plus per-item results).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alpacakit.config import AlpacakitConfig
from alpacakit.evaluate.pairwise import judge_pairwise
from alpacakit.evaluate.report import build_report

N = 12
PNG = b"\x89PNG\r\n\x1a\n"


def _outputs(run: Path, system: str, words: int) -> Path:
    path = run / "eval" / f"outputs-{system}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            [
                {
                    "instruction": f"Task {i}",
                    "output": f"{system.upper()} " + "word " * (words + i),
                    "generator": system,
                    "dataset": "t",
                    "finish_reason": "stop",
                }
                for i in range(N)
            ]
        )
    )
    return path


def _bench(run: Path, system: str, correct_every: int) -> None:
    items = [
        {"task": task, "id": f"{task}-{i}", "kind": "mc", "correct": i % correct_every == 0}
        for task in ("facts_mc", "arithmetic_qa")
        for i in range(100)
    ]
    tasks = {}
    for task in ("facts_mc", "arithmetic_qa"):
        rows = [it for it in items if it["task"] == task]
        tasks[task] = {"accuracy": sum(r["correct"] for r in rows) / len(rows), "n": len(rows), "metric": "acc"}
    accs = [t["accuracy"] for t in tasks.values()]
    (run / "eval" / f"bench-{system}.json").write_text(
        json.dumps(
            {
                "system": system,
                "tasks": tasks,
                "overall": {"accuracy": sum(accs) / len(accs), "n": 200},
                "timing": {"total_s": 30.0},
                "items": items,
            }
        )
    )


def _manifests(run: Path) -> None:
    (run / "data").mkdir(parents=True, exist_ok=True)
    (run / "data" / "manifest.json").write_text(
        json.dumps(
            {
                "stage": "generate",
                "status": "complete",
                "teacher": {"name": "qwen2.5-coder-1.5b-instruct"},
                "counts": {
                    "kept": 500,
                    "requests": 60,
                    "prompt_tokens": 40000,
                    "completion_tokens": 80000,
                    "cost_usd": 0.0,
                    "teacher_seconds": 2000.0,
                },
                "wall_seconds": 2100.0,
            }
        )
    )
    (run / "model").mkdir(parents=True, exist_ok=True)
    (run / "model" / "manifest.json").write_text(
        json.dumps(
            {
                "kind": "alpacakit.model",
                "complete": True,
                "method": "lora",
                "base": {"ref": "gemma-3-270m", "source": "embedded"},
                "steps": 120,
                "durations_s": {"total": 1500.0},
            }
        )
    )


def _judge(files_cfg, model: Path, baseline: Path, fake_openai, student_wins: int) -> None:
    """The scripted judge prefers the student on the first `student_wins` tasks, else the teacher."""

    def respond(body):
        user = body["messages"][-1]["content"]
        a = user.split("[Answer A]\n", 1)[1].split(" ", 1)[0]
        task = int(user.split("[Instruction]\nTask ", 1)[1].split("\n", 1)[0])
        winner = "STUDENT" if task < student_wins else "TEACHER"
        return "Verdict: A" if a == winner else "Verdict: B"

    fake_openai.responder = respond
    judge_pairwise(model, baseline, files_cfg, show_progress=False)


@pytest.fixture
def judge_cfg(fake_teacher_config):
    t = fake_teacher_config()
    cfg = AlpacakitConfig()
    j = cfg.eval.judge
    j.model, j.base_url, j.api_key_env, j.max_retries, j.timeout_s = t.model, t.base_url, t.api_key_env, 3, 10.0
    return cfg


@pytest.fixture
def full_run(tmp_path, fake_openai, judge_cfg) -> Path:
    run = tmp_path / "runs" / "demo"
    _manifests(run)
    base, student, teacher = _outputs(run, "base", 5), _outputs(run, "student", 40), _outputs(run, "teacher", 30)
    _judge(judge_cfg, student, teacher, fake_openai, student_wins=N // 2)  # student: 50% against the teacher
    _judge(judge_cfg, base, teacher, fake_openai, student_wins=0)  # base: never wins
    _bench(run, "base", 3)
    _bench(run, "teacher", 2)
    return run


@pytest.mark.slow
def test_a_student_that_gained_style_but_not_knowledge_is_called_out(full_run):
    _bench(full_run, "student", 3)  # exactly the base model's answers
    res = build_report(full_run)
    assert res.verdict["kind"] == "style_not_knowledge"
    assert res.verdict["style_gain"] == pytest.approx(50.0)
    assert res.verdict["knowledge_gain"] == 0.0
    md = res.markdown.read_text()
    assert "gained style but not knowledge" in md
    assert "Rule: a style gain is a rise of at least 10 points" in md
    assert "| student | teacher |" in md and "50.0%" in md
    for name in ("winrate.png", "capability.png", "lengths.png", "style_vs_substance.png"):
        assert (res.out_dir / name).read_bytes()[:8] == PNG
        assert f'src="{name}"' in res.html.read_text()
    assert res.missing == []
    data = json.loads(res.data.read_text())
    stages = {c["stage"] for c in data["costs"]}
    assert stages == {"data", "training", "judging", "benchmarks"}
    assert data["knowledge"]["gap_closed"] == 0.0


@pytest.mark.slow
def test_the_cost_table_names_the_base_and_counts_judging_in_wall_time(full_run):
    _bench(full_run, "student", 3)
    data = json.loads(build_report(full_run).data.read_text())
    rows = {c["what"]: c for c in data["costs"]}
    assert "lora on gemma-3-270m, 120 steps" in rows
    pairwise = json.loads((full_run / "eval" / "pairwise-student-vs-teacher.json").read_text())
    judging = next(c for c in data["costs"] if c["stage"] == "judging" and c["what"].startswith("student"))
    assert judging["seconds"] == pairwise["cost"]["wall_seconds"] > 0


@pytest.mark.slow
def test_a_student_that_gained_knowledge_too_gets_both(full_run):
    _bench(full_run, "student", 2)  # now as accurate as the teacher
    res = build_report(full_run)
    assert res.verdict["kind"] == "both"
    assert res.verdict["knowledge_gained"] is True
    data = json.loads(res.data.read_text())
    assert data["knowledge"]["gap_closed"] == pytest.approx(100.0)


@pytest.mark.slow
def test_thresholds_come_from_the_config(full_run):
    _bench(full_run, "student", 3)
    cfg = AlpacakitConfig()
    cfg.eval.report.style_gain_points = 60.0
    res = build_report(full_run, cfg)
    assert res.verdict["kind"] == "neither"
    assert "at least 60 points" in res.markdown.read_text()


def test_a_run_with_missing_parts_is_reported_not_crashed_on(tmp_path):
    run = tmp_path / "runs" / "partial"
    _outputs(run, "student", 10)
    (run / "eval" / "pairwise-broken.json").write_text("{ not json")
    res = build_report(run)
    assert res.verdict["kind"] == "incomplete"
    md = res.markdown.read_text()
    assert "No verdict yet" in md and "No benchmark results found" in md
    text = "\n".join(res.missing)
    assert "alpacakit eval pairwise" in text and "alpacakit eval bench" in text and "alpacakit generate" in text
    assert "pairwise-broken.json: unreadable" in text
    assert (res.out_dir / "lengths.png").exists() and not (res.out_dir / "winrate.png").exists()


def test_a_comparison_made_the_other_way_round_is_read_as_its_complement(tmp_path, fake_openai, judge_cfg):
    run = tmp_path / "run"
    student, teacher = _outputs(run, "student", 20), _outputs(run, "teacher", 20)
    _judge(judge_cfg, teacher, student, fake_openai, student_wins=3)  # teacher as the model, student as baseline
    res = build_report(run)
    data = json.loads(res.data.read_text())
    assert data["style"]["student"]["win_rate"] == pytest.approx(100 * 3 / N)


@pytest.mark.slow
def test_the_report_verb_runs_as_a_command(full_run):
    _bench(full_run, "student", 3)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "alpacakit.cli.main", "report", str(full_run)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "gained style but not knowledge" in proc.stdout
    assert (full_run / "report" / "report.html").is_file()


def test_a_judge_that_always_picks_the_first_answer_is_flagged():
    from alpacakit.evaluate.report import judge_warnings

    row = {"judge": "qwen", "file": "pairwise-student-vs-teacher.json", "n_total": 16}
    assert judge_warnings([dict(row, first_shown_won=1.0)])[0].startswith(
        "The judge qwen chose the answer shown first in 100%"
    )
    assert "second in 95%" in judge_warnings([dict(row, first_shown_won=0.05)])[0]
    assert judge_warnings([dict(row, first_shown_won=0.6)]) == []
    assert judge_warnings([dict(row, first_shown_won=1.0, n_total=3)]) == []  # too few to tell


def test_comparisons_without_a_single_verdict_are_reported_not_crashed_on(tmp_path, fake_openai, judge_cfg):
    """A small judge (SmolLM2 in `quickstart --tiny`) may never write a verdict the parser reads:
    the comparison exists but has no win rate, so there is no win-rate plot to show."""
    run = tmp_path / "run"
    student, teacher = _outputs(run, "student", 20), _outputs(run, "teacher", 20)
    fake_openai.responder = lambda body: "Both answers have their merits and I cannot decide."
    judge_pairwise(student, teacher, judge_cfg, show_progress=False)
    res = build_report(run)
    assert not (res.out_dir / "winrate.png").exists()
    assert "student" in res.markdown.read_text() and "win rates" not in res.html.read_text()
    assert res.verdict["kind"] == "incomplete"

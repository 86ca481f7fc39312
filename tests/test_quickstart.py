"""`alpacakit quickstart`: every stage runs for real (SmolLM2 teaches and judges, a tiny base
built from a config is the student), writes an ordinary run folder, and a rerun skips finished
stages without asking any model twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from alpacakit.errors import ConfigError
from alpacakit.quickstart import load_profile, run_quickstart
from alpacakit.quickstart.pipeline import STAGES, QuickstartSettings, before_after

pytest.importorskip("torch")
pytest.importorskip("llama_cpp")


def _lines(path: Path) -> int:
    return sum(1 for _ in path.open(encoding="utf-8"))


# The `--set` overrides of the tiny profile that `finished_run` is built with, and that its rerun
# repeats: a few examples, two training steps, short answers, small evaluations.
FINISHED_RUN_OVERRIDES = [
    "generate.num=4",
    "eval.limit=2",
    "eval.system.max_tokens=24",
    "quickstart.bench_limit=1",
    "export.quant=f16",
    "quickstart.before_after=2",
    "train.max_steps=2",
    "train.max_length=512",  # SmolLM2's longer tasks fit the byte-level tiny tokenizer
    "quickstart.follow_limit=6",
    "quickstart.follow_teacher_limit=2",
    "quickstart.follow_max_tokens=24",
    "quickstart.heldout=1",
    "quickstart.judge_follow=2",
]


def _finished_run_profile(base: Path) -> QuickstartSettings:
    """The tiny profile with FINISHED_RUN_OVERRIDES, training the tiny base at `base`."""
    return load_profile("tiny", [f"train.base={base}", *FINISHED_RUN_OVERRIDES])


def test_profiles_are_data_and_take_overrides():
    default, tiny = load_profile(), load_profile("tiny")
    assert default.teacher == "qwen2.5-coder-1.5b-instruct" and default.student_base == "gemma-3-270m"
    assert default.config.generate.num == 100 and default.config.export.quant == "auto"
    assert default.config.eval.judge.name == "alpacakit_brief" and default.config.eval.judge.order == "both"
    assert default.quickstart.heldout > 0 and default.quickstart.follow_limit >= 150
    assert tiny.teacher == "smollm2-135m-instruct" and tiny.config.generate.num < default.config.generate.num
    p = load_profile("tiny", ["generate.num=3", "train.max_steps=2"])
    assert p.config.generate.num == 3 and p.config.train.max_steps == 2 and p.config.train.epochs == 1  # tiny's kept
    with pytest.raises(ConfigError, match="no quickstart profile 'huge'"):
        load_profile("huge")
    with pytest.raises(ConfigError, match="num"):
        load_profile("default", ["generate.num=0"])
    with pytest.raises(ConfigError, match="nope"):
        load_profile("default", ["quickstart.nope=1"])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    from alpacakit.train.tiny import make_tiny_base

    root = tmp_path_factory.mktemp("qs")
    # The held-out teacher answer is scored whole by base and student. SmolLM2 writes up to
    # teacher.max_tokens=384 of its tokens (~1,500 characters, and its text differs from machine to
    # machine), and the byte-level tiny tokenizer needs up to a token per character: a 4,096-token window
    # holds any such answer, where the default 512 failed CI once ("every answer is longer").
    base = make_tiny_base(root / "tiny-base", positions=4096)
    profile = _finished_run_profile(base)
    said: list[str] = []
    log = run_quickstart(root / "run", profile, say=said.append, progress=False)
    return root / "run", log, said


def test_every_stage_writes_the_files_of_its_verb(finished_run):
    run, log, said = finished_run
    assert list(log["stages"]) == list(STAGES)
    assert all(s["seconds"] >= 0 and s["summary"] and s["runs"] == 1 for s in log["stages"].values())
    assert _lines(run / "data" / "examples.jsonl") >= 3
    assert (run / "data" / "train.jsonl").is_file() and (run / "eval" / "contamination.json").is_file()
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["steps"] == 2 and manifest["data"][0]["path"].endswith("train.jsonl")
    assert (run / "model" / "MODEL_CARD.md").is_file()
    gguf = run / "export" / "model-f16.gguf"
    assert gguf.is_file() and (run / "export" / "model-f16.gguf.json").is_file()
    card = (run / "export" / "MODEL_CARD.md").read_text()
    assert "model-f16.gguf" in card and "smollm2-135m-instruct" in card and "commercially" in card
    for label in ("base", "student", "teacher"):
        bench = json.loads((run / "eval" / f"bench-{label}.json").read_text())
        assert bench["system"] == label and bench["tasks"]
        follow = json.loads((run / "eval" / f"follow-{label}.json").read_text())
        assert follow["n"] == (2 if label == "teacher" else 6) and set(follow["endings"]) <= {
            "eos",
            "stop_string",
            "length",
        }
    for label in ("base", "student"):
        outputs = json.loads((run / "eval" / f"outputs-{label}.json").read_text())
        assert len(outputs) == 2 and {o["generator"] for o in outputs} == {label}
        lik = json.loads((run / "eval" / f"likelihood-{label}.json").read_text())
        assert lik["n"] == 1 and lik["mean_nll"] > 0
    assert _lines(run / "data" / "heldout.jsonl") == 1
    pairwise = json.loads((run / "eval" / "pairwise-student-vs-base.json").read_text())
    assert pairwise["judge"]["order"] == "both" and pairwise["model"] == "student" and pairwise["baseline"] == "base"
    report = (run / "report" / "report.md").read_text()
    assert "student" in report and "every metric, paired" in report
    assert log["verdict"]["kind"] in {"follows", "regressed", "none"} and "Decided by" in log["verdict"]["text"]
    assert log["verdict"]["text"] and isinstance(log["verdict"]["warnings"], list)
    assert any("[10/10] report" in line for line in said)


def test_the_student_is_asked_with_its_training_prompt(finished_run):
    run, _, _ = finished_run
    work = json.loads((run / "eval" / "outputs-student.work" / "manifest.json").read_text())
    assert "prompt_format.json beside the GGUF" in json.dumps(work)


def test_a_rerun_skips_finished_stages_and_pays_for_nothing_twice(finished_run):
    run, _, _ = finished_run
    journals = sorted(p for p in run.rglob("*.jsonl") if p.name in ("responses.jsonl", "judgments.jsonl"))
    assert journals
    before = {p: _lines(p) for p in journals}
    finished = [run / "model" / "manifest.json", run / "export" / "model-f16.gguf"]
    stamps = [p.stat().st_mtime_ns for p in finished]
    profile = _finished_run_profile(run.parent / "tiny-base")
    log = run_quickstart(
        run,
        profile,
        say=lambda _m: None,
        progress=False,
        stages=["generate", "train", "export", "answers", "follow", "judge"],
    )
    assert {p: _lines(p) for p in journals} == before
    assert [p.stat().st_mtime_ns for p in finished] == stamps  # not trained or exported again
    assert log["stages"]["train"]["runs"] == 2 and log["stages"]["export"]["runs"] == 2
    assert log["stages"]["bench"]["runs"] == 1  # not asked for this time


def test_an_auto_export_that_misses_the_agreement_bar_is_written_f16(finished_run, tmp_path):
    """A file that does not answer like the trained student is never evaluated or handed over."""
    import shutil

    from alpacakit.errors import AlpacakitError
    from alpacakit.export.gguf import export_gguf
    from alpacakit.quickstart.pipeline import Run, stage_export

    run, _, _ = finished_run
    # a bar between what q8_0 (auto's choice for this model) and f16 reach on it
    q8, f16 = (
        export_gguf(run / "model", tmp_path / f"probe-{q}.gguf", q, verify=True).verification["top1_agreement"]
        for q in ("q8_0", "f16")
    )
    if not q8 < f16:
        pytest.skip(f"q8_0 agrees as well as f16 on this tiny model ({q8:.4f}): no bar between them")
    bar = f"min_agreement={(q8 + f16) / 2}"
    shutil.copytree(run / "model", tmp_path / "r" / "model")
    said: list[str] = []
    r = Run(tmp_path / "r", load_profile("tiny", ["export.quant=auto", f"quickstart.{bar}"]), said.append)
    summary = stage_export(r)
    side = json.loads(r.gguf.with_name("model.gguf.json").read_text())
    assert r.gguf.name == "model.gguf" and side["quant"] == "f16" and side["verification"]["top1_agreement"] == f16
    assert "written f16 instead" in summary and any("does not reproduce" in m for m in said)
    # a quantization named in the profile is not swapped: the run stops with the figures
    r2 = Run(tmp_path / "r2", load_profile("tiny", ["export.quant=q8_0", f"quickstart.{bar}"]), said.append, False)
    shutil.copytree(run / "model", r2.dir.model)
    with pytest.raises(AlpacakitError, match="does not reproduce the trained model"):
        stage_export(r2)


def test_before_after_pairs_base_and_student_answers(finished_run):
    run, _, _ = finished_run
    rows = before_after(run, 5)
    assert len(rows) == 2 and all(r["instruction"] and "before" in r and "after" in r for r in rows)


def test_cli_shows_the_profile_and_rejects_unknown_stages(tmp_path):
    cmd = [sys.executable, "-m", "alpacakit.cli.main", "quickstart"]
    shown = subprocess.run([*cmd, "--tiny", "--show", "--set", "generate.num=7"], capture_output=True, text=True)
    assert shown.returncode == 0 and "num: 7" in shown.stdout and "smollm2-135m-instruct" in shown.stdout
    bad = subprocess.run(
        [*cmd, "--stages", "generate,dance", "-o", str(tmp_path / "r")], capture_output=True, text=True
    )
    assert bad.returncode == 2 and "dance" in bad.stderr and "stages:" in bad.stderr
    assert not (tmp_path / "r" / "data").exists()


def test_held_out_answers_too_long_for_the_window_skip_the_likelihood_stage(tmp_path, monkeypatch):
    """A base with a small window cannot score any held-out answer whole: the stage says so and
    the run goes on (the report then shows no likelihood row), instead of stopping the run."""
    from alpacakit.quickstart.pipeline import Run, stage_likelihood
    from alpacakit.train.tiny import make_tiny_base

    base = str(make_tiny_base(tmp_path / "tiny-base", positions=256))
    r = Run(tmp_path / "r", load_profile("tiny"), print, False)
    monkeypatch.setattr(Run, "pair", lambda self: {"base": base, "student": base})
    r.dir.data.mkdir(parents=True)
    answer = {"instruction": "Describe the sea.", "input": "", "output": "The sea is wide and deep. " * 40}
    r.dir.heldout_file.write_text(json.dumps(answer) + "\n")
    summary = stage_likelihood(r)
    assert summary.startswith("skipped:") and "longer than the context window" in summary
    assert not r.dir.likelihood("student").exists()

    r.dir.heldout_file.write_text(json.dumps({**answer, "output": "Wide."}) + "\n")
    assert stage_likelihood(r).startswith("NLL per token of held-out teacher answers: base ")

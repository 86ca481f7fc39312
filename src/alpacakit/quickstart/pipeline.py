"""The quickstart's stages, in order, each one a call to a stage's library function.

Why a pipeline module and not a shell script: each stage decides for itself whether its
output is already complete (and is then skipped), timings are recorded per stage in
`RUN/quickstart.json`, and the last stage prints what a newcomer wants to see: did the student
learn the teacher's style, did it learn anything, and how do I talk to it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from alpacakit.config import AlpacakitConfig, Section, build, deep_merge, load_yaml, parse_overrides
from alpacakit.errors import ConfigError
from alpacakit.rundir import RunDir

PROFILES = Path(__file__).with_name("profiles.yaml")
STAGES = ("generate", "clean", "train", "export", "answers", "follow", "likelihood", "judge", "bench", "report")


class QuickstartOptions(Section):
    """The `quickstart:` section of a profile: what only the quickstart has (the rest of a
    profile is alpacakit.yaml's own sections)."""

    description: str = ""
    judge_follow: int = Field(
        8,
        ge=0,
        description="Verifiable instructions where exactly one of student and base "
        "passed, also judged: how often the judge agrees with the program's checks.",
    )
    heldout: int = Field(
        16,
        ge=0,
        description="Teacher examples held out of training; their likelihood under "
        "base and student measures how much closer to the teacher the student writes.",
    )
    follow_limit: int | None = Field(
        None, ge=1, description="Verifiable instructions answered by base and student (None: all of them)."
    )
    follow_teacher_limit: int = Field(
        40,
        ge=0,
        description="Verifiable instructions answered by the teacher "
        "(a reference row: the teacher decodes ~10x slower).",
    )
    follow_max_tokens: int = Field(96, ge=16, description="Longest answer to a verifiable instruction.")
    bench_limit: int = Field(12, ge=1, description="Items per capability task.")
    min_agreement: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Top-1 and next-token agreement with the trained "
        "model the exported file must reach (else the student is written f16).",
    )
    before_after: int = Field(5, ge=0, description="Before/after answers shown at the end.")


@dataclass(frozen=True)
class QuickstartSettings:
    """A profile resolved: the whole `AlpacakitConfig` every stage reads its section from, the
    quickstart's own options, and `layers`, the partial alpacakit.yaml they were built from."""

    name: str
    config: AlpacakitConfig
    quickstart: QuickstartOptions
    layers: dict[str, Any]

    @property
    def teacher(self) -> str:
        return self.config.teacher.model

    @property
    def student_base(self) -> str:
        return self.config.train.base

    def dump(self) -> dict[str, Any]:
        """What `--show` prints and the run log records: the layers, with every quickstart option."""
        return {**self.layers, "quickstart": self.quickstart.model_dump(mode="json")}


def load_profile(
    name: str = "default", overrides: list[str] | None = None, config: str | Path | None = None
) -> QuickstartSettings:
    """Defaults <- profile `name` <- the YAML file `config` <- `--set` overrides (dotted
    alpacakit.yaml keys, `quickstart.KEY` for the quickstart's own)."""
    profiles = load_yaml(PROFILES)
    if name not in profiles:
        raise ConfigError(f"no quickstart profile {name!r}", hint=f"use one of {', '.join(profiles)}")
    data = deep_merge(profiles[name], load_yaml(config) if config else {})
    data = deep_merge(data, parse_overrides(overrides))
    where = f"quickstart profile {name}" + (f" + {config}" if config else "")
    options = build(QuickstartOptions, dict(data.get("quickstart") or {}), where)
    cfg = build(AlpacakitConfig, {k: v for k, v in data.items() if k != "quickstart"}, where)
    return QuickstartSettings(name, cfg, options, data)


# The old name: a profile is now the settings it resolves to.
QuickstartProfile = QuickstartSettings


@dataclass
class Run:
    """One quickstart run: its folder (`RunDir`), its settings and how it talks."""

    dir: RunDir
    settings: QuickstartSettings
    say: Callable[[str], None]
    progress: bool = True
    log: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.dir, RunDir):
            self.dir = RunDir(self.dir)

    @property
    def q(self) -> QuickstartOptions:
        return self.settings.quickstart

    @property
    def config(self) -> AlpacakitConfig:
        return self.settings.config

    @property
    def gguf(self) -> Path:
        return self.dir.gguf(self.config.export.quant)

    def systems(self) -> dict[str, str]:
        """The three systems compared: the base as shipped, our exported student, the teacher."""
        return {"base": self.settings.student_base, "student": str(self.gguf), "teacher": self.settings.teacher}

    def pair(self) -> dict[str, str]:
        """Student and base: the comparison every headline figure is about."""
        return {k: v for k, v in self.systems().items() if k != "teacher"}


# --------------------------------------------------------------------------- stages


def stage_generate(run: Run) -> str:
    from alpacakit.generate import stage

    return _finished(stage.run(run.config, run.dir, show_progress=run.progress), "generation")


def stage_clean(run: Run) -> str:
    """The held-out eval instructions must not be in the training data (ROUGE-L F > 0.7)."""
    from alpacakit.curate import stage

    return stage.run(run.config.curate, run.dir, heldout=run.q.heldout).summary


def hold_out(train_file: Path, heldout_file: Path, n: int, seed: int = 0) -> int:
    """See `alpacakit.curate.stage.hold_out` (kept here for callers of the old place)."""
    from alpacakit.curate.stage import hold_out as split

    return split(train_file, heldout_file, n, seed)


def stage_train(run: Run) -> str | None:
    from alpacakit.train import stage

    res = stage.run(run.config.train, run.dir)
    return None if res.status == "skipped" else res.summary


def stage_export(run: Run) -> str | None:
    from alpacakit.export import stage

    res = stage.run(
        run.config.export,
        run.dir,
        min_agreement=run.q.min_agreement,
        progress=run.say if run.progress else None,
    )
    return None if res.status == "skipped" else res.summary


def stage_answers(run: Run) -> str:
    from alpacakit.evaluate import stage

    lines = []
    for label, model in run.pair().items():
        res = stage.answers(run.config, run.dir, label, model, show_progress=run.progress)
        lines.append(f"{label}: " + _finished(res, f"answers of {label}"))
    return "; ".join(lines)


def stage_follow(run: Run) -> str:
    """Base, student (and, on a few items, the teacher) answer the verifiable instructions."""
    from alpacakit.evaluate.follow.run import run_follow

    lines = []
    for label, model in run.systems().items():
        limit = run.q.follow_teacher_limit if label == "teacher" else run.q.follow_limit
        if limit == 0:
            continue
        config = None
        where = _endpoint_of(run, model)
        if where:  # an API teacher answers at the endpoint it generated with
            config = run.config.model_copy(deep=True)
            config.eval.eval_set = "follow"
            config.eval.limit = limit
            config.eval.system = config.eval.system.model_copy(
                update={"model": model, "max_tokens": run.q.follow_max_tokens, "temperature": 0.0, **where}
            )
        res = run_follow(
            model,
            run.dir.follow(label),
            system=label,
            limit=limit,
            max_tokens=run.q.follow_max_tokens,
            show_progress=run.progress,
            config=config,
        )
        lines.append(f"{label} {res['accuracy']:.1%} of {res['n']} (ended by itself {res['clean_stop_rate']:.0%})")
    return "verifiable instructions passed: " + ", ".join(lines)


def stage_likelihood(run: Run) -> str:
    """Mean per-token NLL of the held-out teacher answers under base and student."""
    from alpacakit.evaluate.likelihood import NothingFits, score_likelihood

    held = run.dir.heldout_file
    if not held.is_file() or held.stat().st_size == 0:
        return "no held-out teacher examples (heldout: 0): skipped"
    lines = []
    for label, model in run.pair().items():
        try:
            res = score_likelihood(model, held, run.dir.likelihood(label), system=label)
        except NothingFits as e:  # (a small-window base: the run goes on, and says why this is missing)
            return f"skipped: {e.message}"
        lines.append(f"{label} {res['mean_nll']:.3f}")
    return "NLL per token of held-out teacher answers: " + ", ".join(lines)


def stage_judge(run: Run) -> str:
    """Student against base, directly, in both orders; then a few verifiable instructions where
    the program's checks tell them apart, to see how far the judge agrees with the checks."""
    from alpacakit.evaluate import stage
    from alpacakit.evaluate.evidence import FOLLOW_JUDGED

    res = stage.pairwise(
        run.config, run.dir, "student", "base", limit=run.config.eval.limit, show_progress=run.progress
    )
    lines = ["open instructions: " + _finished(res, "judging student vs base")]
    pair = follow_discordant(run, run.q.judge_follow)
    if pair is not None:
        res = stage.pairwise(
            run.config,
            run.dir,
            "student",
            "base",
            files=(pair["student"], pair["base"]),
            name=FOLLOW_JUDGED,
            show_progress=run.progress,
        )
        lines.append("verifiable instructions: " + _finished(res, "judging verifiable instructions"))
    return "; ".join(lines)


def follow_discordant(run: Run, n: int) -> dict[str, Path] | None:
    """Outputs files holding the first `n` verifiable instructions that exactly one of student
    and base passed (in eval/follow/judge/), or None when there are none."""
    from alpacakit.evaluate.follow.run import outputs_path
    from alpacakit.io import atomic_write_json

    if n <= 0:
        return None
    passed, answers = {}, {}
    for label in ("student", "base"):
        path = run.dir.follow(label)
        if not path.is_file():
            return None
        passed[label] = {i["id"]: i["pass"] for i in json.loads(path.read_text(encoding="utf-8"))["items"]}
        answers[label] = json.loads(outputs_path(path).read_text(encoding="utf-8"))
    ids = [i for i in passed["student"] if i in passed["base"] and passed["student"][i] != passed["base"][i]][:n]
    if not ids:
        return None
    judged = RunDir(run.dir.eval / "follow" / "judge")  # a run folder's eval/ layout, one level down
    out = {}
    for label in ("student", "base"):
        by_id = {r["id"]: r for r in answers[label]}
        out[label] = judged.root / judged.outputs(label).name
        atomic_write_json(out[label], [by_id[i] for i in ids])
    return out


def _endpoint_of(run: Run, model: str) -> dict[str, Any]:
    """An `openai:` teacher's base URL and key variable, from the teacher section (else {})."""
    if not model.startswith("openai:"):
        return {}
    teacher = run.config.teacher
    return {"base_url": teacher.base_url, "api_key_env": teacher.api_key_env}


def stage_bench(run: Run) -> str:
    from alpacakit.evaluate.bench.runner import run_bench

    lines = []
    for label, model in run.systems().items():
        where = _endpoint_of(run, model)  # an API teacher: short-answer tasks, at the endpoint it generated with
        res = run_bench(model, limit=run.q.bench_limit, out=run.dir.bench(label), system=label, **where)
        acc = res["overall"]["accuracy"]
        lines.append(f"{label} {acc:.1%}" if acc is not None else f"{label} n/a")
    return "accuracy (macro over tasks): " + ", ".join(lines)


def stage_report(run: Run) -> str:
    from alpacakit.evaluate.report import build_report

    res = build_report(run.dir.root, run.config)
    run.log["verdict"] = res.verdict
    return f"{res.markdown} and {res.html}"


STAGE_FUNCS: dict[str, Callable[[Run], str | None]] = {
    "generate": stage_generate,
    "clean": stage_clean,
    "train": stage_train,
    "export": stage_export,
    "answers": stage_answers,
    "follow": stage_follow,
    "likelihood": stage_likelihood,
    "judge": stage_judge,
    "bench": stage_bench,
    "report": stage_report,
}


def _finished(result: Any, what: str) -> str:
    """The summary of a resumable job that ran to the end; an error (rerun to continue) otherwise."""
    if result.status != "complete":
        raise ConfigError(f"{what} stopped: {result.status}", hint="rerun the same command to continue")
    return result.summary if isinstance(result.summary, str) else result.summary()


# --------------------------------------------------------------------------- the run


def run_quickstart(
    root: str | Path | RunDir,
    settings: QuickstartSettings,
    *,
    say: Callable[[str], None] = print,
    stages: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or continue) every stage into `root`; returns the run log also written to
    `root/quickstart.json` (per-stage seconds and summaries, the report's verdict)."""
    from alpacakit.io import atomic_write_json

    chosen = list(stages or STAGES)
    unknown = [s for s in chosen if s not in STAGE_FUNCS]
    if unknown:
        raise ConfigError(f"unknown quickstart stage(s): {', '.join(unknown)}", hint=f"stages: {', '.join(STAGES)}")
    rd = root if isinstance(root, RunDir) else RunDir(root)
    rd.root.mkdir(parents=True, exist_ok=True)
    log_path = rd.quickstart_log
    previous: dict[str, Any] = {}
    if log_path.is_file():
        try:
            previous = json.loads(log_path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    run = Run(rd, settings, say, progress)
    run.log = {
        "profile": settings.dump(),
        "stages": dict(previous.get("stages") or {}),
        "started": previous.get("started") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    total0 = time.perf_counter()
    for i, name in enumerate(chosen, 1):
        say(f"\n== [{i}/{len(chosen)}] {name} ==")
        t0 = time.perf_counter()
        summary = STAGE_FUNCS[name](run)
        seconds = round(time.perf_counter() - t0, 1)
        # Seconds add up over runs: a stage resumed after a crash reports all the time it took.
        entry = dict(run.log["stages"].get(name) or {})
        entry["seconds"] = round(entry.get("seconds", 0.0) + seconds, 1)
        entry["runs"] = entry.get("runs", 0) + 1
        if summary is None:
            summary = "already complete: skipped"
        else:
            entry["summary"] = summary
        run.log["stages"][name] = entry
        say(f"   {summary} ({seconds:.0f} s)")
        atomic_write_json(log_path, run.log)
    run.log["seconds_this_run"] = round(time.perf_counter() - total0, 1)
    run.log["seconds_all_stages"] = round(sum(s.get("seconds", 0.0) for s in run.log["stages"].values()), 1)
    atomic_write_json(log_path, run.log)
    return run.log


def before_after(root: str | Path | RunDir, n: int) -> list[dict[str, str]]:
    """The first `n` held-out instructions with the base model's and the student's answers."""
    rd = root if isinstance(root, RunDir) else RunDir(root)
    try:
        base = json.loads(rd.outputs("base").read_text(encoding="utf-8"))
        student = json.loads(rd.outputs("student").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    by_instruction = {r["instruction"]: r["output"] for r in student}
    rows = [
        {"instruction": r["instruction"], "before": r["output"], "after": by_instruction[r["instruction"]]}
        for r in base
        if r["instruction"] in by_instruction
    ]
    return rows[:n]


def write_before_after(root: str | Path | RunDir, rows: list[dict[str, str]]) -> Path:
    """RUN/report/before_after.md: the same instructions, answered before and after training."""
    from alpacakit.io import atomic_write_text

    parts = [
        "# Before and after fine-tuning",
        "",
        "The same held-out instructions (never in the training data), answered by the base model "
        "(before, the embedded q4_k_m GGUF) and the fine-tuned student (after, its exported GGUF).",
        "",
    ]
    for i, r in enumerate(rows, 1):
        parts += [
            f"## {i}. {r['instruction']}",
            "",
            "**Before (base):**",
            "",
            _quote(r["before"]),
            "",
            "**After (student):**",
            "",
            _quote(r["after"]),
            "",
        ]
    path = (root if isinstance(root, RunDir) else RunDir(root)).report / "before_after.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty answer)").splitlines())

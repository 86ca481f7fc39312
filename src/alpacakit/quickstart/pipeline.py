"""The quickstart's stages, in order, each one a call to a stage's library function.

Why a pipeline module and not a shell script: each stage decides for itself whether its
output is already complete (and is then skipped), timings are recorded per stage in
`RUN/quickstart.json`, and the last stage prints what a newcomer wants to see: did the student
learn the teacher's style, did it learn anything, and how do I talk to it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from alpacakit.config import Section, build, deep_merge, load_yaml, parse_overrides
from alpacakit.errors import ConfigError

PROFILES = Path(__file__).with_name("profiles.yaml")
STAGES = ("generate", "clean", "train", "export", "answers", "follow", "likelihood", "judge", "bench", "report")


class QuickstartProfile(Section):
    """What the quickstart runs (see profiles.yaml)."""

    description: str = ""
    teacher: str = Field(
        "qwen2.5-coder-1.5b-instruct", description="Teacher that writes the data (and answers as 'teacher')."
    )
    num: int = Field(100, ge=1, description="Examples to keep after curation.")
    student_base: str = Field("gemma-3-270m", description="Base model to fine-tune.")
    train_preset: str = Field("cpu-quick", description="`alpacakit train --preset`.")
    train_set: dict[str, Any] = Field(default_factory=dict, description="Overrides of the preset (train keys).")
    generate_set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the generation settings (dotted alpacakit.yaml keys, e.g. teacher.max_tokens).",
    )
    judge: str = Field("alpacakit_verdict", description="Judge folder (`alpacakit eval judges`).")
    judge_model: str = Field("qwen2.5-coder-1.5b-instruct", description="Model that judges answers pairwise.")
    judge_order: str = Field("both", description="both | random (see `alpacakit eval pairwise --help`).")
    judge_follow: int = Field(
        8,
        ge=0,
        description="Verifiable instructions where exactly one of student and base "
        "passed, also judged: how often the judge agrees with the program's checks.",
    )
    eval_limit: int = Field(24, ge=1, description="Held-out instructions answered and judged.")
    eval_max_tokens: int = Field(256, ge=16, description="Longest answer per instruction.")
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
    quant: str = Field(
        "auto", description="GGUF quantization of the exported student (`alpacakit export gguf --quant`)."
    )
    min_agreement: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="Top-1 and next-token agreement with the trained "
        "model the exported file must reach (else the student is written f16).",
    )
    before_after: int = Field(5, ge=0, description="Before/after answers shown at the end.")


def load_profile(name: str = "default", overrides: list[str] | None = None) -> QuickstartProfile:
    profiles = load_yaml(PROFILES)
    if name not in profiles:
        raise ConfigError(f"no quickstart profile {name!r}", hint=f"use one of {', '.join(profiles)}")
    data = deep_merge(profiles[name], parse_overrides(overrides))
    return build(QuickstartProfile, data, f"quickstart profile {name}")


@dataclass
class Run:
    """Paths of a run folder, the same layout every verb uses (runs/NAME/{data,model,eval,export,report})."""

    root: Path
    profile: QuickstartProfile
    say: Callable[[str], None]
    progress: bool = True
    log: dict[str, Any] = field(default_factory=dict)

    data = property(lambda self: self.root / "data")
    model = property(lambda self: self.root / "model")
    eval = property(lambda self: self.root / "eval")
    export_dir = property(lambda self: self.root / "export")

    @property
    def train_file(self) -> Path:
        return self.data / "train.jsonl"

    @property
    def heldout_file(self) -> Path:
        return self.data / "heldout.jsonl"

    @property
    def gguf(self) -> Path:
        """The exported student: `model.gguf` for `auto` (whatever it chose: its sidecar says),
        `model-QUANT.gguf` for a quantization named in the profile."""
        q = self.profile.quant
        return self.export_dir / ("model.gguf" if q == "auto" else f"model-{q}.gguf")

    def outputs(self, label: str) -> Path:
        return self.eval / f"outputs-{label}.json"

    def systems(self) -> dict[str, str]:
        """The three systems compared: the base as shipped, our exported student, the teacher."""
        return {"base": self.profile.student_base, "student": str(self.gguf), "teacher": self.profile.teacher}

    def pair(self) -> dict[str, str]:
        """Student and base: the comparison every headline figure is about."""
        return {k: v for k, v in self.systems().items() if k != "teacher"}


# --------------------------------------------------------------------------- stages


def stage_generate(run: Run) -> str:
    from alpacakit.config import load_config
    from alpacakit.generate.runner import generate

    sets = [f"{k}={json.dumps(v)}" for k, v in run.profile.generate_set.items()]
    cfg = load_config(None, sets, {"teacher": {"model": run.profile.teacher}, "generate": {"num": run.profile.num}})
    return _finished(generate(cfg, run.data, show_progress=run.progress), "generation")


def stage_clean(run: Run) -> str:
    """The held-out eval instructions must not be in the training data (ROUGE-L F > 0.7)."""
    from alpacakit.evaluate.contamination import check_contamination
    from alpacakit.io import atomic_write_json

    rep = check_contamination(run.data / "examples.jsonl", "alpacakit", write_clean=run.train_file)
    run.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run.eval / "contamination.json", rep)
    held = hold_out(run.train_file, run.heldout_file, run.profile.heldout)
    return (
        f"{rep['n_contaminated_train']} of {rep['n_train']} examples copied an eval instruction and were "
        f"dropped; {held} held out for the likelihood check ({run.heldout_file}); training on "
        f"{rep['clean']['kept'] - held} ({run.train_file})"
    )


def hold_out(train_file: Path, heldout_file: Path, n: int, seed: int = 0) -> int:
    """Move a seeded pick of `n` examples from `train_file` to `heldout_file` (both JSONL); the
    same input gives the same split, so a rerun of the stage changes nothing."""
    import random

    from alpacakit.io import atomic_write_text, iter_jsonl

    records = [r for _, r in iter_jsonl(train_file)]
    n = min(n, len(records) // 4)  # never more than a quarter of the data
    picked = set(random.Random(seed).sample(range(len(records)), n)) if n else set()

    def dump(rows: list[dict]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    atomic_write_text(heldout_file, dump([r for i, r in enumerate(records) if i in picked]))
    atomic_write_text(train_file, dump([r for i, r in enumerate(records) if i not in picked]))
    return n


def stage_train(run: Run) -> str | None:
    from alpacakit.train.config import load_train_config
    from alpacakit.train.outputs import partial_dir
    from alpacakit.train.recipe import train

    if _complete_model(run.model):
        return None
    sets = [f"{k}={json.dumps(v)}" for k, v in run.profile.train_set.items()]
    cfg = load_train_config(
        None,
        sets,
        {"train": {"preset": run.profile.train_preset, "data": str(run.train_file), "base": run.profile.student_base}},
    ).train
    resume = partial_dir(run.model).exists()
    res = train(cfg, output_dir=run.model, resume=resume)
    m = res.manifest
    return f"{m.get('steps')} steps, final loss {m.get('final_train_loss')}, {m['durations_s']['total']:.0f} s"


def stage_export(run: Run) -> str | None:
    from alpacakit.export.gguf import export_gguf

    if run.gguf.is_file() and run.gguf.with_name(run.gguf.name + ".json").is_file():
        return None
    # Verified against the trained model: what is evaluated, served and handed over must answer
    # like the student that was trained. `auto` writes the most compact file that does (f16 when
    # the compact one misses the bar); a quantization named in the profile that misses it stops
    # the run with the figures.
    res = export_gguf(
        run.model,
        run.gguf,
        run.profile.quant,
        verify=True,
        min_agreement=run.profile.min_agreement,
        progress=run.say if run.progress else None,
    )
    fell_back = next((f" ({n})" for n in res.notes if n.startswith("auto: ")), "")
    v = res.verification or {}
    # The trained prompt, beside the GGUF: eval asks the student exactly as it was trained.
    shutil.copyfile(run.model / "prompt_format.json", run.export_dir / "prompt_format.json")
    return (
        f"{res.path} ({res.size_bytes / 1e6:.0f} MB, {res.quant}{fell_back}); agrees with the trained model on "
        f"{v.get('top1_agreement', 0):.1%} of next-token predictions ({v.get('next_token_agreement', 0):.1%} "
        f"at the answer's first token); model card {res.model_card}"
    )


def stage_answers(run: Run) -> str:
    from alpacakit.config import load_config
    from alpacakit.evaluate.outputs import generate_outputs

    lines = []
    for label, model in run.pair().items():
        out = run.outputs(label)
        cfg = load_config(
            None,
            None,
            {
                "eval": {
                    "limit": run.profile.eval_limit,
                    "system": {"model": model, "max_tokens": run.profile.eval_max_tokens},
                }
            },
        )
        lines.append(
            f"{label}: "
            + _finished(generate_outputs(cfg, out, name=label, show_progress=run.progress), f"answers of {label}")
        )
    return "; ".join(lines)


def stage_follow(run: Run) -> str:
    """Base, student (and, on a few items, the teacher) answer the verifiable instructions."""
    from alpacakit.evaluate.follow.run import run_follow

    lines = []
    for label, model in run.systems().items():
        limit = run.profile.follow_teacher_limit if label == "teacher" else run.profile.follow_limit
        if limit == 0:
            continue
        config = None
        where = _endpoint_of(run, model)
        if where:  # an API teacher answers at the endpoint it generated with
            from alpacakit.config import load_config

            config = load_config(
                None,
                None,
                {
                    "eval": {
                        "eval_set": "follow",
                        "limit": limit,
                        "system": {
                            "model": model,
                            "max_tokens": run.profile.follow_max_tokens,
                            "temperature": 0.0,
                            **where,
                        },
                    }
                },
            )
        res = run_follow(
            model,
            run.eval / f"follow-{label}.json",
            system=label,
            limit=limit,
            max_tokens=run.profile.follow_max_tokens,
            show_progress=run.progress,
            config=config,
        )
        lines.append(f"{label} {res['accuracy']:.1%} of {res['n']} (ended by itself {res['clean_stop_rate']:.0%})")
    return "verifiable instructions passed: " + ", ".join(lines)


def stage_likelihood(run: Run) -> str:
    """Mean per-token NLL of the held-out teacher answers under base and student."""
    from alpacakit.evaluate.likelihood import score_likelihood

    if not run.heldout_file.is_file() or run.heldout_file.stat().st_size == 0:
        return "no held-out teacher examples (heldout: 0): skipped"
    lines = []
    for label, model in run.pair().items():
        res = score_likelihood(model, run.heldout_file, run.eval / f"likelihood-{label}.json", system=label)
        lines.append(f"{label} {res['mean_nll']:.3f}")
    return "NLL per token of held-out teacher answers: " + ", ".join(lines)


def stage_judge(run: Run) -> str:
    """Student against base, directly, in both orders; then a few verifiable instructions where
    the program's checks tell them apart, to see how far the judge agrees with the checks."""
    from alpacakit.config import load_config
    from alpacakit.evaluate.pairwise import judge_pairwise

    cfg = load_config(
        None,
        None,
        {
            "eval": {
                "judge": {"name": run.profile.judge, "model": run.profile.judge_model, "order": run.profile.judge_order}
            }
        },
    )
    res = judge_pairwise(
        run.outputs("student"),
        run.outputs("base"),
        cfg,
        show_progress=run.progress,
        limit=run.profile.eval_limit,
        out=run.eval / "pairwise-student-vs-base.json",
    )
    lines = ["open instructions: " + _finished(res, "judging student vs base")]
    pair = follow_discordant(run, run.profile.judge_follow)
    if pair is not None:
        res = judge_pairwise(
            pair["student"],
            pair["base"],
            cfg,
            show_progress=run.progress,
            out=run.eval / "pairwise-follow-student-vs-base.json",
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
        path = run.eval / f"follow-{label}.json"
        if not path.is_file():
            return None
        passed[label] = {i["id"]: i["pass"] for i in json.loads(path.read_text(encoding="utf-8"))["items"]}
        answers[label] = json.loads(outputs_path(path).read_text(encoding="utf-8"))
    ids = [i for i in passed["student"] if i in passed["base"] and passed["student"][i] != passed["base"][i]][:n]
    if not ids:
        return None
    folder = run.eval / "follow" / "judge"
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for label in ("student", "base"):
        by_id = {r["id"]: r for r in answers[label]}
        out[label] = folder / f"outputs-{label}.json"
        atomic_write_json(out[label], [by_id[i] for i in ids])
    return out


def _endpoint_of(run: Run, model: str) -> dict[str, Any]:
    """An `openai:` teacher's base URL and key variable, from the generation config (else {})."""
    if not model.startswith("openai:"):
        return {}
    from alpacakit.config import load_config

    sets = [f"{k}={json.dumps(v)}" for k, v in run.profile.generate_set.items()]
    teacher = load_config(None, sets, {"teacher": {"model": model}}).teacher
    return {"base_url": teacher.base_url, "api_key_env": teacher.api_key_env}


def stage_bench(run: Run) -> str:
    from alpacakit.evaluate.bench.runner import run_bench

    lines = []
    for label, model in run.systems().items():
        where = _endpoint_of(run, model)  # an API teacher: short-answer tasks, at the endpoint it generated with
        res = run_bench(
            model, limit=run.profile.bench_limit, out=run.eval / f"bench-{label}.json", system=label, **where
        )
        acc = res["overall"]["accuracy"]
        lines.append(f"{label} {acc:.1%}" if acc is not None else f"{label} n/a")
    return "accuracy (macro over tasks): " + ", ".join(lines)


def stage_report(run: Run) -> str:
    from alpacakit.evaluate.report import build_report

    res = build_report(run.root)
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
    return result.summary()


def _complete_model(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "manifest.json").read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------------------- the run


def run_quickstart(
    root: str | Path,
    profile: QuickstartProfile,
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
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    log_path = root / "quickstart.json"
    previous: dict[str, Any] = {}
    if log_path.is_file():
        try:
            previous = json.loads(log_path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    run = Run(root, profile, say, progress)
    run.log = {
        "profile": profile.model_dump(mode="json"),
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


def before_after(root: str | Path, n: int) -> list[dict[str, str]]:
    """The first `n` held-out instructions with the base model's and the student's answers."""
    root = Path(root)
    try:
        base = json.loads((root / "eval" / "outputs-base.json").read_text(encoding="utf-8"))
        student = json.loads((root / "eval" / "outputs-student.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    by_instruction = {r["instruction"]: r["output"] for r in student}
    rows = [
        {"instruction": r["instruction"], "before": r["output"], "after": by_instruction[r["instruction"]]}
        for r in base
        if r["instruction"] in by_instruction
    ]
    return rows[:n]


def write_before_after(root: str | Path, rows: list[dict[str, str]]) -> Path:
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
    path = Path(root) / "report" / "before_after.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(parts))
    return path


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty answer)").splitlines())

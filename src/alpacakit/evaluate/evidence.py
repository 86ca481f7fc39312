"""Student against base, metric by metric, each with its paired uncertainty.

Which measurements can decide anything in a small run is a matter of statistical power, not
taste. Every metric here compares the student with its base on the *same* items, and its
difference comes with a paired standard error and a 95% interval. A metric *decides* when
its standard error is small enough to resolve the effects fine-tuning makes: at most
`decide_se_points` points for rates (the default run's verifiable instructions: ~200 items,
SE ~3-5), any n >= `decide_min_n` for the likelihood of held-out teacher answers (its paired
differences are consistent, so a dozen answers resolve it). The judge and the capability
benchmark are reported with their intervals, and decide only if they reach the same bar.

Read from a run folder:
- `eval/follow-{base,student,teacher}.json` (`eval follow`): verifiable instructions passed
  (the headline), share of constraints met, answers that ended by themselves;
- `eval/likelihood-{base,student}.json` (`eval likelihood`): NLL per token of held-out
  teacher answers;
- `eval/pairwise-student-vs-base.json` (`eval pairwise`, both orders): the judge's preference
  and its position consistency; `eval/pairwise-follow-student-vs-base.json`: the judge on
  verifiable instructions the checks tell apart, i.e. its agreement with the checks;
- `eval/bench-*.json`: capability (knowledge), via `report.knowledge_stats`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from alpacakit.rundir import RunDir

Z95 = 1.96
#: The name of the judge's run on verifiable instructions (quickstart's `stage_judge`):
#: `eval/pairwise-follow-student-vs-base.json`.
FOLLOW_JUDGED = "follow-student-vs-base"


def paired(a: list[float], b: list[float], bound: float | None = None) -> dict[str, Any]:
    """Mean of a - b with its paired standard error and 95% interval (a, b in the same order);
    `bound`, for bounded scores (rates, shares, the judge's wins): the largest |a - b|, so that
    items that all agree do not give SE 0 (`follow.score.paired_difference`)."""
    from alpacakit.evaluate.follow.score import paired_difference

    d = paired_difference(a, b, bound)
    return {"mean": d["mean_diff"], "se": d["se"], "n": d["n"]}


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metric(
    key: str,
    name: str,
    what: str,
    unit: str,
    d: dict[str, Any],
    *,
    student: float | None,
    base: float | None,
    scale: float = 1.0,
    teacher: float | None = None,
    decides: bool = False,
) -> dict[str, Any]:
    se = d["se"] * scale if d.get("se") is not None else None
    diff = d["mean"] * scale
    return {
        "key": key,
        "name": name,
        "what": what,
        "unit": unit,
        "n": d["n"],
        "student": student,
        "base": base,
        "teacher": teacher,
        "diff": diff,
        "se": se,
        "ci": [diff - Z95 * se, diff + Z95 * se] if se is not None else None,
        "significant": se is not None and se > 0 and abs(diff) > 2 * se or (se == 0 and diff != 0),
        "decides": decides,
    }


def follow_metrics(run: RunDir, decide_se_points: float) -> list[dict[str, Any]]:
    s, b = _read(run.follow("student")), _read(run.follow("base"))
    if not (isinstance(s, dict) and isinstance(b, dict)):
        return []
    t = _read(run.follow("teacher"))
    si, bi = {i["id"]: i for i in s["items"]}, {i["id"]: i for i in b["items"]}
    ids = [i for i in si if i in bi]
    if not ids:
        return []
    out = []
    specs = [
        (
            "follow",
            "verifiable instructions passed",
            "items whose every constraint a program verified",
            lambda it: 1.0 if it["pass"] else 0.0,
            lambda r: r.get("accuracy"),
        ),
        (
            "follow_constraints",
            "constraints met",
            "share of an item's constraints met, averaged over items",
            lambda it: float(it["constraint_fraction"]),
            lambda r: _mean([i["constraint_fraction"] for i in r["items"]]),
        ),
        (
            "clean_stop",
            "answers ended by the model",
            "answers that ended with the end-of-sequence token within "
            "the token limit, without starting a new prompt section",
            lambda it: 1.0 if it.get("ending") == "eos" else 0.0,
            lambda r: r.get("clean_stop_rate"),
        ),
    ]
    for key, name, what, value, overall in specs:
        d = paired([value(si[i]) for i in ids], [value(bi[i]) for i in ids], bound=1.0)
        m = _metric(
            key,
            name,
            what,
            "points",
            d,
            scale=100.0,
            student=100 * _mean([value(si[i]) for i in ids]),
            base=100 * _mean([value(bi[i]) for i in ids]),
            teacher=100 * overall(t) if isinstance(t, dict) and overall(t) is not None else None,
        )
        m["decides"] = m["se"] is not None and m["se"] <= decide_se_points
        if key == "follow" and isinstance(t, dict):
            m["teacher_n"] = t.get("n")
        out.append(m)
    return out


def likelihood_metric(run: RunDir, decide_min_n: int) -> dict[str, Any] | None:
    s, b = _read(run.likelihood("student")), _read(run.likelihood("base"))
    if not (isinstance(s, dict) and isinstance(b, dict)):
        return None
    si, bi = {i["id"]: i["nll"] for i in s["items"]}, {i["id"]: i["nll"] for i in b["items"]}
    ids = [i for i in si if i in bi]
    if len(ids) < 2:
        return None
    # base minus student: positive = the student finds the teacher's answers more likely
    d = paired([bi[i] for i in ids], [si[i] for i in ids])
    m = _metric(
        "likelihood",
        "closer to the teacher's writing",
        "NLL per token of held-out teacher answers, "
        "base minus student (nats; positive: the student writes more like the teacher)",
        "nats",
        d,
        student=_mean([si[i] for i in ids]),
        base=_mean([bi[i] for i in ids]),
    )
    m["decides"] = len(ids) >= decide_min_n
    return m


def judge_metric(run: RunDir, decide_se_points: float) -> dict[str, Any] | None:
    p = _read(run.pairwise("student", "base"))
    if not isinstance(p, dict):
        return None
    prefs = [a["preference"] for a in p.get("annotations", []) if a.get("preference") is not None]
    if len(prefs) < 2:
        return None
    # AlpacaEval preference: 1 = baseline (base) preferred, 2 = model (student) preferred, 1.5 a tie
    wins = [(x - 1.0) for x in prefs]
    d = paired(wins, [0.5] * len(wins), bound=0.5)
    m = _metric(
        "judge",
        "judge prefers the student",
        f"{(p.get('judge') or {}).get('model', 'the judge')} comparing "
        "student and base answers to open instructions (50 = no preference)",
        "points",
        d,
        scale=100.0,
        student=100 * _mean(wins),
        base=50.0,
    )
    m["diff_label"] = "win rate - 50"
    bias = p.get("position_bias") or {}
    m["orders_agree"] = bias.get("orders_agree")
    m["first_shown_won"] = bias.get("first_shown_won")
    judged = {a["instruction"] for a in p.get("annotations", [])}
    m["cut"] = {}  # judged answers that the token limit cut: counted and shown, not hidden
    for side in ("student", "base"):
        recs = _read(run.outputs(side)) or []
        m["cut"][side] = sum(
            1
            for r in recs
            if isinstance(r, dict) and r.get("instruction") in judged and r.get("finish_reason") == "length"
        )
    m["decides"] = m["se"] is not None and m["se"] <= decide_se_points
    return m


def judge_check_agreement(run: RunDir) -> dict[str, Any] | None:
    """How often the judge preferred the answer that passed the program's checks, on the
    verifiable instructions that exactly one of student and base passed."""
    p = _read(run.manifest("eval-pairwise", FOLLOW_JUDGED))
    s = _read(run.follow("student"))
    if not (isinstance(p, dict) and isinstance(s, dict)):
        return None
    from alpacakit.evaluate.follow.run import outputs_path

    answers = _read(outputs_path(run.follow("student"))) or []
    passed = {i["id"]: i["pass"] for i in s["items"]}
    by_text = {r["instruction"]: passed.get(r["id"]) for r in answers if isinstance(r, dict)}
    agree = decided = ties = 0
    for a in p.get("annotations", []):
        student_passed = by_text.get(a["instruction"])
        pref = a.get("preference")
        if student_passed is None or pref is None:
            continue
        if pref == 1.5:
            ties += 1
            continue
        decided += 1
        agree += (pref > 1.5) == bool(student_passed)
    if not decided and not ties:
        return None
    return {
        "n": decided + ties,
        "decided": decided,
        "ties": ties,
        "agreement": agree / decided if decided else None,
        "orders_agree": (p.get("position_bias") or {}).get("orders_agree"),
    }


def knowledge_metric(knowledge: dict[str, Any], decide_se_points: float) -> dict[str, Any] | None:
    if knowledge.get("gain") is None:
        return None
    se = knowledge.get("se")
    m = _metric(
        "knowledge",
        "capability questions answered",
        "facts, arithmetic and reading questions (knowledge, not style)",
        "points",
        {"mean": knowledge["gain"], "se": se, "n": knowledge["n_paired"]},
        student=knowledge.get("student_acc"),
        base=knowledge.get("base_acc"),
        teacher=knowledge.get("teacher_acc"),
    )
    m["decides"] = se is not None and se <= decide_se_points
    return m


def follow_by_kind(run: RunDir) -> list[dict[str, Any]]:
    """Per constraint kind: checks passed by each system (its own items; the teacher's are fewer)."""
    found = {s: _read(run.follow(s)) for s in ("base", "student", "teacher")}
    found = {s: r for s, r in found.items() if isinstance(r, dict) and isinstance(r.get("by_kind"), dict)}
    kinds = sorted({k for r in found.values() for k in r["by_kind"]})
    return [{"kind": k, **{s: r["by_kind"].get(k) for s, r in found.items()}} for k in kinds]


def collect_evidence(
    run_dir: str | Path, knowledge: dict[str, Any], *, decide_se_points: float = 5.0, decide_min_n: int = 10
) -> dict[str, Any]:
    """Every student-vs-base metric found in RUN/eval, and which of them decide."""
    run = RunDir(Path(run_dir))
    metrics = follow_metrics(run, decide_se_points)
    for m in (
        likelihood_metric(run, decide_min_n),
        judge_metric(run, decide_se_points),
        knowledge_metric(knowledge, decide_se_points),
    ):
        if m is not None:
            metrics.append(m)
    return {
        "metrics": metrics,
        "by_key": {m["key"]: m for m in metrics},
        "by_kind": follow_by_kind(run),
        "judge_checks": judge_check_agreement(run),
        "decide_se_points": decide_se_points,
        "decide_min_n": decide_min_n,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan

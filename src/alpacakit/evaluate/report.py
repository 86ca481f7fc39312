"""`alpacakit report RUN_DIR`: style against substance, in Markdown and HTML with plots.

Alpaca was judged by blind pairwise comparison with its teacher; "The False Promise of
Imitating Proprietary LLMs" (Gudibande et al., 2023) showed that imitation copies the teacher's
style while targeted benchmarks barely move. This report puts both measurements side by side:

- style: win rates from `eval/pairwise-*.json` (student vs teacher, base vs teacher);
- substance: accuracies from `eval/bench-<system>.json` (base, student, teacher);
- answer lengths from `eval/outputs-<system>.json`;
- the cost of data (`data/manifest.json`), training (`model/manifest.json`), answering and
  judging (the eval work folders);

and states a verdict by an explicit rule (thresholds in the `eval.report` config section,
wording in `evaluate/data/report/verdicts.yaml`). Every part that is missing is listed with
the command that produces it; nothing missing is an error.

Outputs in RUN_DIR/report/: report.md, report.html, report.json (every number shown), *.png.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from alpacakit import __version__
from alpacakit.errors import DataError

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig
from alpacakit.manifest import (
    BenchManifest,
    EvalOutputsManifest,
    GenerateManifest,
    Manifest,
    PairwiseManifest,
    TrainManifest,
    parse_manifest,
)
from alpacakit.rundir import RunDir


def _data_dir() -> Path:
    return Path(str(resources.files("alpacakit.evaluate").joinpath("data", "report")))


def _read_json(path: Path, problems: list[str]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        problems.append(f"{path}: unreadable ({e}); left out")
        return None


def _f(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


# --------------------------------------------------------------------------- collecting


@dataclass
class Labels:
    base: str
    student: str
    teacher: str


def collect(run_dir: Path | RunDir) -> dict[str, Any]:
    """Everything the report reads, as found (None / empty where absent). Files are found where
    `RunDir` puts them and read as the manifests of the stages that wrote them."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    problems: list[str] = []
    found: dict[str, Any] = {"problems": problems, "outputs": {}, "pairwise": [], "bench": {}, "eval_work": []}
    for stage, key in (("generate", "data_manifest"), ("train", "train_manifest")):
        path = rd.manifest(stage)
        found[key] = _read_manifest(path, problems) if path.is_file() else None
    for label in rd.labels():
        recs = _read_json(rd.outputs(label), problems)
        if isinstance(recs, list):
            found["outputs"][label] = recs
    for path in rd.pairwise_files():
        m = _read_manifest(path, problems, quiet=True)
        if isinstance(m, PairwiseManifest):
            found["pairwise"].append({**m.model_dump(), "_file": path.name})
    for path in rd.bench_files():
        m = _read_manifest(path, problems, quiet=True)
        if isinstance(m, BenchManifest):
            found["bench"][str(m.system or path.stem.removeprefix("bench-"))] = m.model_dump()
    for path in rd.work_manifests():
        m = _read_manifest(path, problems, quiet=True)
        if isinstance(m, EvalOutputsManifest):
            found["eval_work"].append(m)
    return found


def _read_manifest(path: Path, problems: list[str], *, quiet: bool = False) -> Manifest | None:
    """The manifest at `path`; an unreadable file is a problem to list, one that is not the
    expected kind of manifest is left out (listed unless `quiet`)."""
    data = _read_json(path, problems)
    if data is None:
        return None
    try:
        return parse_manifest(data, path)
    except DataError as e:
        if not quiet:
            problems.append(f"{e}; left out")
        return None


# --------------------------------------------------------------------------- style


def _pairwise_rows(found: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for p in found["pairwise"]:
        m, bias = p.get("metrics", {}), p.get("position_bias", {})
        rows.append(
            {
                "model": p.get("model"),
                "baseline": p.get("baseline"),
                "judge": (p.get("judge") or {}).get("model", "?"),
                "win_rate": _f(m.get("win_rate")),
                "standard_error": _f(m.get("standard_error")),
                "lc": _f(m.get("length_controlled_winrate")),
                "n_total": m.get("n_total", 0),
                "n_draws": m.get("n_draws", 0),
                "n_unparsed": m.get("n_unparsed_judgments", 0),
                "first_shown_won": _f(bias.get("first_shown_won")),
                "orders_agree": _f(bias.get("orders_agree")),
                "file": p.get("_file"),
                "status": p.get("status"),
            }
        )
    return rows


def judge_warnings(rows: list[dict[str, Any]], *, extreme: float = 0.9, min_n: int = 8) -> list[str]:
    """A judge that (nearly) always picks the answer shown first says nothing about the answers:
    its win rate is then just the share of pairs where the system happened to be shown first."""
    out = []
    for r in rows:
        f = r.get("first_shown_won")
        if f is not None and (r.get("n_total") or 0) >= min_n and (f >= extreme or f <= 1 - extreme):
            out.append(
                f"The judge {r['judge']} chose the answer shown {'first' if f >= 0.5 else 'second'} in "
                f"{max(f, 1 - f):.0%} of its decisive verdicts in {r['file']}: that win rate reflects the "
                "order of presentation, not the answers. Judge in both orders (`--order both`: the bias "
                "then cancels into ties) or with a stronger judge (`--judge-model`)."
            )
    return out


def win_rate_vs(rows: list[dict[str, Any]], system: str, teacher: str) -> dict[str, Any] | None:
    """`system`'s win rate against `teacher`, from either direction of comparison."""
    for r in rows:
        if r["model"] == system and r["baseline"] == teacher and r["win_rate"] is not None:
            return {"win_rate": r["win_rate"], "se": r["standard_error"], "lc": r["lc"], "n": r["n_total"]}
    for r in rows:  # teacher-vs-system: the complement
        if r["model"] == teacher and r["baseline"] == system and r["win_rate"] is not None:
            return {
                "win_rate": 100 - r["win_rate"],
                "se": r["standard_error"],
                "lc": None if r["lc"] is None else 100 - r["lc"],
                "n": r["n_total"],
            }
    return None


# --------------------------------------------------------------------------- substance


def _acc(x: Any) -> float | None:
    """Accuracy in percent (bench files hold fractions; a value above 1 is taken as percent)."""
    v = _f(x)
    if v is None:
        return None
    return v * 100 if v <= 1.0 else v


def bench_table(found: dict[str, Any], order: list[str]) -> dict[str, Any]:
    systems = [s for s in order if s in found["bench"]] + sorted(s for s in found["bench"] if s not in order)
    names: list[str] = []
    for s in systems:
        names += [t for t in found["bench"][s]["tasks"] if t not in names]
    tasks = []
    for t in names:
        entries = {s: found["bench"][s]["tasks"].get(t) for s in systems}
        first = next(e for e in entries.values() if e)
        tasks.append(
            {
                "name": t,
                "metric": first.get("metric", "acc"),
                "n": first.get("n"),
                "acc": {s: _acc(e.get("accuracy")) if e else None for s, e in entries.items()},
            }
        )
    overall = {s: _acc((found["bench"][s].get("overall") or {}).get("accuracy")) for s in systems}
    return {"systems": systems, "tasks": tasks, "overall": overall}


def _correct_by_item(bench: dict[str, Any] | None) -> dict[tuple[str, str], float]:
    out = {}
    for it in (bench or {}).get("items") or []:
        if isinstance(it, dict) and "correct" in it and "task" in it and "id" in it:
            out[(str(it["task"]), str(it["id"]))] = 1.0 if it["correct"] else 0.0
    return out


def knowledge_stats(found: dict[str, Any], labels: Labels) -> dict[str, Any]:
    """Student minus base over the items both answered (paired), and the share of the teacher gap closed."""
    b, s, t = (_correct_by_item(found["bench"].get(x)) for x in (labels.base, labels.student, labels.teacher))
    out: dict[str, Any] = {
        "gain": None,
        "se": None,
        "n_paired": 0,
        "gap_closed": None,
        "n_all": 0,
        "base_acc": None,
        "student_acc": None,
        "teacher_acc": None,
    }
    common = sorted(set(b) & set(s))
    if common:
        d = [s[k] - b[k] for k in common]
        out.update(
            gain=100 * sum(d) / len(d),
            n_paired=len(common),
            se=100 * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else None,
            base_acc=100 * sum(b[k] for k in common) / len(common),
            student_acc=100 * sum(s[k] for k in common) / len(common),
        )
    elif labels.base in found["bench"] and labels.student in found["bench"]:
        # No per-item results: overall accuracies, with an independent-samples standard error.
        ob, os_ = (found["bench"][x].get("overall") or {} for x in (labels.base, labels.student))
        ab, as_ = _acc(ob.get("accuracy")), _acc(os_.get("accuracy"))
        nb, ns = int(ob.get("n") or 0), int(os_.get("n") or 0)
        if ab is not None and as_ is not None:
            se = math.sqrt(ab * (100 - ab) / nb + as_ * (100 - as_) / ns) if nb and ns else None
            out.update(gain=as_ - ab, se=se, n_paired=min(nb, ns), base_acc=ab, student_acc=as_)
    if labels.teacher in found["bench"]:
        out["teacher_acc"] = _acc((found["bench"][labels.teacher].get("overall") or {}).get("accuracy"))
    every = sorted(set(b) & set(s) & set(t))
    if every:
        ab, as_, at = (100 * sum(x[k] for k in every) / len(every) for x in (b, s, t))
        out["n_all"] = len(every)
        out["teacher_acc"] = at
        if at > ab:
            out["gap_closed"] = 100 * (as_ - ab) / (at - ab)
    return out


# --------------------------------------------------------------------------- lengths and cost


def lengths(found: dict[str, Any], order: list[str]) -> list[dict[str, Any]]:
    rows = []
    for name in [o for o in order if o in found["outputs"]] + sorted(o for o in found["outputs"] if o not in order):
        recs = [r for r in found["outputs"][name] if isinstance(r, dict) and isinstance(r.get("output"), str)]
        if not recs:
            continue
        words = [len(r["output"].split()) for r in recs]
        chars = [len(r["output"]) for r in recs]
        rows.append(
            {
                "system": name,
                "n": len(recs),
                "mean_words": statistics.fmean(words),
                "median_words": statistics.median(words),
                "mean_chars": statistics.fmean(chars),
                "truncated": sum(1 for r in recs if r.get("finish_reason") == "length"),
                "words": words,
            }
        )
    return rows


def costs(found: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    dm: GenerateManifest | None = found.get("data_manifest")
    if dm:
        c = dm.counts
        teacher = dm.teacher.get("name") or (dm.config.get("teacher") or {}).get("model", "?")
        rows.append(
            {
                "stage": "data",
                "what": f"{c.kept} examples from {teacher}",
                "requests": c.requests,
                "tokens": c.prompt_tokens + c.completion_tokens,
                "cost_usd": _f(c.cost_usd) or 0.0,
                "seconds": _wall(dm.model_dump(), c.teacher_seconds),
            }
        )
    tm: TrainManifest | None = found.get("train_manifest")
    if tm:
        base = tm.base.get("name") or tm.base.get("ref") or "?"
        rows.append(
            {
                "stage": "training",
                "what": f"{tm.method or '?'} on {base}, {'?' if tm.steps is None else tm.steps} steps",
                "requests": None,
                "tokens": None,
                "cost_usd": _f(tm.cost_usd) or 0.0,
                "seconds": _f(tm.durations_s.get("total")),
            }
        )
    for w in found["eval_work"]:
        c = w.counts
        rows.append(
            {
                "stage": "answers",
                "what": f"{w.generator or '?'} on {c.requests} eval items",
                "requests": c.requests,
                "tokens": c.prompt_tokens + c.completion_tokens,
                "cost_usd": _f(c.cost_usd) or 0.0,
                "seconds": _wall(w.model_dump(), c.teacher_seconds),
            }
        )
    for p in found["pairwise"]:
        c = p.get("cost") or {}
        rows.append(
            {
                "stage": "judging",
                "what": f"{p.get('model')} vs {p.get('baseline')} by {(p.get('judge') or {}).get('model', '?')}",
                "requests": c.get("judgments"),
                "tokens": (c.get("prompt_tokens") or 0) + (c.get("completion_tokens") or 0),
                "cost_usd": _f(c.get("cost_usd")) or 0.0,
                "seconds": _wall(c, c.get("judge_seconds")),
            }
        )
    for name, bench in found["bench"].items():
        rows.append(
            {
                "stage": "benchmarks",
                "what": f"{name}: {len(bench.get('tasks', {}))} tasks",
                "requests": None,
                "tokens": None,
                "cost_usd": 0.0,
                "seconds": _f((bench.get("timing") or {}).get("total_s")),
            }
        )
    return rows


def _wall(record: dict[str, Any], latencies: Any) -> float | None:
    """A job's wall-clock seconds; files from before alpacakit recorded them only have the sum of
    request latencies, which overlap (several requests decode together)."""
    return _f(record.get("wall_seconds")) or _f(record.get("wall_seconds_this_run")) or _f(latencies)


# --------------------------------------------------------------------------- the verdict


def verdict(style: dict[str, Any], knowledge: dict[str, Any], rcfg: Any, texts: dict[str, Any]) -> dict[str, Any]:
    """Classify the run by the rule in verdicts.yaml; 'incomplete' names what is missing."""
    rule = texts["rule"].format(style_points=rcfg.style_gain_points, knowledge_points=rcfg.knowledge_gain_points)
    needed = []
    if style["student"] is None:
        needed.append(f"the {rcfg.student}-vs-{rcfg.teacher} pairwise comparison")
    if style["base"] is None:
        needed.append(f"the {rcfg.base}-vs-{rcfg.teacher} pairwise comparison")
    if knowledge["gain"] is None:
        needed.append(f"bench results for {rcfg.base} and {rcfg.student}")
    if needed:
        return {
            "kind": "incomplete",
            "text": texts["incomplete"].format(needed=", ".join(needed)),
            "rule": rule,
            "colour": "#999",
            "style_gained": None,
            "knowledge_gained": None,
        }
    s_gain = style["student"]["win_rate"] - style["base"]["win_rate"]
    s_se = math.sqrt((style["student"]["se"] or 0) ** 2 + (style["base"]["se"] or 0) ** 2)
    k_gain, k_se = knowledge["gain"], knowledge["se"] or 0.0
    style_gained = s_gain >= rcfg.style_gain_points and s_gain > 2 * s_se
    knowledge_gained = k_gain >= rcfg.knowledge_gain_points and k_gain > 2 * k_se
    kind = {
        (True, False): "style_not_knowledge",
        (True, True): "both",
        (False, True): "knowledge_not_style",
        (False, False): "neither",
    }[(style_gained, knowledge_gained)]
    teacher_acc = knowledge.get("teacher_acc")
    text = texts[kind].format(
        style_gain=s_gain,
        knowledge_gain=k_gain,
        base_wr=style["base"]["win_rate"],
        student_wr=style["student"]["win_rate"],
        base_acc=knowledge["base_acc"],
        student_acc=knowledge["student_acc"],
        teacher_acc=f"{teacher_acc:.1f}%" if teacher_acc is not None else "n/a",
    )
    colour = {"style_not_knowledge": "#d98c00", "both": "#2a8f3c", "knowledge_not_style": "#2a6f8f", "neither": "#999"}[
        kind
    ]
    return {
        "kind": kind,
        "text": " ".join(text.split()),
        "rule": " ".join(rule.split()),
        "colour": colour,
        "style_gain": s_gain,
        "style_gain_se": s_se,
        "knowledge_gain": k_gain,
        "knowledge_gain_se": k_se,
        "style_gained": style_gained,
        "knowledge_gained": knowledge_gained,
    }


def evidence_verdict(evidence: dict[str, Any], texts: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict from paired student-vs-base metrics, decided by those with the power to
    (see `evidence.py`); None when the run has no verifiable-instruction results."""
    by_key = evidence["by_key"]
    if "follow" not in by_key:
        return None
    t = texts["evidence"]
    sentences, deciding, others = [], [], []
    for m in evidence["metrics"]:
        label = f"{m['name']} (n {m['n']}, SE {m['se']:.3g}{'' if m['unit'] == 'nats' else ' points'})"
        (deciding if m["decides"] else others).append(label)
        if not m["decides"] and m["key"] != "follow":
            continue
        direction = "none" if not m["significant"] else ("up" if m["diff"] > 0 else "down")
        teacher = m.get("teacher")
        teacher_part = (
            f"; the teacher {teacher:.1f}% of {m.get('teacher_n')}"
            if teacher is not None and m["key"] == "follow"
            else ""
        )
        lo, hi = m["ci"] if m["ci"] else (math.nan, math.nan)
        sentences.append(
            t[m["key"]][direction].format(
                diff=m["diff"],
                lo=lo,
                hi=hi,
                se=m["se"] or 0.0,
                n=m["n"],
                student=m["student"] or 0.0,
                base=m["base"] or 0.0,
                teacher_part=teacher_part,
                bound=max(abs(lo), abs(hi)),
            )
        )
    sentences.append(t["decided_by"].format(deciding="; ".join(deciding) or "none"))
    if others:
        sentences.append(t["not_deciding"].format(se=evidence["decide_se_points"], others="; ".join(others)))
    head = by_key["follow"]
    kind = "none" if not head["significant"] else ("follows" if head["diff"] > 0 else "regressed")
    colour = {"follows": "#2a8f3c", "regressed": "#b03a2e", "none": "#999"}[kind]
    rule = t["rule"].format(se=evidence["decide_se_points"], n=evidence["decide_min_n"])
    return {
        "kind": kind,
        "text": " ".join(" ".join(sentences).split()),
        "rule": " ".join(rule.split()),
        "colour": colour,
        "headline": head["key"],
        "deciding": deciding,
        "not_deciding": others,
        "style_gained": None,
        "knowledge_gained": None,
    }


def evidence_plot(evidence: dict[str, Any], out_dir: Path) -> str | None:
    """Each metric's student-minus-base difference with its 95% interval: rates in points on the
    left, the likelihood in nats on the right; deciding metrics solid, the others faded."""
    import matplotlib.pyplot as plt

    rates = [m for m in evidence["metrics"] if m["unit"] == "points" and m["ci"]]
    nats = [m for m in evidence["metrics"] if m["unit"] == "nats" and m["ci"]]
    if not rates and not nats:
        return None
    fig, axes = plt.subplots(
        1,
        2 if nats else 1,
        figsize=(11 if nats else 7.5, 0.55 * max(len(rates), 1) + 1.8),
        gridspec_kw={"width_ratios": [3, 1.2]} if nats else None,
        squeeze=False,
        layout="constrained",
    )
    for ax, group, unit in (
        (axes[0][0], rates, "points (student − base)"),
        *(((axes[0][1], nats, "nats per token (base − student)"),) if nats else ()),
    ):
        for i, m in enumerate(group):
            lo, hi = m["ci"]
            ax.errorbar(
                m["diff"],
                i,
                xerr=[[m["diff"] - lo], [hi - m["diff"]]],
                fmt="o",
                capsize=4,
                color="#2a6f8f" if m["decides"] else "#aaa",
            )
        ax.axvline(0, color="#444", lw=1, ls="--")
        if unit.startswith("nats"):  # one row: its name goes in the title, not beside the axis
            ax.set_yticks([])
            ax.set_title("\n".join(f"{m['name']} (n {m['n']})" for m in group), fontsize=9)
            lo = min(0.0, *(m["ci"][0] for m in group))
            hi = max(0.0, *(m["ci"][1] for m in group))
            ax.set_xlim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        else:
            ax.set_yticks(range(len(group)), [f"{m['name']} (n {m['n']})" for m in group])
        ax.set_ylim(-0.6, len(group) - 0.4)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
    fig.suptitle("Student vs base on the same items, 95% intervals (blue: decides the verdict)", fontsize=10)
    fig.savefig(out_dir / "evidence.png", dpi=110)
    plt.close(fig)
    return "evidence.png"


# --------------------------------------------------------------------------- plots


def make_plots(ctx: dict[str, Any], out_dir: Path, labels: Labels) -> dict[str, str]:
    """PNG files beside the report (matplotlib, Agg backend). Returns {kind: file name}."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}
    rows = [r for r in ctx["pairwise"] if r["win_rate"] is not None]
    if rows:
        fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.4))
        names = [f"{r['model']} vs {r['baseline']}" for r in rows]
        y = list(range(len(rows)))
        ax.barh(
            y,
            [r["win_rate"] for r in rows],
            xerr=[r["standard_error"] or 0 for r in rows],
            color="#6a9fd4",
            label="win rate (± SE)",
        )
        lc = [(i, r["lc"]) for i, r in enumerate(rows) if r["lc"] is not None]
        if lc:
            ax.scatter([v for _, v in lc], [i for i, _ in lc], color="#d98c00", zorder=3, label="length-controlled")
        ax.axvline(50, color="#444", lw=1, ls="--")
        ax.set_yticks(y, names)
        ax.set_xlim(0, 100)
        ax.set_xlabel("win rate (%)")
        ax.legend(loc="lower right", fontsize=8)
        ax.set_title("Style: pairwise preference")
        fig.tight_layout()
        fig.savefig(out_dir / "winrate.png", dpi=110)
        plt.close(fig)
        made["winrate"] = "winrate.png"
    bench = ctx["bench"]
    if bench["systems"]:
        cats = [t["name"] for t in bench["tasks"]] + ["overall"]
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cats) + 2), 3.6))
        width = 0.8 / len(bench["systems"])
        for k, s in enumerate(bench["systems"]):
            vals = [t["acc"].get(s) or 0 for t in bench["tasks"]] + [bench["overall"].get(s) or 0]
            ax.bar([i + k * width for i in range(len(cats))], vals, width, label=s)
        ax.set_xticks([i + width * (len(bench["systems"]) - 1) / 2 for i in range(len(cats))], cats, rotation=20)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=8)
        ax.set_title("Substance: capability benchmarks")
        fig.tight_layout()
        fig.savefig(out_dir / "capability.png", dpi=110)
        plt.close(fig)
        made["capability"] = "capability.png"
    points = []
    for s in (labels.base, labels.student, labels.teacher):
        acc = bench["overall"].get(s) if bench["systems"] else None
        wr = (
            50.0
            if s == labels.teacher
            else (ctx["style"].get("base" if s == labels.base else "student") or {}).get("win_rate")
        )
        if acc is not None and wr is not None:
            points.append((s, acc, wr))
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(5, 4))
        for s, acc, wr in points:
            ax.scatter(acc, wr, s=60)
            ax.annotate(s, (acc, wr), textcoords="offset points", xytext=(6, 4))
        at = {s: (acc, wr) for s, acc, wr in points}
        if labels.base in at and labels.student in at:  # where fine-tuning moved the model
            ax.annotate(
                "", xy=at[labels.student], xytext=at[labels.base], arrowprops={"arrowstyle": "->", "color": "#555"}
            )
        ax.set_xlim(0, 100)
        ax.set_xlabel("capability accuracy, overall (%)  -> knowledge")
        ax.set_ylabel("win rate against the teacher (%)  -> style")
        ax.set_ylim(0, 100)
        ax.axhline(50, color="#888", lw=1, ls="--")
        ax.set_title("Style vs substance")
        fig.tight_layout()
        fig.savefig(out_dir / "style_vs_substance.png", dpi=110)
        plt.close(fig)
        made["style_vs_substance"] = "style_vs_substance.png"
    if ctx["lengths"]:
        fig, ax = plt.subplots(figsize=(6, 3.4))
        ax.boxplot([row["words"] for row in ctx["lengths"]], showfliers=False)
        ax.set_xticks(range(1, len(ctx["lengths"]) + 1), [row["system"] for row in ctx["lengths"]])
        ax.set_ylabel("words per answer")
        ax.set_title("Answer lengths")
        fig.tight_layout()
        fig.savefig(out_dir / "lengths.png", dpi=110)
        plt.close(fig)
        made["lengths"] = "lengths.png"
    if ctx.get("evidence"):
        name = evidence_plot(ctx["evidence"], out_dir)
        if name:
            made["evidence"] = name
    return made


# --------------------------------------------------------------------------- rendering


def _filters() -> dict[str, Any]:
    def pct(x: Any) -> str:
        return "n/a" if x is None else f"{x:.1f}%"

    def num(x: Any) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    def frac(x: Any) -> str:
        return "n/a" if x is None else f"{100 * x:.0f}%"

    def signed(x: Any) -> str:
        return "n/a" if x is None else f"{x:+.1f}"

    def usd(x: Any) -> str:
        return "n/a" if x is None else f"${x:,.4f}"

    def int_or_dash(x: Any) -> str:
        return "-" if x in (None, "") else f"{int(x):,}"

    def duration(s: Any) -> str:
        if s is None:
            return "-"
        s = float(s)
        return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")

    def metric(x: Any, unit: str) -> str:
        return "-" if x is None else (f"{x:.3f}" if unit == "nats" else f"{x:.1f}%")

    def delta(x: Any, unit: str) -> str:
        return "-" if x is None else (f"{x:+.3f}" if unit == "nats" else f"{x:+.1f}")

    def interval(ci: Any, unit: str) -> str:
        return (
            "-" if not ci else (f"{ci[0]:+.3f} to {ci[1]:+.3f}" if unit == "nats" else f"{ci[0]:+.1f} to {ci[1]:+.1f}")
        )

    return {
        "pct": pct,
        "num": num,
        "frac": frac,
        "signed": signed,
        "usd": usd,
        "int_or_dash": int_or_dash,
        "duration": duration,
        "metric": metric,
        "delta": delta,
        "interval": interval,
    }


def render(template: str, ctx: dict[str, Any], *, html: bool) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(_data_dir())),
        autoescape=html,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(_filters())
    return env.get_template(template).render(**ctx)


@dataclass
class ReportResult:
    out_dir: Path
    markdown: Path
    html: Path
    data: Path
    verdict: dict[str, Any]
    missing: list[str]
    plots: dict[str, str]


def build_report(
    run_dir: str | Path, config: AlpacakitConfig | None = None, out_dir: str | Path | None = None
) -> ReportResult:
    """Write report.md, report.html, report.json and plots for RUN_DIR (see the module doc)."""
    from alpacakit.config import AlpacakitConfig
    from alpacakit.io import atomic_write_json, atomic_write_text

    rd = RunDir(run_dir)
    run_dir = rd.root
    if not run_dir.is_dir():
        raise DataError(
            f"{run_dir}: no such run folder",
            hint="pass a run folder (runs/NAME with data/, model/, eval/), e.g. alpacakit report runs/demo",
        )
    rcfg = (config or AlpacakitConfig()).eval.report
    labels = Labels(rcfg.base, rcfg.student, rcfg.teacher)
    order = [labels.base, labels.student, labels.teacher]
    texts = yaml.safe_load((_data_dir() / "verdicts.yaml").read_text(encoding="utf-8"))
    found = collect(rd)

    pairwise = _pairwise_rows(found)
    style = {
        "student": win_rate_vs(pairwise, labels.student, labels.teacher),
        "base": win_rate_vs(pairwise, labels.base, labels.teacher),
    }
    knowledge = knowledge_stats(found, labels)
    ctx: dict[str, Any] = {
        "run_name": rd.name,
        "run_dir": str(run_dir),
        "version": __version__,
        "created": time.strftime("%Y-%m-%d %H:%M"),
        "pairwise": pairwise,
        "style": style,
        "knowledge": knowledge,
        "bench": bench_table(found, order),
        "lengths": lengths(found, order),
        "costs": costs(found),
    }
    ctx["total_cost"] = sum(c["cost_usd"] or 0.0 for c in ctx["costs"])
    secs = [c["seconds"] for c in ctx["costs"] if c["seconds"] is not None]
    ctx["total_seconds"] = sum(secs) if secs else None
    from alpacakit.evaluate.evidence import collect_evidence

    ctx["evidence"] = collect_evidence(run_dir, knowledge)
    ctx["verdict"] = evidence_verdict(ctx["evidence"], texts) or verdict(style, knowledge, rcfg, texts)
    ctx["verdict"]["warnings"] = judge_warnings(pairwise)

    hints = texts["missing"]
    run = str(run_dir)
    missing = list(found["problems"])
    if found["data_manifest"] is None:
        missing.append(hints["data_manifest"].format(run=run))
    if found["train_manifest"] is None:
        missing.append(hints["train_manifest"].format(run=run))
    for label in order:
        if label not in found["outputs"] and not (label == labels.teacher and "follow" in ctx["evidence"]["by_key"]):
            missing.append(hints["outputs"].format(run=run, label=label))
    for label in (labels.student, labels.base):
        if (
            style["student" if label == labels.student else "base"] is None
            and "follow" not in ctx["evidence"]["by_key"]
        ):
            missing.append(hints["pairwise"].format(run=run, label=label, teacher=labels.teacher))
    for label in order:
        if label not in found["bench"]:
            missing.append(hints["bench"].format(run=run, label=label))

    out = Path(out_dir) if out_dir else rd.report
    out.mkdir(parents=True, exist_ok=True)
    try:
        plots = make_plots(ctx, out, labels)
    except ImportError:
        plots = {}
        missing.append(hints["matplotlib"])
    ctx["plots"] = plots
    ctx["missing"] = missing

    md, html = out / "report.md", out / "report.html"
    atomic_write_text(md, render("report.md.j2", ctx, html=False))
    atomic_write_text(html, render("report.html.j2", ctx, html=True))
    data = {k: v for k, v in ctx.items() if k != "lengths"}
    data["lengths"] = [{k: v for k, v in row.items() if k != "words"} for row in ctx["lengths"]]
    atomic_write_json(out / "report.json", data)
    return ReportResult(out, md, html, out / "report.json", ctx["verdict"], missing, plots)

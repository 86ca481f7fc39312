"""The report's verdict from paired student-vs-base evidence: verifiable instructions (the
headline), stopping, likelihood of teacher answers, the judge in both orders and its agreement
with the checks. Run folders are written in the formats `eval follow`, `eval likelihood` and
`eval pairwise` write; the verdict must follow the numbers, and say which metrics decided it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alpacakit.evaluate.evidence import collect_evidence
from alpacakit.evaluate.follow.run import outputs_path
from alpacakit.evaluate.report import build_report


def _follow(ev: Path, system: str, passes: list[bool], endings: list[str]) -> None:
    items = [
        {"id": f"follow-{i:03d}", "pass": p, "constraint_fraction": 1.0 if p else 0.5, "ending": e, "checks": []}
        for i, (p, e) in enumerate(zip(passes, endings))
    ]
    ev.mkdir(parents=True, exist_ok=True)
    (ev / f"follow-{system}.json").write_text(
        json.dumps(
            {
                "system": system,
                "n": len(items),
                "items": items,
                "accuracy": sum(passes) / len(passes),
                "clean_stop_rate": endings.count("eos") / len(endings),
            }
        )
    )
    out = outputs_path(ev / f"follow-{system}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps([{"id": it["id"], "instruction": f"Instruction {it['id']}", "output": system} for it in items])
    )


def _likelihood(ev: Path, system: str, nlls: list[float]) -> None:
    (ev / f"likelihood-{system}.json").write_text(
        json.dumps({"system": system, "items": [{"id": str(i), "nll": x, "tokens": 20} for i, x in enumerate(nlls)]})
    )


def _pairwise(ev: Path, name: str, instructions: list[str], prefs: list[float]) -> None:
    (ev / name).write_text(
        json.dumps(
            {
                "model": "student",
                "baseline": "base",
                "judge": {"model": "judge-x"},
                "metrics": {},
                "position_bias": {"orders_agree": 0.75, "first_shown_won": 0.6},
                "annotations": [{"instruction": t, "preference": p} for t, p in zip(instructions, prefs)],
            }
        )
    )


def _run(tmp_path: Path, student_pass_every: int) -> Path:
    run = tmp_path / "run"
    ev = run / "eval"
    n = 200
    base = [i % 5 == 0 for i in range(n)]  # 20%
    student = [i % student_pass_every == 0 for i in range(n)]  # 50% with every 2nd
    _follow(ev, "base", base, ["length"] * 150 + ["eos"] * 50)
    _follow(ev, "student", student, ["eos"] * 180 + ["stop_string"] * 20)
    _likelihood(ev, "base", [2.0 + 0.01 * i for i in range(16)])
    _likelihood(ev, "student", [1.5 + 0.012 * i for i in range(16)])
    _pairwise(ev, "pairwise-student-vs-base.json", [f"Task {i}" for i in range(12)], [2.0, 1.0, 1.5] * 4)
    # the judge on items only one passed: student passed follow-000 and follow-002, base neither
    _pairwise(
        ev, "pairwise-follow-student-vs-base.json", ["Instruction follow-000", "Instruction follow-002"], [2.0, 1.0]
    )
    return run


def test_the_verifiable_headline_decides_and_the_verdict_says_so(tmp_path):
    run = _run(tmp_path, student_pass_every=2)
    res = build_report(run)
    v = res.verdict
    assert v["kind"] == "follows" and v["headline"] == "follow"
    assert "learned to follow instructions" in v["text"] and "+30.0 points" in v["text"]
    assert "Decided by the best-powered metrics" in v["text"] and "verifiable instructions passed" in v["text"]
    # the judge on 12 pairs has a standard error far above 5 points: shown, not deciding
    assert any("judge prefers the student" in o for o in v["not_deciding"])
    data = json.loads(res.data.read_text())
    by_key = data["evidence"]["by_key"]
    assert by_key["follow"]["decides"] and by_key["follow"]["se"] <= 5
    assert by_key["clean_stop"]["student"] == 90.0 and by_key["clean_stop"]["base"] == 25.0
    assert by_key["likelihood"]["diff"] > 0 and by_key["likelihood"]["decides"]
    assert data["evidence"]["judge_checks"] == {"n": 2, "decided": 2, "ties": 0, "agreement": 0.5, "orders_agree": 0.75}
    md = res.markdown.read_text()
    assert "Student against base: every metric, paired" in md and "95% CI" in md
    assert "preferred the passing answer in 50%" in md
    assert (res.out_dir / "evidence.png").is_file()


def test_no_clear_difference_is_reported_as_such(tmp_path):
    run = _run(tmp_path, student_pass_every=5)  # the same items pass: difference 0
    res = build_report(run)
    assert res.verdict["kind"] == "none"
    assert "No clear change in instruction following" in res.verdict["text"]
    # 200 items, none changed: not "by less than 0 points" (SE 0), but Agresti-Min's 1/202
    follow = json.loads(res.data.read_text())["evidence"]["by_key"]["follow"]
    assert follow["se"] == pytest.approx(100 / 202) and follow["ci"][1] == pytest.approx(1.96 * 100 / 202)
    assert "by less than 1.0 points" in res.verdict["text"]


def test_a_judge_that_always_ties_does_not_decide(tmp_path):
    """Four ties: plain Wald's SE is 0 and the judge "decided" no preference; bounded it is 8.3 points."""
    run = _run(tmp_path, student_pass_every=2)
    _pairwise(run / "eval", "pairwise-student-vs-base.json", [f"Task {i}" for i in range(4)], [1.5] * 4)
    judge = collect_evidence(run, {"gain": None})["by_key"]["judge"]
    assert judge["se"] == pytest.approx(100 * 0.5 / 6) and not judge["decides"]


def test_without_verifiable_results_the_old_rule_applies(tmp_path):
    ev = tmp_path / "run" / "eval"
    ev.mkdir(parents=True)
    _likelihood(ev, "base", [2.0, 2.1, 2.2])
    _likelihood(ev, "student", [1.0, 1.1, 1.3])
    evidence = collect_evidence(tmp_path / "run", {"gain": None})
    assert [m["key"] for m in evidence["metrics"]] == ["likelihood"]
    assert not evidence["metrics"][0]["decides"]  # 3 answers: below the 10 a likelihood needs
    res = build_report(tmp_path / "run")
    assert res.verdict["kind"] == "incomplete"

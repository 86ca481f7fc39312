"""Score answers against the follow set, and compare two models item by item.

Two numbers, as is usual for verifiable instruction following: `accuracy` (the share of items
whose every check passed: did the model do *everything* it was told?) and
`constraint_accuracy` (the share of single checks passed: partial credit). `by_kind` says
which constraints a model ignores.

Both models answer the same items, so `paired_difference` compares them per item: the
item-to-item variation they share cancels, and the interval is much tighter than two
independent ones would be.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path
from typing import Any

from alpacakit.errors import DataError
from alpacakit.evaluate.follow.checks import check, validate_item


def default_path() -> Path:
    return Path(str(resources.files("alpacakit.evaluate").joinpath("data", "follow.jsonl")))


def load_follow_set(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The items of a follow set (JSONL), validated; a bad line raises DataError at file:line."""
    path = Path(path) if path is not None else default_path()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise DataError(
            f"{path}: cannot read ({e.strerror or e})", hint="pass the path of a follow-set JSONL file"
        ) from e
    items: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg})", hint="each line must be one JSON object") from e
        try:
            validate_item(item)
        except ValueError as e:
            raise DataError(f"{where}: {e}", hint="fix the item (see alpacakit/evaluate/follow/checks.py)") from e
        if item["id"] in seen:
            raise DataError(
                f"{where}: id {item['id']!r} already used on line {seen[item['id']]}", hint="give every item its own id"
            )
        seen[item["id"]] = lineno
        items.append(item)
    return items


def _share(passed: int, n: int) -> float | None:
    return passed / n if n else None


def score_answers(items: list[dict[str, Any]], answers: dict[str, str]) -> dict[str, Any]:
    """Check each answered item. Items with no answer are skipped and counted in `missing`.

    Shares are None when nothing was scored (there is no honest number then).
    """
    results: list[dict[str, Any]] = []
    by_kind: dict[str, dict[str, Any]] = {}
    missing = 0
    for item in items:
        if item["id"] not in answers:
            missing += 1
            continue
        answer = answers[item["id"]] or ""
        verdicts = []
        for entry in item["checks"]:
            args = {k: v for k, v in entry.items() if k != "kind"}
            ok = check(entry["kind"], answer, **args)
            verdicts.append({"kind": entry["kind"], "pass": ok})
            tally = by_kind.setdefault(entry["kind"], {"n": 0, "passed": 0})
            tally["n"] += 1
            tally["passed"] += ok
        results.append(
            {
                "id": item["id"],
                "pass": all(v["pass"] for v in verdicts),
                "checks": verdicts,
                "constraint_fraction": sum(v["pass"] for v in verdicts) / len(verdicts),
            }
        )
    for tally in by_kind.values():
        tally["accuracy"] = _share(tally["passed"], tally["n"])
    n_checks = sum(t["n"] for t in by_kind.values())
    return {
        "n": len(results),
        "missing": missing,
        "item_pass": [r["pass"] for r in results],
        "items": results,
        "accuracy": _share(sum(r["pass"] for r in results), len(results)),
        "constraint_accuracy": _share(sum(t["passed"] for t in by_kind.values()), n_checks),
        "by_kind": dict(sorted(by_kind.items())),
    }


def paired_difference(a_pass: list[float], b_pass: list[float], bound: float | None = None) -> dict[str, Any]:
    """Mean of a - b over paired items, its standard error and a normal 95% interval.

    SE = sample standard deviation of the differences / sqrt(n); needs n >= 2.

    `bound`: the largest |a - b| possible (1 for pass/fail items and shares). Then two pseudo-pairs
    join the items: differences +bound and -bound at weight 1/2 each, and 0 at weight 1. For
    pass/fail items that is Agresti and Min's (2005) interval for matched proportions (0.5 added
    to each cell of the 2 x 2 table), here centred on the observed difference. Without it, items
    that all agree (no item changed) give SE 0 at any n: a run of 24 unchanged items "decided"
    that fine-tuning moved nothing by even 0.1 points. With it they give SE 1/26 (3.8 points),
    and at a few hundred items with real changes it moves the SE by a few percent.
    """
    if len(a_pass) != len(b_pass):
        raise ValueError(f"paired lists differ in length: {len(a_pass)} vs {len(b_pass)}")
    n = len(a_pass)
    if n < 2:
        raise ValueError(f"need at least 2 paired items for a standard error, got {n}")
    diffs = [float(a) - float(b) for a, b in zip(a_pass, b_pass)]
    mean = sum(diffs) / n
    if bound is None:
        se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) / math.sqrt(n)
    else:
        weight = n + 2  # the items, and the pseudo-pairs' weight of 2
        m = sum(diffs) / weight
        var = (sum(d * d for d in diffs) + bound * bound) / weight - m * m
        se = math.sqrt(var / weight)
    return {"n": n, "mean_diff": mean, "se": se, "ci_low": mean - 1.96 * se, "ci_high": mean + 1.96 * se}

"""Numbers from a human A/B study: win rates, inter-rater agreement, position bias.

Win rates use AlpacaEval's convention (`alpacakit.evaluate.winrate.get_winrate`): a
preference of 1 means the first system won, 2 the second, 1.5 a tie; the win rate of the
second system is mean(preference - 1) in percent, a tie counting half. The headline averages
each item's preferences over the raters who judged it first, so the item (the instruction) is
the unit of the standard error and an item judged by three raters does not count three times;
the pooled per-judgment figures are exported too.

Agreement is Cohen's kappa for each pair of raters over the items both judged, on the three
outcomes "first system", "second system", "tie" (in system terms, not screen sides, so two
raters who saw different sides still agree when they prefer the same answer):

    kappa = (p_o - p_e) / (1 - p_e)

where p_o is the share of common items on which they agree and p_e the agreement expected by
chance from each rater's own outcome frequencies (sum over outcomes of p_1(k) * p_2(k)). When
p_e = 1 (both raters gave one and the same outcome every time) kappa is 0/0: undefined, and
reported as null rather than guessed.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

OUTCOMES = {0: "tie", 1: "first", 2: "second"}
_PREFERENCE = {0: 1.5, 1: 1.0, 2: 2.0}  # winner slot -> AlpacaEval preference


def cohen_kappa(rater_1: Sequence[Hashable], rater_2: Sequence[Hashable]) -> float | None:
    """Cohen's kappa of two raters' labels for the same items (same order, same length).

    Returns None when it is undefined (chance agreement is 1) and raises ValueError for
    sequences of different lengths or no items.
    """
    if len(rater_1) != len(rater_2):
        raise ValueError(f"kappa needs the same items for both raters: {len(rater_1)} labels vs {len(rater_2)}")
    n = len(rater_1)
    if n == 0:
        raise ValueError("kappa needs at least one item judged by both raters")
    p_o = sum(a == b for a, b in zip(rater_1, rater_2)) / n
    c1, c2 = Counter(rater_1), Counter(rater_2)
    p_e = sum(c1[k] * c2[k] for k in set(c1) | set(c2)) / (n * n)
    if math.isclose(p_e, 1.0):
        return None
    return (p_o - p_e) / (1.0 - p_e)


def pairwise_agreement(labels: dict[str, dict[int, Hashable]]) -> list[dict[str, Any]]:
    """Kappa and raw agreement for every pair of raters, over the items both judged.

    `labels` maps rater -> {item_id: outcome}. Pairs with no common item are listed with n=0.
    """
    out = []
    for r1, r2 in itertools.combinations(sorted(labels), 2):
        common = sorted(set(labels[r1]) & set(labels[r2]))
        a = [labels[r1][i] for i in common]
        b = [labels[r2][i] for i in common]
        out.append(
            {
                "raters": [r1, r2],
                "n": len(common),
                "kappa": cohen_kappa(a, b) if common else None,
                "percent_agreement": (100.0 * sum(x == y for x, y in zip(a, b)) / len(common)) if common else None,
            }
        )
    return out


def _clean(x: Any) -> Any:
    """NaN -> None, so the JSON we write is standard JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _winrate(preferences: list[float]) -> dict[str, Any]:
    from alpacakit.evaluate.winrate import get_winrate

    return get_winrate(preferences) if preferences else {"win_rate": None, "standard_error": None, "n_total": 0}


def export_results(db: str | Path) -> dict[str, Any]:
    """Everything a report needs from the study in `db`, as a JSON-ready dict.

    Keys: systems (slot, name, file, sha256, and its win rate in percent), win_rate (the
    second system against the first, AlpacaEval's fields, per-item averaged), pooled (the same
    over all judgments), per_rater, agreement (pairwise kappa, mean kappa), position (how often
    raters chose the left answer), progress, and judgments (one row each, blind to nothing:
    system names are filled in here, after the fact).
    """
    from alpacakit.evaluate.human.store import HumanEvalStore, _check_sqlite

    db = Path(db)
    if not db.is_file():
        from alpacakit.errors import DataError

        raise DataError(f"{db}: no such database", hint="pass the --db file that `alpacakit eval human` wrote")
    _check_sqlite(db)
    store = HumanEvalStore(db)
    systems = store.systems()
    if len(systems) != 2:
        from alpacakit.errors import DataError

        raise DataError(f"{db} holds no study (no answer files were loaded into it)")
    names = {s.slot: s.name for s in systems}
    items = {it.item_id: it for it in store.items()}
    rows = store.judgments()
    meta = store.meta()

    by_item: dict[int, list[float]] = defaultdict(list)
    labels: dict[str, dict[int, str]] = defaultdict(dict)
    display: dict[str, str] = {}
    for r in rows:
        by_item[r["item_id"]].append(_PREFERENCE[r["winner"]])
        labels[r["rater"]][r["item_id"]] = OUTCOMES[r["winner"]]
        display[r["rater"]] = r["display"]
    item_prefs = [sum(v) / len(v) for _, v in sorted(by_item.items())]
    pooled_prefs = [_PREFERENCE[r["winner"]] for r in rows]
    headline = _winrate(item_prefs)
    pooled = _winrate(pooled_prefs)

    def side(slot: int, wr: dict[str, Any]) -> dict[str, Any]:
        """One system's view of the headline: its wins, losses, ties and win rate."""
        second = wr.get("win_rate")
        return {
            "slot": slot,
            "name": names[slot],
            "file": systems[slot - 1].file,
            "sha256": systems[slot - 1].sha256,
            "win_rate": (second if slot == 2 else 100.0 - second) if second is not None else None,
            "wins": wr.get("n_wins" if slot == 2 else "n_wins_base", 0),
            "losses": wr.get("n_wins_base" if slot == 2 else "n_wins", 0),
            "ties": wr.get("n_draws", 0),
        }

    per_rater = {}
    for key, labs in sorted(labels.items()):
        prefs = [_PREFERENCE[r["winner"]] for r in rows if r["rater"] == key]
        secs = [r["seconds"] for r in rows if r["rater"] == key and r["seconds"] is not None]
        wr = _winrate(prefs)
        per_rater[display[key]] = {
            "n": len(labs),
            "win_rate_second": wr.get("win_rate"),
            "median_seconds": sorted(secs)[len(secs) // 2] if secs else None,
        }
    pairs = pairwise_agreement(labels)
    for p in pairs:
        p["raters"] = [display[k] for k in p["raters"]]
    kappas = [p["kappa"] for p in pairs if p["kappa"] is not None]
    pressed = Counter(r["pressed"] for r in rows)
    decisive = pressed["A"] + pressed["B"]

    judgments = []
    for r in rows:
        it = items[r["item_id"]]
        judgments.append(
            {
                "rater": r["display"],
                "item_id": r["item_id"],
                "instruction": it.instruction,
                "input": it.input,
                "dataset": it.dataset,
                "left": names[r["left_slot"]],
                "right": names[3 - r["left_slot"]],
                "pressed": r["pressed"],
                "winner": names[r["winner"]] if r["winner"] else "tie",
                "preference": _PREFERENCE[r["winner"]],
                "seconds": r["seconds"],
                "created_at": r["created_at"],
            }
        )
    return _clean(
        {
            "format": "alpacakit-human-ab/1",
            "db": str(db),
            "seed": int(meta.get("seed", 0)),
            "systems": [side(1, headline), side(2, headline)],
            "n_items": len(items),
            "n_items_judged": len(by_item),
            "n_judgments": len(rows),
            "n_raters": len(labels),
            "win_rate": {"system": names[2], "baseline": names[1], "unit": "item (raters averaged)", **headline},
            "pooled": {"system": names[2], "baseline": names[1], "unit": "judgment", **pooled},
            "per_rater": per_rater,
            "agreement": {
                "outcomes": sorted(OUTCOMES.values()),
                "pairs": pairs,
                "mean_kappa": sum(kappas) / len(kappas) if kappas else None,
            },
            "position": {
                "left": pressed["A"],
                "right": pressed["B"],
                "tie": pressed["tie"],
                "left_share_of_decisive": pressed["A"] / decisive if decisive else None,
            },
            "unmatched": {
                "only_in_first": int(meta.get("only_in_1", 0)),
                "only_in_second": int(meta.get("only_in_2", 0)),
                "duplicates": int(meta.get("duplicates", 0)),
            },
            "judgments": judgments,
        }
    )


def summary_lines(res: dict[str, Any]) -> list[str]:
    """A few human-readable lines for the terminal."""
    s1, s2 = res["systems"]
    lines = [
        f"{res['n_judgments']} judgments by {res['n_raters']} rater(s) on {res['n_items_judged']} of "
        f"{res['n_items']} items"
    ]
    for s in (s1, s2):
        wr = "n/a" if s["win_rate"] is None else f"{s['win_rate']:.1f}%"
        lines.append(f"  {s['name']}: win rate {wr} (wins {s['wins']}, losses {s['losses']}, ties {s['ties']})")
    se = res["win_rate"].get("standard_error")
    if se is not None:
        lines.append(f"  standard error {se:.1f} points (over items)")
    for p in res["agreement"]["pairs"]:
        k = "undefined" if p["kappa"] is None else f"{p['kappa']:.2f}"
        lines.append(f"  kappa {p['raters'][0]} / {p['raters'][1]}: {k} over {p['n']} common items")
    return lines

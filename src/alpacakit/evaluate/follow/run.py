"""`alpacakit eval follow`: a model answers the verifiable instructions, a program scores them.

Answers come from `eval generate` (same prompting, journal and resume: a killed run continues
and never asks twice), greedy and short; each answer is then checked against its item's
constraints (`checks.py`) and its ending is classified from what the runtime saw:

- `eos`: the model ended its answer itself, within the token limit;
- `stop_string`: it started a new prompt section (a base model writing `### Instruction:`),
  cut there by a stop string;
- `length`: it ran to the token limit.

The result file (`follow-SYSTEM.json`) holds per-item passes, so two systems that answered the
same items can be compared pair by pair (`score.paired_difference`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig

FORMAT = "alpacakit-follow/1"


def outputs_path(result: Path) -> Path:
    """Where the raw answers behind `eval/follow-x.json` live: `eval/follow/outputs-x.json`."""
    return result.parent / "follow" / f"outputs-{result.stem.removeprefix('follow-')}.json"


def ending(record: dict[str, Any]) -> str:
    if record.get("finish_reason") == "length":
        return "length"
    return record.get("stopped_by") or "stop"  # 'stop': an endpoint that does not say why


def run_follow(
    model: str,
    out: str | Path,
    *,
    system: str | None = None,
    limit: int | None = None,
    max_tokens: int = 96,
    config: AlpacakitConfig | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Answer (resumably) and score the built-in verifiable instruction set with `model`."""
    from alpacakit.config import load_config
    from alpacakit.errors import ConfigError
    from alpacakit.evaluate.outputs import generate_outputs
    from alpacakit.io import atomic_write_json

    out = Path(out)
    label = system or out.stem.removeprefix("follow-")
    cfg = config or load_config(
        None,
        None,
        {
            "eval": {
                "eval_set": "follow",
                "limit": limit,
                "system": {"model": model, "max_tokens": max_tokens, "temperature": 0.0},
            }
        },
    )
    answers_file = outputs_path(out)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    res = generate_outputs(cfg, answers_file, name=label, show_progress=show_progress)
    if res.status != "complete":
        raise ConfigError(
            f"answering the verifiable instructions stopped: {res.status}", hint="rerun the same command to continue"
        )
    result = score_file(answers_file, label=label, model=model)
    atomic_write_json(out, result)
    return result


def score_file(answers_file: str | Path, *, label: str, model: str | None = None) -> dict[str, Any]:
    """Score an outputs file (AlpacaEval JSON with the follow set's ids) against the checks."""
    import json

    from alpacakit.evaluate.follow.score import load_follow_set, score_answers

    recs = json.loads(Path(answers_file).read_text(encoding="utf-8"))
    by_id = {str(r["id"]): r for r in recs if isinstance(r, dict) and "id" in r}
    items = [it for it in load_follow_set() if it["id"] in by_id]
    scored = score_answers(items, {i: r["output"] for i, r in by_id.items()})
    endings = {i: ending(r) for i, r in by_id.items()}
    for row in scored["items"]:
        row["ending"] = endings.get(row["id"])
    counts: dict[str, int] = {}
    for e in endings.values():
        counts[e] = counts.get(e, 0) + 1
    n = len(endings) or 1
    return {
        "format": FORMAT,
        "system": label,
        "model": model,
        "answers": str(answers_file),
        **scored,
        "endings": counts,
        "clean_stop_rate": counts.get("eos", 0) / n,
    }

"""Training examples that copy an eval instruction (ROUGE-L F above a threshold, 0.7 by default).

A win rate on instructions the student was trained on measures memory, not skill. The check
uses the exact ROUGE-L of `curate/rouge.py` (the same float `rouge_score` computes): the eval
instructions form the pool, each training instruction is checked against it in decision-only
mode (microseconds each), and only the few that hit are scored against every eval instruction
to list all the pairs above the threshold.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alpacakit.curate.rouge import RougeDeduper, rouge_l_f
from alpacakit.errors import DataError


def find_contaminated(
    train_instructions: Sequence[str], eval_instructions: Sequence[str], threshold: float = 0.7
) -> list[tuple[int, int, float]]:
    """Every (train index, eval index, ROUGE-L F) with F > `threshold`, by train then eval index.

    `generate` and `curate` can call this to drop training examples before they are used.
    """
    pool = RougeDeduper(threshold, keep_most_similar=1, stats=False)
    for text in eval_instructions:
        pool.add_seed(text)
    pool.prime(train_instructions)
    pairs: list[tuple[int, int, float]] = []
    for i, text in enumerate(train_instructions):
        if pool.check(text).kept:
            continue
        for j, ev in enumerate(eval_instructions):
            f = rouge_l_f(ev, text)
            if f > threshold:
                pairs.append((i, j, f))
    return pairs


def check_contamination(
    train_path: str | Path,
    eval_set: str | Path = "alpacakit",
    *,
    threshold: float = 0.7,
    instances: str = "first",
    write_clean: str | Path | None = None,
) -> dict[str, Any]:
    """Compare a training file with an eval set; optionally write the training file without the copies.

    Returns a JSON-ready report: counts, threshold, and each pair (indices, eval id, score,
    both instructions). `write_clean` gets the kept training records (JSON list for a .json
    name, else JSONL), in their original order and fields.
    """
    from alpacakit.evaluate.evalsets import load_eval_set
    from alpacakit.io import atomic_write_json, read_records, write_jsonl

    t0 = time.monotonic()
    records = read_records(train_path, required=["instruction"])
    bad = [i for i, r in enumerate(records) if not isinstance(r.get("instruction"), str)]
    if bad:
        raise DataError(f"{train_path}: record {bad[0]}: 'instruction' should be text")
    items = load_eval_set(eval_set, instances=instances)
    train_texts = [r["instruction"] for r in records]
    pairs = find_contaminated(train_texts, [it.instruction for it in items], threshold)
    dirty = sorted({i for i, _, _ in pairs})
    report: dict[str, Any] = {
        "threshold": threshold,
        "train": str(train_path),
        "eval_set": str(eval_set),
        "n_train": len(records),
        "n_eval": len(items),
        "n_contaminated_train": len(dirty),
        "n_contaminated_eval": len({j for _, j, _ in pairs}),
        "pairs": [
            {
                "train_index": i,
                "eval_index": j,
                "eval_id": items[j].id,
                "rouge_l": round(f, 6),
                "train_instruction": train_texts[i],
                "eval_instruction": items[j].instruction,
            }
            for i, j, f in pairs
        ],
        "seconds": round(time.monotonic() - t0, 3),
    }
    if write_clean is not None:
        dirty_set = set(dirty)
        kept = [r for i, r in enumerate(records) if i not in dirty_set]
        if Path(write_clean).suffix.lower() == ".json":
            atomic_write_json(write_clean, kept)
        else:
            write_jsonl(write_clean, kept)
        report["clean"] = {"path": str(write_clean), "kept": len(kept), "removed": len(dirty)}
    return report

"""Curation as a pipeline stage: `data/examples.jsonl` -> `data/train.jsonl` + `data/heldout.jsonl`.

Why here and not in the quickstart: dropping copies of the eval set and holding teacher
examples out are what any run needs before training an evaluated student; the stage records
what it did in `data/curate.json` (a `CurateManifest`) so the split can be checked later.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from alpacakit.manifest import CurateManifest, StageResult
from alpacakit.rundir import RunDir

if TYPE_CHECKING:
    from alpacakit.curate.config import CurateConfig


def run(
    section: CurateConfig, run_dir: RunDir, *, heldout: int = 0, eval_set: str = "alpacakit"
) -> StageResult[CurateManifest]:
    """Drop examples that copy an eval instruction (ROUGE-L F above `section.threshold`), then
    hold `heldout` out."""
    from alpacakit.evaluate.contamination import check_contamination
    from alpacakit.io import atomic_write_json

    rep = check_contamination(run_dir.examples, eval_set, threshold=section.threshold, write_clean=run_dir.train_file)
    run_dir.eval.mkdir(parents=True, exist_ok=True)
    atomic_write_json(run_dir.contamination, rep)
    held = hold_out(run_dir.train_file, run_dir.heldout_file, heldout)
    manifest = CurateManifest(
        examples=str(run_dir.examples),
        train_file=str(run_dir.train_file),
        heldout_file=str(run_dir.heldout_file),
        n_examples=rep["n_train"],
        n_contaminated=rep["n_contaminated_train"],
        n_heldout=held,
        n_train=rep["clean"]["kept"] - held,
        contamination=str(run_dir.contamination),
    )
    atomic_write_json(run_dir.manifest("curate"), manifest.model_dump(mode="json"))
    summary = (
        f"{manifest.n_contaminated} of {manifest.n_examples} examples copied an eval instruction and were "
        f"dropped; {held} held out for the likelihood check ({run_dir.heldout_file}); training on "
        f"{manifest.n_train} ({run_dir.train_file})"
    )
    paths = {"train": run_dir.train_file, "heldout": run_dir.heldout_file}
    return StageResult("curate", "complete", summary, manifest, paths)


def hold_out(train_file: Path, heldout_file: Path, n: int, seed: int = 0) -> int:
    """Move a seeded pick of `n` examples from `train_file` to `heldout_file` (both JSONL); the
    same input gives the same split, so a rerun of the stage changes nothing."""
    from alpacakit.io import atomic_write_text, iter_jsonl

    records = [r for _, r in iter_jsonl(train_file)]
    n = min(n, len(records) // 4)  # never more than a quarter of the data
    picked = set(random.Random(seed).sample(range(len(records)), n)) if n else set()

    def dump(rows: list[dict]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    atomic_write_text(heldout_file, dump([r for i, r in enumerate(records) if i in picked]))
    atomic_write_text(train_file, dump([r for i, r in enumerate(records) if i not in picked]))
    return n

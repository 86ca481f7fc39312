"""Training as a pipeline stage: the `train` section and a run folder in, `model/` out.

The run folder decides the paths (data: `RunDir.train_file`, output: `RunDir.model`), so the
section's `data`/`output_dir` are for the verb alone; a finished model folder is not trained
again, a partial one resumes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alpacakit.manifest import StageResult, TrainManifest, read_manifest
from alpacakit.rundir import RunDir

if TYPE_CHECKING:
    from alpacakit.train.config import TrainConfig


def run(section: TrainConfig, run_dir: RunDir) -> StageResult[TrainManifest]:
    """Fine-tune `section.base` on `run_dir.train_file` into `run_dir.model`."""
    from alpacakit.train.outputs import partial_dir
    from alpacakit.train.recipe import train

    done = finished(run_dir)
    if done is not None:
        return StageResult("train", "skipped", "already complete: skipped", done, {"model": run_dir.model})
    cfg = section.model_copy(update={"data": str(run_dir.train_file)})
    train(cfg, output_dir=run_dir.model, resume=partial_dir(run_dir.model).exists())
    m = finished(run_dir)
    assert m is not None
    total = m.durations_s.get("total") or 0.0
    summary = f"{m.steps} steps, final loss {m.final_train_loss}, {total:.0f} s"
    return StageResult("train", "complete", summary, m, {"model": run_dir.model})


def finished(run_dir: RunDir) -> TrainManifest | None:
    """The manifest of a complete model folder, else None."""
    from alpacakit.errors import DataError

    path = run_dir.manifest("train")
    try:
        m = read_manifest(path) if path.is_file() else None
    except DataError:
        return None
    return m if isinstance(m, TrainManifest) and m.complete else None

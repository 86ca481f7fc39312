"""Evaluation as pipeline stages: the `eval` section and a run folder in, typed results out.

Each entry fixes the file names the report looks for (`RunDir.outputs`, `RunDir.pairwise`)
and returns the manifest the library function wrote; what a system is called (its label) is
the name of its files, so `alpacakit report` finds it without being told.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from alpacakit.manifest import EvalOutputsManifest, PairwiseManifest, StageResult, read_manifest
from alpacakit.rundir import RunDir

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig


def answers(
    config: AlpacakitConfig, run_dir: RunDir, label: str, model: str, *, show_progress: bool = True
) -> StageResult[EvalOutputsManifest]:
    """`model` answers the eval set (`config.eval`) into `run_dir.outputs(label)`."""
    from alpacakit.evaluate.outputs import generate_outputs

    cfg = config.model_copy(deep=True)
    cfg.eval.system.model = model
    out = run_dir.outputs(label)
    res = generate_outputs(cfg, out, name=label, show_progress=show_progress)
    m = read_manifest(run_dir.manifest("eval-generate", label))
    assert isinstance(m, EvalOutputsManifest)
    return StageResult("answers", res.status, res.summary(), m, {"outputs": out})


def pairwise(
    config: AlpacakitConfig,
    run_dir: RunDir,
    model: str,
    baseline: str,
    *,
    files: tuple[Path, Path] | None = None,
    name: str | None = None,
    limit: int | None = None,
    show_progress: bool = True,
) -> StageResult[PairwiseManifest]:
    """`config.eval.judge` compares `model`'s answers with `baseline`'s, into
    `run_dir.pairwise(model, baseline)` (or `eval/pairwise-<name>.json`); `files` are other
    outputs files than the labels' own."""
    from alpacakit.evaluate.pairwise import judge_pairwise

    a, b = files or (run_dir.outputs(model), run_dir.outputs(baseline))
    out = run_dir.manifest("eval-pairwise", name) if name else run_dir.pairwise(model, baseline)
    res = judge_pairwise(a, b, config, show_progress=show_progress, limit=limit, out=out)
    m = read_manifest(out)
    assert isinstance(m, PairwiseManifest)
    return StageResult("pairwise", res.status, res.summary(), m, {"result": out})

"""Export as a pipeline stage: `model/` in, a verified GGUF in `export/` out.

Verified against the trained model: what is evaluated, served and handed over must answer like
the student that was trained. `auto` writes the most compact file that does (f16 when the
compact one misses the bar); a named quantization that misses it raises with the figures.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from alpacakit.export.config import ExportConfig
from alpacakit.manifest import ExportManifest, StageResult, read_manifest
from alpacakit.rundir import RunDir


def run(
    section: ExportConfig,
    run_dir: RunDir,
    *,
    min_agreement: float = 0.95,
    progress: Callable[[str], None] | None = None,
) -> StageResult[ExportManifest]:
    """Export `run_dir.model` to `run_dir.gguf(section.quant)`, verified (skipped when it and its
    sidecar exist)."""
    from alpacakit.export.gguf import export_gguf

    quant = section.quant
    gguf, sidecar = run_dir.gguf(quant), run_dir.manifest("export", quant)
    if gguf.is_file() and sidecar.is_file():
        return StageResult("export", "skipped", "already complete: skipped", _read(sidecar), {"gguf": gguf})
    res = export_gguf(
        run_dir.model,
        gguf,
        quant,
        verify=True,
        min_agreement=min_agreement,
        progress=progress,
        converter=section.converter,
    )
    fell_back = next((f" ({n})" for n in res.notes if n.startswith("auto: ")), "")
    v = res.verification or {}
    # The trained prompt, beside the GGUF: eval asks the student exactly as it was trained.
    shutil.copyfile(run_dir.model / "prompt_format.json", run_dir.export / "prompt_format.json")
    summary = (
        f"{res.path} ({res.size_bytes / 1e6:.0f} MB, {res.quant}{fell_back}); agrees with the trained model on "
        f"{v.get('top1_agreement', 0):.1%} of next-token predictions ({v.get('next_token_agreement', 0):.1%} "
        f"at the answer's first token); model card {res.model_card}"
    )
    return StageResult("export", "complete", summary, _read(sidecar), {"gguf": gguf, "card": res.model_card})


def _read(path) -> ExportManifest:
    m = read_manifest(path)
    assert isinstance(m, ExportManifest)
    return m

"""`generate` as a pipeline stage: settings and a run folder in, a typed result out.

Thin on purpose: the verb and the quickstart call the same library function
(`runner.generate`); this only fixes where it writes (`RunDir.data`) and reads back the
manifest it wrote as a `GenerateManifest`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from alpacakit.manifest import GenerateManifest, StageResult, read_manifest
from alpacakit.rundir import RunDir

if TYPE_CHECKING:
    from alpacakit.config import AlpacakitConfig


def run(config: AlpacakitConfig, run_dir: RunDir, *, show_progress: bool = True) -> StageResult[GenerateManifest]:
    """Generate (or continue generating) `config.generate.num` examples into `run_dir.data`."""
    from alpacakit.generate.runner import generate

    res = generate(config, run_dir.data, show_progress=show_progress)
    manifest = read_manifest(run_dir.manifest("generate"))
    assert isinstance(manifest, GenerateManifest)
    return StageResult("generate", res.status, res.summary(), manifest, {"examples": run_dir.examples})

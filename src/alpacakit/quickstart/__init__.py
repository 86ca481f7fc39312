"""`alpacakit quickstart`: the whole Alpaca formula in one resumable command.

generate (teacher writes data) -> clean (drop copies of the eval set, hold some out) -> train
(LoRA on the base) -> export (GGUF, verified against the trained model) -> answers (base and
student answer held-out instructions) -> follow (verifiable instructions) -> likelihood
(held-out teacher answers under base and student) -> judge (student vs base, both orders) ->
bench (capability items) -> report (every metric paired, with its interval; the verdict from
the best-powered ones), then before/after answers and the commands to chat and serve.

Each stage calls the same library function as its CLI verb and writes the same files, so a
quickstart run folder is an ordinary run folder (`alpacakit report RUN` works on it). Every
stage is resumable on its own (journals, checkpoints); a stage whose output is complete is
skipped, so rerunning the command after a crash or Ctrl-C continues where it stopped.
What each profile runs is data: `profiles.yaml` beside this file, a partial alpacakit.yaml
(plus a `quickstart:` section) that `--config` and `--set` are layered on.
"""

from __future__ import annotations

from alpacakit.quickstart.pipeline import (
    QuickstartOptions,
    QuickstartProfile,
    QuickstartSettings,
    load_profile,
    run_quickstart,
)

__all__ = ["QuickstartOptions", "QuickstartProfile", "QuickstartSettings", "load_profile", "run_quickstart"]

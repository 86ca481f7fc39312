"""What a finished run leaves behind: the loss curve, the manifest, the atomic folder swap."""

from __future__ import annotations

import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in ("alpacakit", "torch", "transformers", "peft", "trl", "accelerate", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def loss_series(stages: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Train and eval loss against a global step that runs on across stages."""
    train: list[tuple[int, float]] = []
    evals: list[tuple[int, float]] = []
    offset = 0
    for st in stages:
        last = 0
        for e in st.get("log_history", []):
            step = int(e.get("step", 0))
            last = max(last, step)
            if "loss" in e:
                train.append((offset + step, float(e["loss"])))
            if "eval_loss" in e:
                evals.append((offset + step, float(e["eval_loss"])))
        offset += last
    return {"train": train, "eval": evals}


def plot_losses(stages: list[dict[str, Any]], path: Path) -> Path:
    """loss.png: training loss per step (and validation loss), stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = loss_series(stages)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if series["train"]:
        xs, ys = zip(*series["train"])
        ax.plot(xs, ys, label="train loss", color="#1f77b4", linewidth=1.4)
    if series["eval"]:
        xs, ys = zip(*series["eval"])
        ax.plot(xs, ys, "o-", label="validation loss", color="#d62728")
    offset = 0
    for st in stages[:-1]:
        offset += max((int(e.get("step", 0)) for e in st.get("log_history", [])), default=0)
        ax.axvline(offset, color="grey", linestyle=":", linewidth=1)
    if len(stages) > 1:
        ax.set_title("loss (dotted lines: stage boundaries)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy on response tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def partial_dir(out: str | Path) -> Path:
    """Where a model folder is written until it is complete: `OUT.partial/` beside `OUT/`."""
    out = Path(out)
    return out.with_name(out.name + ".partial")


def publish(partial: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished `OUT.partial/` to `OUT/`: readers see no folder or a complete one.

    With `overwrite`, an existing OUT is moved aside first and deleted only after the rename.
    """
    old = None
    if out.exists():
        if not overwrite:
            raise FileExistsError(out)
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)

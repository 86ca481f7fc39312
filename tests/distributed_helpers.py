"""What the multi-process training tests share (test_train_ddp.py, test_train_fsdp.py, test_train_deepspeed.py).

Each of them runs the real CLI, `alpacakit train --launcher accelerate --num-processes 2`, as a
subprocess on a tiny Llama built from a config and 16 one-word Alpaca examples. These helpers
write that setup, launch (and kill) the runs and read back what they left.

Nothing heavy is imported at import time: each test module's `pytest.importorskip` calls still
decide whether it runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

WORDS = [
    "red",
    "blue",
    "cat",
    "dog",
    "sun",
    "tea",
    "fox",
    "bread",
    "milk",
    "rain",
    "salt",
    "tree",
    "sky",
    "ice",
    "owl",
    "bee",
]


def write_examples(path: Path, pairs: Iterable[tuple[str, str]]) -> Path:
    """An Alpaca JSONL file: one `{"instruction", "input": "", "output"}` line per (instruction, output)."""
    path.write_text("".join(json.dumps({"instruction": i, "input": "", "output": o}) + "\n" for i, o in pairs))
    return path


def write_tiny_setup(folder: Path, **configs: str) -> dict[str, Path]:
    """In `folder`: `base/` (a tiny Llama, 43k parameters), `data.jsonl` ("Repeat W." -> W for each
    of WORDS) and, for each NAME=YAML in `configs`, a training config `NAME.yaml` that trains that
    base on that data with the settings YAML. Returns {"dir", "base", "data", NAME...: their paths}."""
    from alpacakit.train.tiny import make_tiny_base

    base = make_tiny_base(folder / "base")
    data = write_examples(folder / "data.jsonl", ((f"Repeat {w}.", w) for w in WORDS))
    paths = {"dir": folder, "base": base, "data": data}
    for name, settings in configs.items():
        paths[name] = folder / f"{name}.yaml"
        paths[name].write_text(f"base: {base}\ndata: {data}\n{settings}")
    return paths


def train_env(**kw: str) -> dict[str, str]:
    """Offline, one thread per rank (2 ranks on 2 cores), unbuffered output."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **kw}


def train_cmd(args: Sequence[str | Path], out: Path, accelerate_config: str | Path | None = None) -> list[str]:
    """`alpacakit train ARGS -o OUT --launcher accelerate --num-processes 2 [--accelerate-config C]`."""
    cmd = [sys.executable, "-m", "alpacakit.cli.main", "train", *map(str, args), "-o", str(out)]
    cmd += ["--launcher", "accelerate", "--num-processes", "2"]
    if accelerate_config is not None:
        cmd += ["--accelerate-config", str(accelerate_config)]
    return cmd


def run_train(
    args: Sequence[str | Path], out: Path, accelerate_config: str | Path | None = None, *, timeout: float
) -> subprocess.CompletedProcess:
    """Run `train_cmd(...)` to the end; it must succeed (the failure shows the ends of its output)."""
    r = subprocess.run(
        train_cmd(args, out, accelerate_config), env=train_env(), capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-5000:])
    return r


def kill_tree(pid: int) -> None:
    """kill -9 a process and all its descendants (the CLI, the launcher and both ranks)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def train_until_killed(cmd: list[str], marker: Path, *, step_delay_s: float, within_s: float, then_s: float) -> None:
    """Start `cmd` slowed by ALPACAKIT_TRAIN_STEP_DELAY_S, wait (at most `within_s`) for a checkpoint's
    `marker` file, let it train `then_s` more seconds (work the resume must redo), then kill the tree."""
    proc = subprocess.Popen(
        cmd,
        env=train_env(ALPACAKIT_TRAIN_STEP_DELAY_S=str(step_delay_s)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + within_s
        while not marker.exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, f"no {marker.parent.name} in time"
            time.sleep(0.1)
        time.sleep(then_s)
    finally:
        kill_tree(proc.pid)


def manifest(out: Path) -> dict[str, Any]:
    return json.loads((out / "manifest.json").read_text())


def rank_reports(out: Path, stage: str = "01-main") -> list[dict[str, Any]]:
    """The per-rank reports of one stage, rank 0 then rank 1."""
    return [json.loads((out / "logs" / "ranks" / f"{stage}-rank{i}.json").read_text()) for i in (0, 1)]


def assert_resumed_run_equals(
    uninterrupted: Path, resumed: Path, steps: int, weights: str = "merged/model.safetensors"
) -> None:
    """The resumed run's final weights (`weights`, in the model folder) and every logged loss equal
    the uninterrupted run's: weights, Adam moments and data order all came back from the checkpoint."""
    import torch
    from safetensors.torch import load_file

    a = load_file(uninterrupted / weights)
    b = load_file(resumed / weights)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    la = {e["step"]: e["loss"] for e in manifest(uninterrupted)["losses"]}
    lb = {e["step"]: e["loss"] for e in manifest(resumed)["losses"]}
    assert la.keys() == lb.keys() == set(range(1, steps + 1))
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-6), step

"""kill -9 in the middle of training, then --resume: the same result as a run never interrupted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from distributed_helpers import assert_resumed_run_equals, train_env, train_until_killed  # noqa: E402

from alpacakit.train.tiny import make_tiny_base  # noqa: E402
from alpacakit.train.trainer import CHECKPOINT_MARKER  # noqa: E402

WORDS = ["red", "blue", "cat", "dog", "sun", "tea", "fox", "bread", "milk", "rain", "salt", "tree"]


def _setup(tmp: Path) -> tuple[Path, Path]:
    base = make_tiny_base(tmp / "base")
    data = tmp / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}"}) + "\n"
            for w in WORDS
        )
    )
    cfg = tmp / "train.yaml"
    # LoRA dropout and a shuffled data order make the RNG state matter; 2 epochs cross an epoch boundary.
    cfg.write_text(
        f"base: {base}\ndata: {data}\nmethod: lora\nlora: {{r: 4, alpha: 8, dropout: 0.1, target_modules: [q_proj, v_proj]}}\n"
        "epochs: 3\nbatch_size: 2\ngrad_accum: 2\nlr: 5.0e-3\nscheduler: cosine\nwarmup_ratio: 0.1\n"
        "save_steps: 2\nsave_total_limit: 2\nlogging_steps: 1\n"
    )
    return cfg, data


def _cmd(cfg: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "alpacakit.cli.main", "train", str(cfg), "-o", str(out), *extra]


_env = train_env  # offline, one thread, unbuffered


ADAPTER = "adapter/adapter_model.safetensors"


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / ADAPTER)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights_and_losses(tmp_path):
    cfg, _ = _setup(tmp_path)
    whole = tmp_path / "whole"
    r = subprocess.run(_cmd(cfg, whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    ckdir = partial / "stages" / "01-main" / "checkpoints"
    # killed somewhere inside step 5 or 6: the work after the checkpoint is lost
    train_until_killed(
        _cmd(cfg, out), ckdir / "checkpoint-4" / CHECKPOINT_MARKER, step_delay_s=0.7, within_s=300, then_s=0.9
    )
    assert not out.exists(), "a killed run must not leave a folder that looks complete"
    assert partial.exists()

    r = subprocess.run(_cmd(cfg, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--resume" in r.stderr  # no silent restart over an interrupted run

    r = subprocess.run(_cmd(cfg, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from checkpoint-" in r.stdout
    assert not partial.exists()

    assert_resumed_run_equals(whole, out, 9, weights=ADAPTER)
    ma = json.loads((whole / "manifest.json").read_text())
    mb = json.loads((out / "manifest.json").read_text())
    assert mb["stages"][0]["resumed_from"].startswith("checkpoint-")
    assert ma["steps"] == mb["steps"] == 9


def test_resume_with_a_changed_config_is_refused(tmp_path):
    cfg, _ = _setup(tmp_path)
    out = tmp_path / "m"
    partial = tmp_path / "m.partial"
    partial.mkdir()
    from alpacakit.train.config import load_train_config
    from alpacakit.train.recipe import RUN_CONFIG, _config_dict

    saved = _config_dict(load_train_config(cfg).train)
    (partial / RUN_CONFIG).write_text(json.dumps(saved))
    r = subprocess.run(
        _cmd(cfg, out, "--resume", "--set", "lr=1e-4"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 2
    assert "lr: 0.005 -> 0.0001" in r.stderr

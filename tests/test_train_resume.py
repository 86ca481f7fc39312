"""kill -9 in the middle of training, then --resume: the same result as a run never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

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


def _env(**kw: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **kw}


def _adapter(out: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(out / "adapter" / "adapter_model.safetensors")


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_weights_and_losses(tmp_path):
    cfg, _ = _setup(tmp_path)
    whole = tmp_path / "whole"
    r = subprocess.run(_cmd(cfg, whole), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]

    out = tmp_path / "killed"
    partial = tmp_path / "killed.partial"
    ckdir = partial / "stages" / "01-main" / "checkpoints"
    proc = subprocess.Popen(
        _cmd(cfg, out),
        env=_env(ALPACAKIT_TRAIN_STEP_DELAY_S="0.7"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not (ckdir / "checkpoint-4" / CHECKPOINT_MARKER).exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint-4 in time"
            time.sleep(0.1)
        time.sleep(0.9)  # somewhere inside step 5 or 6: work after the checkpoint is lost
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed run must not leave a folder that looks complete"
    assert partial.exists()

    r = subprocess.run(_cmd(cfg, out), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "--resume" in r.stderr  # no silent restart over an interrupted run

    r = subprocess.run(_cmd(cfg, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from checkpoint-" in r.stdout
    assert not partial.exists()

    a, b = _adapter(whole), _adapter(out)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    ma = json.loads((whole / "manifest.json").read_text())
    mb = json.loads((out / "manifest.json").read_text())
    assert mb["stages"][0]["resumed_from"].startswith("checkpoint-")
    assert ma["steps"] == mb["steps"] == 9
    la = {e["step"]: e["loss"] for e in ma["losses"]}
    lb = {e["step"]: e["loss"] for e in mb["losses"]}
    assert la.keys() == lb.keys()
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-6), step


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

"""DeepSpeed ZeRO-3 on 2 CPU processes: weights really partitioned, the save gathers them whole, resume.

DeepSpeed's CPU accelerator (gloo) runs ZeRO-3 here; `stage3_param_persistence_threshold: 0`
partitions even the tiny model's small tensors (by default they would stay whole on every rank,
and a save by rank 0 alone would look right by accident).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

from alpacakit.train.tiny import make_tiny_base  # noqa: E402
from alpacakit.train.trainer import CHECKPOINT_MARKER  # noqa: E402

# Two training processes each: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

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
CFG = (
    "method: full\nprecision: fp32\nloss: supervised\nepochs: 1\nbatch_size: 2\nlr: 1.0e-2\nsave_steps: 2\n"
    "keep_checkpoints: true\nlogging_steps: 1\n"
)


def _env(**kw: str) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **kw}


def _cmd(cfg: Path, out: Path, accelerate_config: Path | str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "alpacakit.cli.main",
        "train",
        str(cfg),
        "-o",
        str(out),
        "--launcher",
        "accelerate",
        "--num-processes",
        "2",
        "--accelerate-config",
        str(accelerate_config),
        *extra,
    ]


def _train(cfg: Path, out: Path, accelerate_config: Path | str, *extra: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        _cmd(cfg, out, accelerate_config, *extra), env=_env(), capture_output=True, text=True, timeout=400
    )
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-5000:])
    return r


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zero3")
    base = make_tiny_base(d / "base")
    data = d / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"Repeat {w}.", "input": "", "output": w}) + "\n" for w in WORDS)
    )
    cfg = d / "train.yaml"
    cfg.write_text(f"base: {base}\ndata: {data}\n{CFG}")
    ds_json = d / "zero3.json"
    ds_json.write_text(
        json.dumps(
            {
                "zero_optimization": {
                    "stage": 3,
                    "stage3_param_persistence_threshold": 0,
                    "stage3_gather_16bit_weights_on_model_save": True,
                },
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "train_batch_size": "auto",
                "gradient_clipping": "auto",
                "bf16": {"enabled": "auto"},
                "fp16": {"enabled": "auto"},
            }
        )
    )
    acc = d / "zero3.yaml"
    acc.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_machines: 1\nnum_processes: 2\n"
        f"machine_rank: 0\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_json}\n  zero3_init_flag: true\n"
    )
    return {"dir": d, "base": base, "cfg": cfg, "acc": acc}


@pytest.fixture(scope="module")
def zero3(setup) -> Path:
    out = setup["dir"] / "zero3"
    _train(setup["cfg"], out, setup["acc"])
    return out


def test_zero3_on_two_cpu_processes_partitions_the_weights_and_saves_them_whole(setup, zero3):
    tmp_path, base = setup["dir"], setup["base"]
    _train(setup["cfg"], tmp_path / "ddp", "ddp")

    # partitioned: in the checkpoint, each rank's module holds empty placeholders and half the optimizer's fp32 weights
    step = zero3 / "stages" / "01-main" / "checkpoints" / "checkpoint-4" / "global_step4"
    n_params = 0
    for rank in (0, 1):
        states = torch.load(
            step / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        assert all(v.numel() == 0 for v in states["module"].values())
        optim = torch.load(
            step / f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", map_location="cpu", weights_only=False
        )
        n_params += sum(t.numel() for t in optim["optimizer_state_dict"]["fp32_flat_groups"])
    from safetensors.torch import load_file

    saved = load_file(zero3 / "merged" / "model.safetensors")
    want = load_file(base / "model.safetensors")
    assert n_params >= sum(v.numel() for v in want.values())  # the two halves cover the model (plus padding)
    # the save gathered every tensor whole; it equals the same training under DDP
    ref = load_file(tmp_path / "ddp" / "merged" / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in want.items()}
    for k in ref:
        torch.testing.assert_close(saved[k].float(), ref[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not (zero3 / "merged" / "training_args.bin").exists()


def _kill_tree(pid: int) -> None:
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]  # the launcher, accelerate and both ranks
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)


def test_zero3_resume_from_a_partitioned_checkpoint_equals_the_uninterrupted_run(setup, zero3):
    """kill -9 after checkpoint-2 (of 4 steps), then `--resume`: DeepSpeed reloads each rank's
    partition of the weights and of the Adam state, the Trainer the data position and RNG."""
    pytest.importorskip("psutil")
    out = setup["dir"] / "killed"
    partial = setup["dir"] / "killed.partial"
    ck = partial / "stages" / "01-main" / "checkpoints" / "checkpoint-2" / CHECKPOINT_MARKER
    proc = subprocess.Popen(
        _cmd(setup["cfg"], out, setup["acc"]),
        env=_env(ALPACAKIT_TRAIN_STEP_DELAY_S="1.5"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 300
        while not ck.exists():
            assert proc.poll() is None, "training ended before it could be killed"
            assert time.time() < deadline, "no checkpoint-2 in time"
            time.sleep(0.1)
        time.sleep(0.5)  # inside step 3: that work is lost
    finally:
        _kill_tree(proc.pid)
    assert not out.exists() and partial.exists()
    assert not (partial / "stages" / "01-main" / "checkpoints" / "checkpoint-4" / CHECKPOINT_MARKER).exists()

    r = _train(setup["cfg"], out, setup["acc"], "--resume")
    assert "resuming from checkpoint-2" in r.stdout
    from safetensors.torch import load_file

    a = load_file(zero3 / "merged" / "model.safetensors")
    b = load_file(out / "merged" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:  # weights, Adam moments and data order all came back from the partitions
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)
    la = {e["step"]: e["loss"] for e in json.loads((zero3 / "manifest.json").read_text())["losses"]}
    lb = {e["step"]: e["loss"] for e in json.loads((out / "manifest.json").read_text())["losses"]}
    assert la.keys() == lb.keys() == set(range(1, 5))
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-5, abs=1e-6), step

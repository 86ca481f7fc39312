"""DeepSpeed ZeRO-3 on 2 CPU processes: weights really partitioned, and the save gathers them whole.

DeepSpeed's CPU accelerator (gloo) runs ZeRO-3 here; `stage3_param_persistence_threshold: 0`
partitions even the tiny model's small tensors (by default they would stay whole on every rank,
and a save by rank 0 alone would look right by accident).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

from alpacakit.train.tiny import make_tiny_base  # noqa: E402

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
    "keep_checkpoints: true\n"
)


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _train(cfg, out, accelerate_config):
    cmd = [
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
    ]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-5000:])


def test_zero3_on_two_cpu_processes_partitions_the_weights_and_saves_them_whole(tmp_path):
    base = make_tiny_base(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"Repeat {w}.", "input": "", "output": w}) + "\n" for w in WORDS)
    )
    cfg = tmp_path / "train.yaml"
    cfg.write_text(f"base: {base}\ndata: {data}\n{CFG}")
    ds_json = tmp_path / "zero3.json"
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
    acc = tmp_path / "zero3.yaml"
    acc.write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: DEEPSPEED\nnum_machines: 1\nnum_processes: 2\n"
        f"machine_rank: 0\nrdzv_backend: static\nsame_network: true\nuse_cpu: false\n"
        f"deepspeed_config:\n  deepspeed_config_file: {ds_json}\n  zero3_init_flag: true\n"
    )
    _train(cfg, tmp_path / "zero3", acc)
    _train(cfg, tmp_path / "ddp", "ddp")

    # partitioned: in the checkpoint, each rank's module holds empty placeholders and half the optimizer's fp32 weights
    step = tmp_path / "zero3" / "stages" / "01-main" / "checkpoints" / "checkpoint-4" / "global_step4"
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

    saved = load_file(tmp_path / "zero3" / "merged" / "model.safetensors")
    want = load_file(base / "model.safetensors")
    assert n_params >= sum(v.numel() for v in want.values())  # the two halves cover the model (plus padding)
    # the save gathered every tensor whole; it equals the same training under DDP
    ref = load_file(tmp_path / "ddp" / "merged" / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in want.items()}
    for k in ref:
        torch.testing.assert_close(saved[k].float(), ref[k], rtol=1e-4, atol=1e-5, msg=k)
    assert not (tmp_path / "zero3" / "merged" / "training_args.bin").exists()

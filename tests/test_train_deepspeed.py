"""DeepSpeed ZeRO-3 on 2 CPU processes: weights really partitioned, the save gathers them whole, resume.

DeepSpeed's CPU accelerator (gloo) runs ZeRO-3 here; `stage3_param_persistence_threshold: 0`
partitions even the tiny model's small tensors (by default they would stay whole on every rank,
and a save by rank 0 alone would look right by accident).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("deepspeed")

from distributed_helpers import (  # noqa: E402
    assert_resumed_run_equals,
    run_train,
    train_cmd,
    train_until_killed,
    write_tiny_setup,
)

from alpacakit.train.trainer import CHECKPOINT_MARKER  # noqa: E402

# Two training processes each: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

CFG = (
    "method: full\nprecision: fp32\nloss: supervised\nepochs: 1\nbatch_size: 2\nlr: 1.0e-2\nsave_steps: 2\n"
    "keep_checkpoints: true\nlogging_steps: 1\n"
)


def _train(cfg: Path, out: Path, accelerate_config: Path | str, *extra: str) -> subprocess.CompletedProcess:
    return run_train([cfg, *extra], out, accelerate_config, timeout=400)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("zero3")
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
    return {**write_tiny_setup(d, cfg=CFG), "acc": acc}


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


def test_zero3_resume_from_a_partitioned_checkpoint_equals_the_uninterrupted_run(setup, zero3):
    """kill -9 after checkpoint-2 (of 4 steps), then `--resume`: DeepSpeed reloads each rank's
    partition of the weights and of the Adam state, the Trainer the data position and RNG."""
    pytest.importorskip("psutil")
    out = setup["dir"] / "killed"
    partial = setup["dir"] / "killed.partial"
    ck = partial / "stages" / "01-main" / "checkpoints" / "checkpoint-2" / CHECKPOINT_MARKER
    # killed 0.5 s after checkpoint-2, inside step 3: that work is lost
    train_until_killed(train_cmd([setup["cfg"]], out, setup["acc"]), ck, step_delay_s=1.5, within_s=300, then_s=0.5)
    assert not out.exists() and partial.exists()
    assert not (partial / "stages" / "01-main" / "checkpoints" / "checkpoint-4" / CHECKPOINT_MARKER).exists()

    r = _train(setup["cfg"], out, setup["acc"], "--resume")
    assert "resuming from checkpoint-2" in r.stdout
    # weights, Adam moments and data order all came back from the partitions
    assert_resumed_run_equals(zero3, out, steps=4)

"""FSDP full_shard on 2 CPU processes (gloo): sharded training, the gathered save, sharded checkpoints, resume.

Each run goes through the real CLI: `alpacakit train --launcher accelerate --num-processes 2
--accelerate-config fsdp` on a tiny Llama (43k parameters). `pytest -k 'fsdp and save'` selects
the save tests.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")
pytest.importorskip("peft")

from distributed_helpers import (  # noqa: E402
    assert_resumed_run_equals,
    manifest,
    rank_reports,
    run_train,
    train_cmd,
    train_until_killed,
    write_examples,
    write_tiny_setup,
)

from alpacakit.train.launch import _cpu_variant, accelerate_config_path  # noqa: E402
from alpacakit.train.trainer import CHECKPOINT_MARKER  # noqa: E402

# Two training processes each: minutes on a 2-core machine.
pytestmark = pytest.mark.slow

# fp32 and `loss: supervised` on both sides of every comparison (FSDP turns `chunked` into
# `supervised`, and a bf16 base would round differently under the two wrappers)
FULL = (
    "method: full\nprecision: fp32\nloss: supervised\nepochs: 2\nbatch_size: 2\nlr: 1.0e-2\nsave_steps: 2\n"
    "save_total_limit: 4\nkeep_checkpoints: true\nlogging_steps: 1\n"
)
LORA = (
    "method: lora\nprecision: fp32\nloss: supervised\nepochs: 1\nbatch_size: 2\nlr: 1.0e-2\n"
    "lora: {r: 4, alpha: 8, dropout: 0.0, target_modules: [q_proj, v_proj]}\n"
)


def _run(cfg: Path, out: Path, config: str, *extra: str) -> subprocess.CompletedProcess:
    return run_train([cfg, *extra], out, config, timeout=300)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    return write_tiny_setup(tmp_path_factory.mktemp("fsdp"), full=FULL, lora=LORA)


@pytest.fixture(scope="module")
def fsdp_full(setup) -> Path:
    out = setup["dir"] / "fsdp-full"
    _run(setup["full"], out, "fsdp")
    return out


@pytest.fixture(scope="module")
def ddp_full(setup) -> Path:
    out = setup["dir"] / "ddp-full"
    _run(setup["full"], out, "ddp")
    return out


def _logits(folder: Path) -> torch.Tensor:
    from alpacakit.train.merge import load_trained

    model, tok, fmt = load_trained(folder)
    ids = tok([fmt.build("Repeat owl."), fmt.build("Repeat tea.")], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**ids).logits


def test_fsdp_full_shard_on_two_cpu_processes_saves_a_full_model_that_reloads(setup, fsdp_full, ddp_full):
    # both ranks trained (FSDP really ran: the ranks hold different shards of the weights)
    reports = rank_reports(fsdp_full)
    assert [r["world_size"] for r in reports] == [2, 2] and [r["steps"] for r in reports] == [8, 8]
    assert [r["examples"] for r in reports] == [16, 16]  # 2 epochs of half the data each
    assert reports[0]["trainable_digest"] != reports[1]["trainable_digest"]  # shards, not copies
    ddp_reports = rank_reports(ddp_full)
    assert ddp_reports[0]["trainable_digest"] == ddp_reports[1]["trainable_digest"]  # DDP: full copies

    # the checkpoints are sharded (each rank wrote its part with torch.distributed.checkpoint) ...
    ck = fsdp_full / "stages" / "01-main" / "checkpoints" / "checkpoint-4"
    assert (ck / CHECKPOINT_MARKER).exists()
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert sorted(p.name for p in (ck / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"], part
    # ... and the final model is gathered from both: every tensor whole, the same names and shapes as the base
    from safetensors.torch import load_file

    saved = load_file(fsdp_full / "merged" / "model.safetensors")
    base = load_file(setup["base"] / "model.safetensors")
    assert {k: tuple(v.shape) for k, v in saved.items()} == {k: tuple(v.shape) for k, v in base.items()}
    assert max(float((saved[k] - base[k]).abs().max()) for k in base) > 1e-3  # trained

    # reloaded in one process, it gives the logits of the same training without FSDP (DDP)
    ours, ref = _logits(fsdp_full), _logits(ddp_full)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    m = manifest(fsdp_full)
    assert m["complete"] and m["world_size"] == 2 and m["steps"] == 8


def test_fsdp_lora_save_writes_the_whole_adapter_not_an_empty_file(setup):
    """PEFT picks adapter weights by module names, which FSDP's wrappers change: without our fix the
    gathered save wrote an adapter file with no tensors in it."""
    fsdp, ddp = setup["dir"] / "fsdp-lora", setup["dir"] / "ddp-lora"
    _run(setup["lora"], fsdp, "fsdp")
    _run(setup["lora"], ddp, "ddp")
    from safetensors.torch import load_file

    a = load_file(fsdp / "adapter" / "adapter_model.safetensors")
    b = load_file(ddp / "adapter" / "adapter_model.safetensors")
    assert len(a) == 8 and a.keys() == b.keys()  # q/v x lora_A/B x 2 layers, PEFT's own names
    assert all("_fsdp_wrapped_module" not in k and ".default." not in k for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    assert any(float(v.abs().max()) > 0 for k, v in a.items() if "lora_B" in k)  # B starts at zero: it trained
    torch.testing.assert_close(_logits(fsdp), _logits(ddp), rtol=1e-4, atol=1e-4)


def test_fsdp_resume_from_a_sharded_checkpoint_equals_the_uninterrupted_run(setup, fsdp_full):
    pytest.importorskip("psutil")
    out = setup["dir"] / "killed"
    partial = setup["dir"] / "killed.partial"
    ck = partial / "stages" / "01-main" / "checkpoints" / "checkpoint-4" / CHECKPOINT_MARKER
    # killed 0.9 s after checkpoint-4, inside step 5 or 6: that work is lost
    train_until_killed(train_cmd([setup["full"]], out, "fsdp"), ck, step_delay_s=0.7, within_s=240, then_s=0.9)
    assert not out.exists() and partial.exists()

    r = _run(setup["full"], out, "fsdp", "--resume")
    assert "resuming from checkpoint-4" in r.stdout
    # weights, Adam moments and data order all came back from the shards
    assert_resumed_run_equals(fsdp_full, out, steps=8)


def test_fsdp_config_runs_on_cpu_without_module_state_sync(tmp_path):
    """Without CUDA the shipped FSDP config is kept (no refusal), minus what accelerate refuses on CPU."""
    import yaml

    cpu = yaml.safe_load(_cpu_variant(accelerate_config_path("fsdp"), tmp_path).read_text())
    assert cpu["distributed_type"] == "FSDP" and cpu["use_cpu"] is True and cpu["mixed_precision"] == "no"
    f = cpu["fsdp_config"]
    assert f["fsdp_sharding_strategy"] == "FULL_SHARD" and f["fsdp_state_dict_type"] == "SHARDED_STATE_DICT"
    assert f["fsdp_sync_module_states"] is False and f["fsdp_cpu_ram_efficient_loading"] is False


DOMAIN = [("hot", "cold"), ("up", "down"), ("big", "small"), ("wet", "dry"), ("old", "new"), ("day", "night")]
DOMAIN += [("fast", "slow"), ("open", "shut")]
# ChatDoctor-style: general instructions first, then the domain, each stage from the previous one's weights
STAGES = (
    "method: full\nprecision: fp32\nloss: supervised\nbatch_size: 2\nlr: 1.0e-2\nsave_steps: 2\n"
    "keep_checkpoints: true\nlogging_steps: 1\n"
    "stages:\n  - {{name: general, data: {general}, epochs: 1}}\n  - {{name: domain, data: {domain}, epochs: 1, lr: 5.0e-3}}\n"
)


def _two_stage_config(setup) -> Path:
    d = setup["dir"]
    domain = write_examples(d / "domain.jsonl", ((f"Give the opposite of {a}.", b) for a, b in DOMAIN))
    cfg = d / "stages.yaml"
    cfg.write_text(f"base: {setup['base']}\n" + STAGES.format(general=setup["data"], domain=domain))
    return cfg


def test_fsdp_two_stage_training_continues_from_stage_one_and_equals_ddp(setup):
    """Stage 2 (domain) must train the weights stage 1 (general) left, still sharded by FSDP, and the
    run must leave what docs/training.md promises: merged/, a manifest listing both stages, per-stage
    logs and per-rank reports, and each stage's checkpoints and weights under stages/."""
    cfg = _two_stage_config(setup)
    fsdp, ddp = setup["dir"] / "fsdp-stages", setup["dir"] / "ddp-stages"
    _run(cfg, fsdp, "fsdp")
    _run(cfg, ddp, "ddp")
    from safetensors.torch import load_file

    for name, steps in (("01-general", 4), ("02-domain", 2)):
        sdir = fsdp / "stages" / name
        done = json.loads((sdir / "done.json").read_text())
        assert done["steps"] == steps and done["world_size"] == 2, name
        ck = sdir / "checkpoints" / f"checkpoint-{steps}"
        assert (ck / CHECKPOINT_MARKER).exists() and (ck / "pytorch_model_fsdp_0").is_dir(), name
        assert (sdir / "weights" / "model.safetensors").exists(), name
        assert any((fsdp / "logs" / name).iterdir()), name  # TensorBoard events
        reports = rank_reports(fsdp, name)
        assert [r["steps"] for r in reports] == [steps, steps] and reports[0]["trainable_digest"] != reports[1][
            "trainable_digest"
        ]  # sharded in both stages
    # stage 2 began where stage 1 ended (on each rank, the same shard of the same weights), not at the base
    for i, (general, domain) in enumerate(zip(rank_reports(fsdp, "01-general"), rank_reports(fsdp, "02-domain"))):
        assert domain["initial_digest"] == general["trainable_digest"] != general["initial_digest"], i

    m = manifest(fsdp)
    assert m["complete"] and m["world_size"] == 2 and m["steps"] == 6
    assert [s["name"] for s in m["stages"]] == ["general", "domain"]
    assert [s["steps"] for s in m["stages"]] == [4, 2]
    assert [e["step"] for e in m["losses"]] == list(range(1, 7))
    assert (fsdp / "merged" / "model.safetensors").exists() and (fsdp / "loss.png").exists()
    dm = manifest(ddp)
    for a, b in zip(m["losses"], dm["losses"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), a["step"]

    # each stage's weights equal DDP's: stage 1's, then the final (stage 2) model
    for rel in ("stages/01-general/weights", "merged"):
        a, b = load_file(fsdp / rel / "model.safetensors"), load_file(ddp / rel / "model.safetensors")
        assert a.keys() == b.keys(), rel
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{rel}: {k}")
    # and stage 2 moved the weights on from stage 1's
    s1 = load_file(fsdp / "stages" / "01-general" / "weights" / "model.safetensors")
    final = load_file(fsdp / "merged" / "model.safetensors")
    assert max(float((final[k] - s1[k]).abs().max()) for k in s1) > 1e-4
    torch.testing.assert_close(_logits(fsdp), _logits(ddp), rtol=1e-4, atol=1e-4)

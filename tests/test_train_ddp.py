"""Scale-out: DDP with 2 CPU processes (gloo) through `--launcher accelerate`, and the shipped configs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from distributed_helpers import manifest, rank_reports, run_train, write_tiny_setup  # noqa: E402

from alpacakit.train.launch import SHIPPED, accelerate_config_path  # noqa: E402


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_on_both_ranks_and_saves_once(tmp_path):
    setup = write_tiny_setup(tmp_path)
    out = tmp_path / "model"
    args = ["--base", setup["base"], "--data", setup["data"]]
    args += ["--set", "epochs=1", "--set", "batch_size=2", "--set", "lr=1e-2"]
    r = run_train(args, out, timeout=600)

    reports = rank_reports(out)
    for i, rep in enumerate(reports):
        assert rep["rank"] == i and rep["world_size"] == 2
        assert rep["steps"] == 4  # 16 examples / (2 per process x 2 processes)
        assert rep["examples"] == 8 and rep["supervised_tokens"] > 0
        assert rep["trainable_digest"] != rep["initial_digest"]  # the weights moved
    # the gradients were all-reduced: both ranks end with identical weights
    assert reports[0]["trainable_digest"] == reports[1]["trainable_digest"]

    m = manifest(out)
    assert m["complete"] and m["world_size"] == 2 and m["steps"] == 4
    # saved once: one model folder, one adapter, nothing left half-written next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "data.jsonl", "model"]
    assert len(list(out.rglob("adapter_model.safetensors"))) == 1
    assert r.stdout.count("model folder:") == 1


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_accelerate_configs_are_valid_accelerate_files(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(accelerate_config_path(name)))
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "deepspeed-zero3": "DEEPSPEED"}[name]
    assert str(cfg.distributed_type).split(".")[-1] == expected
    if name == "fsdp":
        assert cfg.fsdp_config["fsdp_sharding_strategy"] == "FULL_SHARD"
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    if name == "deepspeed-zero3":
        assert cfg.deepspeed_config["zero_stage"] == 3

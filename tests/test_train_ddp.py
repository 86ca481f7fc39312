"""Scale-out: DDP with 2 CPU processes (gloo) through `--launcher accelerate`, and the shipped configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from alpacakit.train.launch import SHIPPED, accelerate_config_path  # noqa: E402
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


@pytest.mark.slow
def test_ddp_with_two_cpu_processes_trains_on_both_ranks_and_saves_once(tmp_path):
    base = make_tiny_base(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(json.dumps({"instruction": f"Repeat {w}.", "input": "", "output": w}) + "\n" for w in WORDS)
    )
    out = tmp_path / "model"
    cmd = [
        sys.executable,
        "-m",
        "alpacakit.cli.main",
        "train",
        "--base",
        str(base),
        "--data",
        str(data),
        "-o",
        str(out),
        "--set",
        "epochs=1",
        "--set",
        "batch_size=2",
        "--set",
        "lr=1e-2",
        "--launcher",
        "accelerate",
        "--num-processes",
        "2",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])

    reports = [json.loads((out / "logs" / "ranks" / f"01-main-rank{i}.json").read_text()) for i in (0, 1)]
    for i, rep in enumerate(reports):
        assert rep["rank"] == i and rep["world_size"] == 2
        assert rep["steps"] == 4  # 16 examples / (2 per process x 2 processes)
        assert rep["examples"] == 8 and rep["supervised_tokens"] > 0
        assert rep["trainable_digest"] != rep["initial_digest"]  # the weights moved
    # the gradients were all-reduced: both ranks end with identical weights
    assert reports[0]["trainable_digest"] == reports[1]["trainable_digest"]

    m = json.loads((out / "manifest.json").read_text())
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

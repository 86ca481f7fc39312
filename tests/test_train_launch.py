"""Multi-machine launch: the accelerate command carries the machine flags; inconsistent ones are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from alpacakit.errors import ConfigError  # noqa: E402
from alpacakit.train.launch import Machines, accelerate_command  # noqa: E402

CLI = [sys.executable, "-m", "alpacakit.cli.main"]


def _flags(cmd: list[str]) -> dict[str, str]:
    """accelerate's own flags (those before `-m alpacakit.train.launch`)."""
    head = cmd[: cmd.index("alpacakit.train.launch") - 1]
    return {head[i]: head[i + 1] for i in range(len(head)) if head[i].startswith("--") and i + 1 < len(head)}


def test_the_accelerate_command_carries_the_machine_flags(tmp_path):
    cmd = accelerate_command(
        tmp_path / "fsdp.yaml",
        tmp_path / "train.json",
        tmp_path / "model",
        num_processes=16,
        machines=Machines(num_machines=2, machine_rank=1, main_ip="10.1.2.3", main_port=29555),
    )
    assert cmd[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    f = _flags(cmd)
    assert (
        f["--num_processes"],
        f["--num_machines"],
        f["--machine_rank"],
        f["--main_process_ip"],
        f["--main_process_port"],
    ) == ("16", "2", "1", "10.1.2.3", "29555")
    assert f["--config_file"] == str(tmp_path / "fsdp.yaml")
    assert cmd[cmd.index("-m", 3) :][:2] == ["-m", "alpacakit.train.launch"]
    # several machines must agree on the port: the default is fixed, not a free port of this machine
    cmd = accelerate_command(
        tmp_path / "a.yaml",
        tmp_path / "t.json",
        tmp_path / "m",
        num_processes=4,
        machines=Machines(num_machines=2, machine_rank=0, main_ip="head"),
    )
    assert _flags(cmd)["--main_process_port"] == "29500"


def _cli(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    base = tmp / "base"
    base.mkdir(exist_ok=True)
    data = tmp / "d.jsonl"
    data.write_text(json.dumps({"instruction": "Say hi.", "output": "hi"}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [*CLI, "train", "--data", str(data), "-o", str(tmp / "m"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_passes_the_machine_flags_through_to_accelerate_launch(tmp_path):
    r = _cli(
        "--preset",
        "alpaca",
        "--launcher",
        "accelerate",
        "--num-processes",
        "8",
        "--num-machines",
        "2",
        "--machine-rank",
        "1",
        "--main-process-ip",
        "node-0.cluster",
        "--main-process-port",
        "29600",
        "--print-command",
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.split()
    f = _flags(cmd)
    assert (
        f["--num_processes"],
        f["--num_machines"],
        f["--machine_rank"],
        f["--main_process_ip"],
        f["--main_process_port"],
    ) == ("8", "2", "1", "node-0.cluster", "29600")
    assert Path(f["--config_file"]).name.endswith("fsdp.yaml")  # the alpaca preset's accelerate_config
    assert not (tmp_path / "m").exists() and not list(tmp_path.glob(".alpacakit-launch-*"))  # printed, not run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "h"], "--machine-rank 2 is out of range"),
        (
            ["--num-machines", "2", "--machine-rank", "-1", "--main-process-ip", "h"],
            "--machine-rank -1 is out of range",
        ),
        (["--num-machines", "2", "--machine-rank", "1"], "needs --main-process-ip"),
        (["--num-machines", "0"], "--num-machines must be >= 1"),
        (["--num-machines", "2", "--main-process-ip", "h", "--num-processes", "3"], "not a multiple of --num-machines"),
        (["--machine-rank", "1"], "out of range for --num-machines 1"),
        (["--num-machines", "2", "--main-process-ip", "h", "--main-process-port", "70000"], "TCP port"),
    ],
)
def test_inconsistent_machine_flags_are_refused_before_anything_starts(tmp_path, args, message):
    r = _cli("--launcher", "accelerate", "--num-processes", "4", *args, "--print-command", tmp=tmp_path)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr


def test_machine_rank_checks_in_python():
    Machines(num_machines=2, machine_rank=1, main_ip="h").check(4)
    with pytest.raises(ConfigError) as e:
        Machines(num_machines=2, machine_rank=2, main_ip="h").check(4)
    assert "0 .. 1" in e.value.hint


def test_machine_flags_without_the_accelerate_launcher_are_refused(tmp_path):
    r = _cli("--num-machines", "2", tmp=tmp_path)
    assert r.returncode == 2 and "--launcher accelerate" in r.stderr

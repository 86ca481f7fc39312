"""Multi-process (and multi-machine) training through `accelerate launch`.

`alpacakit train CONFIG --launcher accelerate --num-processes N` writes the resolved train
config to a JSON file and runs

    python -m accelerate.commands.launch --config_file <ddp|fsdp|deepspeed-zero3>.yaml \\
        --num_processes N --num_machines M --machine_rank R --main_process_ip HOST --main_process_port P \\
        -m alpacakit.train.launch --config-json RESOLVED.json --out OUT

Every process runs `alpacakit.train.recipe.train`; the Trainer does the distributed part.
`--num-processes` counts the processes of *all* machines (accelerate's meaning); on several
machines the same command runs on each one with its own `--machine-rank`, and OUT must be on a
filesystem every machine sees (the checkpoints of a sharded run are written by every rank).
The shipped accelerate configs live in `alpacakit/train/accelerate/`; any other accelerate
config file works too (pass its path as --accelerate-config).

Without CUDA the config is rewritten for CPU processes talking over gloo (`use_cpu: true`,
no mixed precision; for FSDP, no `sync_module_states` / RAM-efficient loading, which accelerate
refuses on CPU: every rank loads the same weights from disk instead).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from alpacakit.errors import AlpacakitError, ConfigError

SHIPPED = ("ddp", "fsdp", "deepspeed-zero3")
DEFAULT_PORT = 29500


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name (ddp, fsdp, deepspeed-zero3), or a path to one."""
    if name in SHIPPED:
        return Path(str(resources.files("alpacakit.train").joinpath("accelerate", f"{name}.yaml")))
    p = Path(name)
    if not p.is_file():
        raise ConfigError(
            f"accelerate config {name!r} not found", hint=f"use one of {', '.join(SHIPPED)} or a path to a YAML file"
        )
    return p


def _distributed_type(src: Path) -> str:
    import yaml

    return str((yaml.safe_load(src.read_text(encoding="utf-8")) or {}).get("distributed_type", ""))


def _check_deepspeed(src: Path) -> None:
    if _distributed_type(src) != "DEEPSPEED":
        return
    try:
        import deepspeed  # noqa: F401
    except ImportError as e:
        raise ConfigError(
            f"{src.name}: DeepSpeed is not installed ({e})",
            hint='pip install "alpacakit[deepspeed]", or use --accelerate-config fsdp',
        ) from None


def _cpu_variant(src: Path, folder: Path) -> Path:
    """The same config for CPU processes over gloo (no CUDA here)."""
    import yaml

    data = yaml.safe_load(src.read_text(encoding="utf-8")) or {}
    data["use_cpu"] = True
    if (data.get("deepspeed_config") or {}).get("deepspeed_config_file"):
        data.pop("mixed_precision", None)  # accelerate refuses it next to a DeepSpeed JSON (which says it)
    else:
        data["mixed_precision"] = "no"
    if data.get("distributed_type") == "FSDP":
        fsdp = data.setdefault("fsdp_config", {})
        # accelerate refuses sync_module_states on CPU, and RAM-efficient loading needs it
        fsdp["fsdp_sync_module_states"] = False
        fsdp["fsdp_cpu_ram_efficient_loading"] = False
        fsdp["fsdp_offload_params"] = False
    out = folder / f"cpu-{src.name}"
    out.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


@dataclass
class Machines:
    """Where the processes run: `num_machines` machines, this one `machine_rank`, rank 0 at `main_ip`."""

    num_machines: int = 1
    machine_rank: int = 0
    main_ip: str | None = None
    main_port: int | None = None

    def check(self, num_processes: int) -> None:
        if num_processes < 1:
            raise ConfigError(f"--num-processes must be >= 1, found {num_processes}")
        if self.num_machines < 1:
            raise ConfigError(f"--num-machines must be >= 1, found {self.num_machines}")
        if not 0 <= self.machine_rank < self.num_machines:
            raise ConfigError(
                f"--machine-rank {self.machine_rank} is out of range for --num-machines {self.num_machines}",
                hint=f"machine ranks are 0 .. {self.num_machines - 1}: 0 on the main machine, a different one on each other machine",
            )
        if self.num_machines > 1:
            if not self.main_ip:
                raise ConfigError(
                    f"--num-machines {self.num_machines} needs --main-process-ip",
                    hint="the address of the machine with --machine-rank 0, reachable from every machine",
                )
            if num_processes % self.num_machines:
                raise ConfigError(
                    f"--num-processes {num_processes} is not a multiple of --num-machines {self.num_machines}",
                    hint="--num-processes counts the processes of all machines (e.g. 2 machines x 8 GPUs: 16)",
                )
        elif self.machine_rank:
            raise ConfigError(f"--machine-rank {self.machine_rank} needs --num-machines > 1")
        if self.main_port is not None and not 0 < self.main_port < 65536:
            raise ConfigError(f"--main-process-port must be a TCP port (1-65535), found {self.main_port}")


def accelerate_command(
    acfg: Path,
    cfg_file: Path,
    out: Path,
    *,
    num_processes: int,
    machines: Machines,
    resume: bool = False,
    overwrite: bool = False,
) -> list[str]:
    """The `accelerate launch` command line (everything passed through to accelerate itself)."""
    machines.check(num_processes)
    if machines.num_machines == 1:
        port = machines.main_port or _free_port()
    else:
        port = machines.main_port or DEFAULT_PORT  # must be the same on every machine: no free-port guess
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(acfg),
        "--num_processes",
        str(num_processes),
        "--num_machines",
        str(machines.num_machines),
        "--machine_rank",
        str(machines.machine_rank),
    ]
    if machines.main_ip:
        cmd += ["--main_process_ip", str(machines.main_ip)]
    cmd += [
        "--main_process_port",
        str(port),
        "-m",
        "alpacakit.train.launch",
        "--config-json",
        str(cfg_file),
        "--out",
        str(out),
    ]
    if resume:
        cmd.append("--resume")
    if overwrite:
        cmd.append("--overwrite")
    return cmd


def launch_accelerate(
    cfg_json: dict,
    *,
    out: Path,
    resume: bool,
    overwrite: bool,
    num_processes: int,
    accelerate_config: str = "ddp",
    machines: Machines | None = None,
    print_command: bool = False,
) -> int:
    """Run the training under `accelerate launch`; returns the exit code.

    `print_command` prints the accelerate command instead of running it (and writes nothing).
    """
    machines = machines or Machines()
    machines.check(num_processes)
    try:
        import accelerate  # noqa: F401
        import torch
    except ImportError:
        raise ConfigError(
            "--launcher accelerate needs accelerate and torch", hint='pip install "alpacakit[train]"'
        ) from None
    src = accelerate_config_path(accelerate_config)
    _check_deepspeed(src)
    cuda = torch.cuda.is_available()
    if print_command:
        folder = Path(tempfile.gettempdir())
        acfg = src if cuda else folder / f"cpu-{src.name}"
        cmd = accelerate_command(
            acfg,
            folder / "train.json",
            out,
            num_processes=num_processes,
            machines=machines,
            resume=resume,
            overwrite=overwrite,
        )
        print(" ".join(cmd))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".alpacakit-launch-") as tmp:
        folder = Path(tmp)
        acfg = src if cuda else _cpu_variant(src, folder)
        cfg_file = folder / "train.json"
        cfg_file.write_text(json.dumps(cfg_json), encoding="utf-8")
        cmd = accelerate_command(
            acfg, cfg_file, out, num_processes=num_processes, machines=machines, resume=resume, overwrite=overwrite
        )
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env and not cuda:
            per_machine = max(1, num_processes // machines.num_machines)
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // per_machine))
        return subprocess.call(cmd, env=env)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    """One process of a launched run (what `accelerate launch -m alpacakit.train.launch` runs)."""
    ap = argparse.ArgumentParser(prog="python -m alpacakit.train.launch")
    ap.add_argument("--config-json", required=True, help="resolved train section as JSON")
    ap.add_argument("--out", required=True)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    from alpacakit.train.config import TrainConfig
    from alpacakit.train.recipe import train

    try:
        cfg = TrainConfig.model_validate(json.loads(Path(a.config_json).read_text(encoding="utf-8")))
        train(cfg, output_dir=a.out, resume=a.resume, overwrite=a.overwrite)
    except AlpacakitError as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"error: {e.message}" + (f"\nfix: {e.hint}" if e.hint else ""), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

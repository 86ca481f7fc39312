"""Multi-process training through `accelerate launch`.

`alpacakit train CONFIG --launcher accelerate --num-processes N` writes the resolved train
config to a JSON file and runs

    python -m accelerate.commands.launch --config_file <ddp|fsdp|deepspeed-zero3>.yaml \\
        --num_processes N -m alpacakit.train.launch --config-json RESOLVED.json --out OUT

Every process runs `alpacakit.train.recipe.train`; the Trainer does the distributed part.
The shipped accelerate configs live in `alpacakit/train/accelerate/`; any other accelerate
config file works too (pass its path as --accelerate-config).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from alpacakit.errors import AlpacakitError, ConfigError

SHIPPED = ("ddp", "fsdp", "deepspeed-zero3")


def accelerate_config_path(name: str) -> Path:
    """A shipped accelerate config by name (ddp, fsdp, deepspeed-zero3), or a path to one."""
    if name in SHIPPED:
        return Path(str(resources.files("alpacakit.train").joinpath("accelerate", f"{name}.yaml")))
    p = Path(name)
    if not p.is_file():
        raise ConfigError(f"accelerate config {name!r} not found", hint=f"use one of {', '.join(SHIPPED)} or a path to a YAML file")
    return p


def _cpu_variant(src: Path, folder: Path) -> Path:
    """The same config with use_cpu: true (no CUDA here: processes run on CPU over gloo)."""
    import yaml

    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    if data.get("distributed_type") in ("FSDP", "DEEPSPEED"):
        raise ConfigError(f"{src.name}: {data['distributed_type']} needs CUDA GPUs, and none is visible",
                          hint="use --accelerate-config ddp on CPU")
    data["use_cpu"] = True
    data["mixed_precision"] = "no"
    out = folder / f"cpu-{src.name}"
    out.write_text(yaml.safe_dump(data), encoding="utf-8")
    return out


def launch_accelerate(cfg_json: dict, *, out: Path, resume: bool, overwrite: bool, num_processes: int,
                      accelerate_config: str = "ddp") -> int:
    """Run the training under `accelerate launch` with `num_processes` processes; returns the exit code."""
    try:
        import accelerate  # noqa: F401
        import torch
    except ImportError:
        raise ConfigError("--launcher accelerate needs accelerate and torch", hint='pip install "alpacakit[train]"') from None
    if num_processes < 1:
        raise ConfigError("--num-processes must be >= 1")
    src = accelerate_config_path(accelerate_config)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".alpacakit-launch-") as tmp:
        folder = Path(tmp)
        acfg = src if torch.cuda.is_available() else _cpu_variant(src, folder)
        cfg_file = folder / "train.json"
        cfg_file.write_text(json.dumps(cfg_json), encoding="utf-8")
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(acfg),
               "--num_processes", str(num_processes), "--num_machines", "1", "--main_process_port",
               str(_free_port()), "-m", "alpacakit.train.launch", "--config-json", str(cfg_file), "--out", str(out)]
        if resume:
            cmd.append("--resume")
        if overwrite:
            cmd.append("--overwrite")
        env = dict(os.environ)
        if "OMP_NUM_THREADS" not in env and not torch.cuda.is_available():
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // num_processes))
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

"""`alpacakit train` and `alpacakit merge`: fine-tune a base model on instruction data."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig


@config_options(
    ("train.preset", "--preset", "-p"),
    ("train.data", "--data", "-d"),
    ("train.base", "--base", "-b"),
    ("train.output_dir", "--out", "-o"),
    "train.method",
    "train.engine",
    "train.max_examples",
    "train.max_steps",
    "train.prompt_format",
    "train.accelerate_config",
    loader="train",
    config_argument=True,
)
def train(
    cfg: AlpacakitConfig,
    list_presets: bool = typer.Option(False, "--list-presets", help="List the presets and exit."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue an interrupted run from its last complete checkpoint."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing finished model folder."),
    launcher: str = typer.Option("none", "--launcher", help="none (this process) | accelerate (several processes)."),
    num_processes: int = typer.Option(
        2, "--num-processes", help="Processes for --launcher accelerate, on all machines together."
    ),
    num_machines: int = typer.Option(
        1, "--num-machines", help="Machines taking part (--launcher accelerate; run the same command on each)."
    ),
    machine_rank: int = typer.Option(
        0, "--machine-rank", help="This machine's rank, 0 .. num-machines - 1 (0: the main machine)."
    ),
    main_process_ip: str | None = typer.Option(
        None, "--main-process-ip", help="Address of the machine with rank 0 (needed with --num-machines > 1)."
    ),
    main_process_port: int | None = typer.Option(
        None,
        "--main-process-port",
        help="Port on the main machine [default: a free port on one machine, 29500 on several].",
    ),
    print_command: bool = typer.Option(
        False, "--print-command", help="Print the accelerate launch command and exit (with --launcher accelerate)."
    ),
) -> None:
    """Fine-tune a base model on instruction data: full, LoRA or QLoRA, one or several stages.

    Writes a model folder (adapter/ or merged/, tokenizer, prompt_format.json, manifest.json, logs/ for TensorBoard, loss.png) through OUT.partial/, renamed when complete. Kill it at any time; rerun with --resume to continue from the last checkpoint.

    Examples:

      alpacakit train --preset cpu-quick --data runs/x/data/examples.jsonl -o runs/x/model

      alpacakit train alpacakit.yaml --set lr=1e-4 --set lora.r=16

      alpacakit train alpacakit.yaml --engine trl   # TRL's SFTTrainer, on the same tokens

      alpacakit train alpacakit.yaml --launcher accelerate --num-processes 2

      alpacakit train --preset alpaca --data alpaca_data.json --launcher accelerate --num-processes 16 --num-machines 2 --machine-rank 0 --main-process-ip 10.0.0.1
    """
    if list_presets:
        from alpacakit.train.config import list_presets as presets

        for name, desc in presets().items():
            typer.echo(f"{name:14s} {desc}")
        return
    cfg = cfg.train
    out_dir = Path(cfg.output_dir)
    from alpacakit.errors import ConfigError

    if launcher == "accelerate":
        from alpacakit.train.launch import Machines, launch_accelerate

        machines = Machines(
            num_machines=num_machines, machine_rank=machine_rank, main_ip=main_process_ip, main_port=main_process_port
        )
        code = launch_accelerate(
            cfg.model_dump(mode="json"),
            out=out_dir,
            resume=resume,
            overwrite=overwrite,
            num_processes=num_processes,
            accelerate_config=cfg.accelerate_config or "ddp",
            machines=machines,
            print_command=print_command,
        )
        raise typer.Exit(code)
    if launcher != "none":
        raise ConfigError(f"--launcher {launcher!r}: expected none or accelerate")
    if num_machines != 1 or machine_rank or main_process_ip or main_process_port or print_command:
        raise ConfigError(
            "--num-machines, --machine-rank, --main-process-ip/--main-process-port and --print-command "
            "are for --launcher accelerate",
            hint="add --launcher accelerate",
        )
    if cfg.accelerate_config:
        typer.echo(
            f"note: accelerate_config {cfg.accelerate_config!r} applies with --launcher "
            "accelerate; training in this one process",
            err=True,
        )
    from alpacakit.train.recipe import train as run_train

    run_train(cfg, output_dir=out_dir, resume=resume, overwrite=overwrite)


def merge(
    model_dir: Path = typer.Argument(..., help="A model folder written by `alpacakit train` (with adapter/)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing merged/ folder."),
) -> None:
    """Merge a LoRA adapter into its base weights: writes MODEL_DIR/merged/ (a standalone HF model folder)."""
    from alpacakit.train.merge import merge as run_merge

    target = run_merge(model_dir, overwrite=overwrite)
    typer.echo(f"merged weights: {target}")

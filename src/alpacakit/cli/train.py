"""`alpacakit train` and `alpacakit merge`: fine-tune a base model on instruction data."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config: an alpacakit.yaml with a train: section, or just train keys."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Override any field, e.g. --set lr=1e-4 or --set train.lora.r=16."),
    preset: Optional[str] = typer.Option(None, "--preset", "-p", help="Start from a preset (see --list-presets)."),
    list_presets: bool = typer.Option(False, "--list-presets", help="List the presets and exit."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Training data (JSONL, Alpaca JSON, ShareGPT, HF datasets folder)."),
    base: Optional[str] = typer.Option(None, "--base", "-b", help="Base model: embedded name, .gguf file, HF folder or hub id [default: gemma-3-270m]."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Model folder to write [default: train.output_dir]."),
    method: Optional[str] = typer.Option(None, "--method", help="lora | full | qlora."),
    max_examples: Optional[int] = typer.Option(None, "--max-examples", help="Train on the first N examples only."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after N optimizer steps."),
    prompt_format: Optional[str] = typer.Option(None, "--prompt-format", help="alpaca | chat | path to a prompt format JSON."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run from its last complete checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing finished model folder."),
    launcher: str = typer.Option("none", "--launcher", help="none (this process) | accelerate (several processes)."),
    num_processes: int = typer.Option(2, "--num-processes", help="Processes for --launcher accelerate."),
    accelerate_config: str = typer.Option("ddp", "--accelerate-config", help="ddp | fsdp | deepspeed-zero3 | path to an accelerate YAML."),
) -> None:
    """Fine-tune a base model on instruction data: full, LoRA or QLoRA, one or several stages.

    Writes a model folder (adapter/ or merged/, tokenizer, prompt_format.json, manifest.json, logs/ for TensorBoard, loss.png) through OUT.partial/, renamed when complete. Kill it at any time; rerun with --resume to continue from the last checkpoint.

    Examples:

      alpacakit train --preset cpu-quick --data runs/x/data/examples.jsonl -o runs/x/model

      alpacakit train alpacakit.yaml --set lr=1e-4 --set lora.r=16

      alpacakit train alpacakit.yaml --launcher accelerate --num-processes 2
    """
    if list_presets:
        from alpacakit.train.config import list_presets as presets

        for name, desc in presets().items():
            typer.echo(f"{name:14s} {desc}")
        return
    from alpacakit.train.config import load_train_config

    extra = {"train": {"preset": preset, "data": data, "base": base, "method": method, "max_examples": max_examples,
                       "max_steps": max_steps, "prompt_format": prompt_format}}
    cfg = load_train_config(config, set_, extra).train
    out_dir = Path(out or cfg.output_dir)
    if launcher == "accelerate":
        from alpacakit.train.launch import launch_accelerate

        code = launch_accelerate(cfg.model_dump(mode="json"), out=out_dir, resume=resume, overwrite=overwrite,
                                 num_processes=num_processes, accelerate_config=accelerate_config)
        raise typer.Exit(code)
    if launcher != "none":
        from alpacakit.errors import ConfigError

        raise ConfigError(f"--launcher {launcher!r}: expected none or accelerate")
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

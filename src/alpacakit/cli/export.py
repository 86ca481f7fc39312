"""`alpacakit export ...`: turn stage outputs into formats other tools read."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Export data (Alpaca JSON, HF datasets) and models (GGUF).", no_args_is_help=True)


@app.command("alpaca")
def alpaca(
    examples: Path = typer.Argument(..., help="examples.jsonl from `alpacakit generate` (or any instruction records)."),
    output: Path = typer.Option(..., "-o", "--output", help="Alpaca JSON file: [{instruction, input, output}]."),
) -> None:
    """Write Stanford Alpaca's JSON format (a list of {instruction, input, output})."""
    from alpacakit.export.dataset import to_alpaca_json

    n = to_alpaca_json(examples, output)
    typer.echo(f"wrote {n} examples to {output}")


@app.command("hf")
def hf(
    examples: Path = typer.Argument(..., help="examples.jsonl from `alpacakit generate` (or any instruction records)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for `datasets.load_from_disk`."),
    val_fraction: float = typer.Option(0.0, "--val-fraction", help="Also write a validation split of this fraction."),
) -> None:
    """Write a Hugging Face `datasets` folder (save_to_disk), optionally with a validation split."""
    from alpacakit.export.dataset import to_hf_dataset

    n = to_hf_dataset(examples, output, val_fraction=val_fraction)
    typer.echo(f"wrote {n} examples to {output}")

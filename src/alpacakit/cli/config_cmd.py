"""`alpacakit config show`: the resolved configuration."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Show the resolved configuration (defaults <- YAML <- --set).", no_args_is_help=True)


@app.command("show")
def show(
    config: Path | None = typer.Option(None, "--config", "-c", help="alpacakit.yaml to load."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override a field: section.field=value (YAML value)."),
    explain: bool = typer.Option(False, "--explain", help="Also print each field's description."),
) -> None:
    """Print the resolved config as YAML."""
    import yaml

    from alpacakit.config import AlpacakitConfig, load_config

    cfg = load_config(config, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), nl=False)
    if explain:
        typer.echo("\n# fields")
        _explain(AlpacakitConfig, "")


def _explain(model, prefix: str) -> None:  # noqa: ANN001
    from pydantic import BaseModel

    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            _explain(ann, f"{prefix}{name}.")
        else:
            typer.echo(f"# {prefix}{name}: {field.description or ''}")

"""`alpacakit config show`: the resolved configuration."""

from __future__ import annotations

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig

app = typer.Typer(help="Show the resolved configuration (defaults <- YAML <- --set).", no_args_is_help=True)


@app.command("show")
@config_options()
def show(
    cfg: AlpacakitConfig,
    explain: bool = typer.Option(False, "--explain", help="Also print each field's description."),
) -> None:
    """Print the resolved config as YAML."""
    import yaml

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

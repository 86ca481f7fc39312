"""`alpacakit report RUN_DIR`: the imitation-gap report (style vs substance), Markdown + HTML + plots."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig


@config_options(
    ("eval.report.style_gain_points", "--style-gain"),
    ("eval.report.knowledge_gain_points", "--knowledge-gain"),
    ("eval.report.base", "--base"),
    ("eval.report.student", "--student"),
    ("eval.report.teacher", "--teacher"),
)
def report(
    cfg: AlpacakitConfig,
    run_dir: Path = typer.Argument(
        ..., help="Run folder: runs/NAME with data/, model/ and eval/ (any of them may be missing)."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", "-o", help="Where to write the report [default: RUN_DIR/report]."
    ),
) -> None:
    """Write report.md, report.html, report.json and plots: did the student gain style, knowledge, both?

    Reads eval/pairwise-*.json (win rates: style), eval/bench-SYSTEM.json (capability accuracy:
    substance), eval/outputs-SYSTEM.json (answer lengths) and the manifests of data/ and model/
    (cost). Systems are found by their labels: base, student and teacher by default. Missing parts
    are listed in the report with the command that makes them.

    Example:

      alpacakit report runs/demo
    """
    from alpacakit.evaluate.report import build_report

    res = build_report(run_dir, cfg, out_dir)
    typer.echo(res.verdict["text"])
    if res.missing:
        typer.echo(f"missing ({len(res.missing)}): see the report's Missing section")
    typer.echo(f"wrote {res.markdown}, {res.html} and {len(res.plots)} plots")

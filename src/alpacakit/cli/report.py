"""`alpacakit report RUN_DIR`: the imitation-gap report (style vs substance), Markdown + HTML + plots."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    run_dir: Path = typer.Argument(
        ..., help="Run folder: runs/NAME with data/, model/ and eval/ (any of them may be missing)."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out-dir", "-o", help="Where to write the report [default: RUN_DIR/report]."
    ),
    style_gain: float | None = typer.Option(
        None,
        "--style-gain",
        help="Win-rate points (student minus base, vs the teacher) that count as a style gain [default: 10].",
    ),
    knowledge_gain: float | None = typer.Option(
        None,
        "--knowledge-gain",
        help="Accuracy points (student minus base) that count as a knowledge gain [default: 3].",
    ),
    base: str | None = typer.Option(
        None, "--base", help="System label of the base model in eval/ file names [default: base]."
    ),
    student: str | None = typer.Option(None, "--student", help="System label of the student [default: student]."),
    teacher: str | None = typer.Option(None, "--teacher", help="System label of the teacher [default: teacher]."),
    config: Path | None = typer.Option(None, "--config", "-c", help="alpacakit.yaml (the eval.report section)."),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Override any field, e.g. --set eval.report.style_gain_points=5."
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
    from alpacakit.config import load_config
    from alpacakit.evaluate.report import build_report

    extra = {
        "eval": {
            "report": {
                "style_gain_points": style_gain,
                "knowledge_gain_points": knowledge_gain,
                "base": base,
                "student": student,
                "teacher": teacher,
            }
        }
    }
    cfg = load_config(config, set_, extra)
    res = build_report(run_dir, cfg, out_dir)
    typer.echo(res.verdict["text"])
    if res.missing:
        typer.echo(f"missing ({len(res.missing)}): see the report's Missing section")
    typer.echo(f"wrote {res.markdown}, {res.html} and {len(res.plots)} plots")

"""`alpacakit quickstart`: the whole formula on the embedded models, in one resumable command."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.rundir import RunDir


def quickstart(
    out: Path = typer.Option(
        RunDir.default("quickstart").root, "--out", "-o", help="Run folder (data/, model/, export/, eval/, report/)."
    ),
    tiny: bool = typer.Option(
        False, "--tiny", help="The smallest run that exercises every stage (~5 min): SmolLM2 teaches and judges."
    ),
    config: Path | None = typer.Option(
        None,
        "--config",
        "-c",
        help="An alpacakit.yaml layered on the profile (its sections win over the profile's).",
    ),
    set_: list[str] | None = typer.Option(
        None,
        "--set",
        help="Override a setting, last and highest: alpacakit.yaml keys (--set generate.num=200 "
        "--set eval.limit=40) or the quickstart's own (--set quickstart.heldout=8).",
    ),
    stages: str | None = typer.Option(
        None,
        "--stages",
        help="Comma-separated subset, in order: generate,clean,train,export,answers,follow,likelihood,judge,bench,report.",
    ),
    show: bool = typer.Option(
        False, "--show", help="Print the settings the profile, --config and --set make, and exit."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run the Alpaca formula end to end on a CPU with the embedded models.

    The Qwen2.5-Coder 1.5B teacher writes ~100 instructions with answers (self-instruct), copies
    of the held-out eval set are dropped and 16 are held out, Gemma 3 270M base is LoRA-tuned on
    the rest and exported to a GGUF that keeps the base's own tensors and writes the trained ones
    f16 (delta-f16; verified: it must agree with the trained model on >= 95% of next tokens). Then student
    and base are compared on the same items, each figure with a 95% interval: 237 verifiable
    instructions (the headline: constraints a program checks), whether answers end by themselves,
    the likelihood of the held-out teacher answers, a judge (Qwen, both orders, and how often it
    agrees with the checks) and capability questions (knowledge). It ends with the report, whose
    verdict names the metrics precise enough to decide it, before/after answers and the commands
    to chat with and serve the student.

    Stop it at any time (Ctrl-C, kill) and run the same command again: finished stages are
    skipped and the running one resumes. Profiles are data: alpacakit/quickstart/profiles.yaml,
    each a partial alpacakit.yaml; settings layer as defaults <- profile <- --config <- --set.

    Examples:

      alpacakit quickstart

      alpacakit quickstart --tiny -o runs/tiny

      alpacakit quickstart --set generate.num=300 --set eval.limit=60 -o runs/bigger

      alpacakit quickstart --config alpacakit.yaml --set quickstart.follow_limit=237
    """
    from alpacakit.quickstart.pipeline import STAGES, load_profile, run_quickstart

    settings = load_profile("tiny" if tiny else "default", set_, config)
    if show:
        import yaml

        typer.echo(yaml.safe_dump(settings.dump(), sort_keys=False).rstrip())
        return
    chosen = [s.strip() for s in stages.split(",") if s.strip()] if stages else list(STAGES)
    typer.echo(f"quickstart ({settings.name}): {settings.quickstart.description}")
    typer.echo(f"run folder: {out}")
    log = run_quickstart(out, settings, stages=chosen, progress=progress, say=lambda m: typer.echo(m, err=False))
    _finale(RunDir(out), log, settings.quickstart.before_after)


def _finale(run: RunDir, log: dict, n_examples: int) -> None:
    """What the run showed, and what to do next."""
    from rich.console import Console
    from rich.table import Table

    from alpacakit.quickstart.pipeline import before_after, write_before_after

    console = Console()
    rows = before_after(run, n_examples)
    if rows:
        path = write_before_after(run, rows)
        table = Table(title="Before (Gemma base) and after (the student), held-out instructions", show_lines=True)
        table.add_column("instruction", ratio=2)
        table.add_column("before", ratio=3)
        table.add_column("after", ratio=3)
        for r in rows:
            table.add_row(_clip(r["instruction"], 200), _clip(r["before"], 300), _clip(r["after"], 300))
        console.print(table)
        console.print(f"all of them: {path}")
    verdict = log.get("verdict") or {}
    if verdict.get("text"):
        console.print(f"\n[bold]Verdict:[/] {verdict['text']}", highlight=False)
    for warning in verdict.get("warnings") or []:
        console.print(f"[bold red]Warning:[/] {warning}", highlight=False)
    stages = log.get("stages") or {}
    times = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in stages.items() if "seconds" in v)
    console.print(f"\ntime per stage: {times}", highlight=False)
    gguf = next(iter(run.ggufs()), None)
    console.print("\n[bold]Next:[/]", highlight=False)
    console.print(f"  report:  {run.report / 'report.html'}", highlight=False)
    if gguf is not None:
        console.print(f"  chat:    alpacakit chat {gguf}", highlight=False)
        console.print(
            f"  serve:   alpacakit serve {gguf} --port 8000   (web chat at http://127.0.0.1:8000/, OpenAI API at /v1)",
            highlight=False,
        )
    console.print(
        f"  model:   {run.model} (LoRA adapter; `alpacakit merge {run.model}` for full weights)",
        highlight=False,
    )


def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"

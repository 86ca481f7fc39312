"""`alpacakit curate ...`: clean and deduplicate instruction data from any source."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig

app = typer.Typer(
    help="Curate instruction data: exact ROUGE-L dedup, refusal/boilerplate cleaning.", no_args_is_help=True
)


@app.command("dedup")
@config_options("curate.threshold", "curate.tokenizer")
def dedup(
    cfg: AlpacakitConfig,
    input: Path = typer.Argument(
        ..., help="JSON list or JSONL of records with an 'instruction' field (other fields are kept)."
    ),
    output: Path = typer.Option(..., "-o", "--output", help="Kept records, JSONL, in input order."),
    seeds: Path | None = typer.Option(
        None, "--seeds", help="Self-instruct seed JSONL (or records file): these start the pool and are never written."
    ),
) -> None:
    """Keep an instruction only if its ROUGE-L F with every earlier kept one is <= threshold.

    Decisions are identical to the rouge_score package (RougeScorer(['rougeL'])), computed
    exactly but fast (52K instructions in seconds instead of hours).
    """
    from alpacakit.curate.dedup import dedup_file

    stats = dedup_file(input, output, seeds=seeds, threshold=cfg.curate.threshold, tokenizer=cfg.curate.tokenizer)
    typer.echo(stats.summary())


@app.command("clean")
@config_options(
    ("curate.refusals.patterns", "--patterns"),
    ("curate.refusals.drop_truncated", "--drop-truncated/--keep-truncated"),
)
def clean(
    cfg: AlpacakitConfig,
    input: Path = typer.Argument(..., help="Records with 'instruction' and 'output' (JSON, JSONL, CSV, HF folder)."),
    output: Path = typer.Option(..., "-o", "--output", help="Kept records, JSONL, in input order."),
    discards: Path | None = typer.Option(None, "--discards", help="Also write the dropped records with their reason."),
) -> None:
    """Drop empty, truncated, refusing ("As an AI language model..."), boilerplate and duplicate answers."""
    from alpacakit.curate.clean import clean_file

    counts = clean_file(input, output, cfg.curate.refusals, discards)
    typer.echo(", ".join(f"{k} {v}" for k, v in counts.items()))


@app.command("stats")
def stats(
    input: Path = typer.Argument(
        ..., help="Records with 'instruction' (and 'input', 'output'): JSON, JSONL, CSV or an HF folder."
    ),
    kinds: Path | None = typer.Option(
        None, "--kinds", help="YAML of task kinds (regexes) [default: alpacakit/curate/data/task_kinds.yaml]."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
) -> None:
    """What is in a dataset: size, share with an input, mean lengths, the mix of task kinds.

    Run it on a generation before training: a code-leaning teacher writes code tasks, small
    teachers forget inputs, and these numbers show it.

    Example:

      alpacakit curate stats runs/default/data/examples.jsonl
    """
    import json

    from alpacakit.curate.stats import data_stats
    from alpacakit.io import read_records

    st = data_stats(read_records(input, required=["instruction"]), kinds)
    if as_json:
        typer.echo(json.dumps(st.as_dict(), indent=2))
    else:
        for line in st.lines():
            typer.echo(line)

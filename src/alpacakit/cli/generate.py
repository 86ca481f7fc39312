"""`alpacakit generate`: a teacher writes instruction data (self-instruct), or answers prompts."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import Flag, config_options
from alpacakit.config import AlpacakitConfig
from alpacakit.rundir import RunDir


@config_options(
    ("generate.num", "--num", "-n"),
    ("teacher.model", "--teacher", "-t"),
    "teacher.base_url",
    "teacher.api_key_env",
    "teacher.api",
    "generate.seeds",
    "generate.max_cost",
    "generate.batch_api",
    # one knob for both: requests in flight, and the batch of requests self-instruct keeps open
    Flag("teacher.max_concurrency", ("--concurrency",), also=("generate.request_batch",)),
    "teacher.max_tokens",
    "teacher.temperature",
)
def generate(
    cfg: AlpacakitConfig,
    out_dir: Path = typer.Option(
        RunDir.default().data,
        "--out-dir",
        "-o",
        help="Output folder: examples.jsonl, discards.jsonl, responses.jsonl (journal), manifest.json.",
    ),
    from_prompts: Path | None = typer.Option(
        None,
        "--from-prompts",
        help="Answer mode: have the teacher answer these instructions (JSONL, JSON, CSV or an HF datasets folder).",
    ),
    prompt_field: str = typer.Option(
        "instruction", "--prompt-field", help="Answer mode: the field/column holding the instruction."
    ),
    input_field: str = typer.Option(
        "input", "--input-field", help="Answer mode: the field/column holding an optional input."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Generate instruction data with a teacher model, resumably.

    Self-instruct (default): the teacher sees our generation rules and 3 random seed tasks, and
    continues the numbered list; every new task is filtered and kept only if its ROUGE-L F with
    all earlier instructions is <= 0.7. Answer mode (--from-prompts): the teacher answers your
    instructions; refusals, boilerplate, truncated and duplicate answers are dropped.

    Kill it at any time and run the same command again: it continues without paying twice.

    Examples:

      alpacakit generate --num 100

      alpacakit generate --teacher smollm2-135m-instruct --num 20 -o runs/try/data

      OPENAI_API_KEY=... alpacakit generate --teacher openai:gpt-4o-mini --num 5000 --max-cost 5 \\
          --set teacher.price.input_per_1m=0.15 --set teacher.price.output_per_1m=0.6

      alpacakit generate --from-prompts prompts.csv --prompt-field question

      OPENAI_API_KEY=... alpacakit generate --teacher openai:gpt-4o-mini --num 52000 --batch-api --max-cost 60
    """
    from alpacakit.generate.runner import generate as run_generate

    result = run_generate(
        cfg,
        out_dir,
        from_prompts=from_prompts,
        prompt_field=prompt_field,
        input_field=input_field,
        show_progress=progress,
    )
    typer.echo(result.summary())
    if result.status not in ("complete",):
        raise typer.Exit(3 if result.status == "stopped_at_budget" else 1)

"""`alpacakit generate`: a teacher writes instruction data (self-instruct), or answers prompts."""

from __future__ import annotations

from pathlib import Path

import typer


def generate(
    num: int | None = typer.Option(None, "--num", "-n", help="Target number of kept examples [default: 100]."),
    out_dir: Path = typer.Option(
        Path("runs/default/data"),
        "--out-dir",
        "-o",
        help="Output folder: examples.jsonl, discards.jsonl, responses.jsonl (journal), manifest.json.",
    ),
    teacher: str | None = typer.Option(
        None,
        "--teacher",
        "-t",
        help="Teacher: embedded name, .gguf path, or openai:MODEL [default: qwen2.5-coder-1.5b-instruct].",
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", help="Base URL of an OpenAI-compatible endpoint (with --teacher openai:MODEL)."
    ),
    api_key_env: str | None = typer.Option(
        None, "--api-key-env", help="Environment variable holding the API key [default: OPENAI_API_KEY]."
    ),
    api: str | None = typer.Option(
        None, "--api", help="chat | completions | auto (auto: raw completions for local models, chat for endpoints)."
    ),
    seeds: Path | None = typer.Option(
        None, "--seeds", help="Seed tasks, self-instruct JSONL [default: alpacakit's own 175]."
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
    max_cost: float | None = typer.Option(
        None, "--max-cost", help="Stop cleanly before spending more than this many dollars."
    ),
    batch_api: bool | None = typer.Option(
        None,
        "--batch-api/--no-batch-api",
        help="Send the requests through the OpenAI "
        "Batch API (openai: teachers): half the price, results within 24 h. Rerun "
        "the same command after a stop to collect the batches [default: off].",
    ),
    concurrency: int | None = typer.Option(None, "--concurrency", help="Requests in flight at once (endpoints only)."),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Completion token limit per request."),
    temperature: float | None = typer.Option(None, "--temperature", help="Sampling temperature."),
    config: Path | None = typer.Option(
        None, "--config", "-c", help="alpacakit.yaml with teacher/generate/curate sections."
    ),
    set_: list[str] | None = typer.Option(
        None, "--set", help="Override any field, e.g. --set generate.filters.max_words=100."
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
    from alpacakit.config import load_config
    from alpacakit.generate.runner import generate as run_generate

    extra = {
        "teacher": {
            "model": teacher,
            "base_url": base_url,
            "api_key_env": api_key_env,
            "api": api,
            "max_concurrency": concurrency,
            "max_tokens": max_tokens,
            "temperature": temperature,
        },
        "generate": {
            "num": num,
            "seeds": str(seeds) if seeds else None,
            "max_cost": max_cost,
            "request_batch": concurrency,
            "batch_api": batch_api,
        },
    }
    cfg = load_config(config, set_, extra)
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

"""`alpacakit chat MODEL`: talk to a model in the terminal, with streaming and history."""

from __future__ import annotations

from pathlib import Path

import typer


def chat(
    model: str = typer.Argument(
        ...,
        help="Model: a model folder (from `alpacakit train`, or any Hugging Face "
        "model folder), a .gguf file, or an embedded name such as smollm2-135m-instruct.",
    ),
    system: str | None = typer.Option(None, "--system", help="System message sent before the conversation."),
    max_tokens: int = typer.Option(256, "--max-tokens", min=1, help="Longest answer, in tokens."),
    temperature: float = typer.Option(0.7, "--temperature", min=0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling."),
    seed: int | None = typer.Option(None, "--seed", help="Sampling seed, for repeatable answers."),
    n_ctx: int = typer.Option(4096, "--n-ctx", min=256, help="Context window; the oldest turns are dropped beyond it."),
    n_threads: int | None = typer.Option(None, "--threads", help="CPU threads [default: all cores]."),
    prompt_format: str | None = typer.Option(
        None,
        "--prompt-format",
        help="Build prompts with this format (alpaca, chat, or a format .json) instead of the model's own template. "
        "Default: the model's chat template or saved prompt_format.json; Alpaca's for base models.",
    ),
    base: Path | None = typer.Option(
        None,
        "--base",
        help="Base model folder of a LoRA adapter, when the adapter was trained on a path that is not on this machine.",
    ),
    stats: bool = typer.Option(
        True, "--stats/--no-stats", help="After each answer, print tokens, speed and history size (stderr)."
    ),
) -> None:
    """Chat with a model in the terminal. Tokens appear as they are generated.

    Commands: /reset forgets the conversation, /exit leaves (so do Ctrl-D and Ctrl-C at the
    prompt); Ctrl-C during an answer stops that answer. Messages can also be piped in, one per
    line: answers go to stdout, notices and stats to stderr.

    For a model trained with the Alpaca prompt (one instruction, no turns), earlier turns are
    passed as the instruction's input ("The conversation so far: ..."); see docs/serve.md.

    Examples:

      alpacakit chat smollm2-135m-instruct

      alpacakit chat runs/quickstart/model --temperature 0

      printf 'Name three colours.\\n/exit\\n' | alpacakit chat runs/quickstart/export/model.gguf
    """
    from alpacakit.serve.backend import ServeBackend, load_teacher
    from alpacakit.serve.chat import ChatOptions, choose_prompt_format, run_chat

    typer.echo(f"loading {model} ...", err=True)
    teacher = load_teacher(model, n_ctx=n_ctx, n_threads=n_threads, base=str(base) if base else None, seed=seed)
    backend = ServeBackend(teacher)
    fmt, notice = choose_prompt_format(backend, prompt_format)
    if notice:
        typer.echo(notice, err=True)
    options = ChatOptions(
        system=system, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, context_tokens=n_ctx
    )
    run_chat(backend, options, prompt_format=fmt, stats=stats)

"""`alpacakit chat MODEL`: talk to a model in the terminal, with streaming and history."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig


@config_options(
    "chat.system",
    "chat.max_tokens",
    "chat.temperature",
    "chat.top_p",
    "chat.seed",
    "chat.stats",
    "serve.n_ctx",
    ("serve.n_threads", "--threads"),
)
def chat(
    cfg: AlpacakitConfig,
    model: str = typer.Argument(
        ...,
        help="Model: a model folder (from `alpacakit train`, or any Hugging Face "
        "model folder), a .gguf file, or an embedded name such as smollm2-135m-instruct.",
    ),
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

    sc, cc = cfg.serve, cfg.chat  # the model is loaded as `alpacakit serve` loads it
    n_ctx = sc.n_ctx
    typer.echo(f"loading {model} ...", err=True)
    teacher = load_teacher(model, n_ctx=n_ctx, n_threads=sc.n_threads, base=str(base) if base else None, seed=cc.seed)
    backend = ServeBackend(teacher)
    fmt, notice = choose_prompt_format(backend, prompt_format)
    if notice:
        typer.echo(notice, err=True)
    options = ChatOptions(
        system=cc.system,
        max_tokens=cc.max_tokens,
        temperature=cc.temperature,
        top_p=cc.top_p,
        seed=cc.seed,
        context_tokens=n_ctx,
    )
    run_chat(backend, options, prompt_format=fmt, stats=cc.stats)

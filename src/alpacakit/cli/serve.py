"""`alpacakit serve MODEL`: an OpenAI-compatible HTTP API and a web chat page."""

from __future__ import annotations

from pathlib import Path

import typer

from alpacakit.cli.options import config_options
from alpacakit.config import AlpacakitConfig


@config_options(
    "serve.host",
    ("serve.port", "--port", "-p"),
    "serve.api_key_env",
    "serve.safety",
    ("serve.moderation.base_url", "--moderation-base-url"),
    "serve.max_tokens_cap",
    "serve.max_prompt_tokens",
    "serve.max_concurrency",
    "serve.queue_size",
    "serve.model_name",
    "serve.n_ctx",
    ("serve.n_threads", "--threads"),
    ("serve.insecure_no_key", "--insecure-no-key"),
    ("serve.allowed_hosts", "--allowed-host"),
)
def serve(
    cfg: AlpacakitConfig,
    model: str = typer.Argument(
        ...,
        help="Model: a model folder (from `alpacakit train`, or any Hugging Face "
        "model folder), a .gguf file, or an embedded name such as smollm2-135m-instruct.",
    ),
    prompt_format: str | None = typer.Option(
        None, "--prompt-format", help="Override a model folder's saved prompt format (alpaca, chat, or a format .json)."
    ),
    base: Path | None = typer.Option(None, "--base", help="Base model folder of a LoRA adapter."),
) -> None:
    """Serve a model over an OpenAI-compatible API, with a web chat page at /.

    Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions (both stream
    with "stream": true), GET / (chat page), GET /health. Any OpenAI client works: point its
    base URL at http://HOST:PORT/v1. alpacakit itself can use it as a teacher or judge:
    --teacher openai:NAME --base-url http://HOST:PORT/v1.

    Examples:

      alpacakit serve smollm2-135m-instruct

      ALPACAKIT_KEY=$(openssl rand -hex 24) alpacakit serve runs/quickstart/model --host 0.0.0.0 --api-key-env ALPACAKIT_KEY

      alpacakit serve model.gguf --safety blocklist --max-tokens-cap 512
    """
    from alpacakit.serve.server import serve as run_serve

    cfg = cfg.serve
    if cfg.default_max_tokens > cfg.max_tokens_cap:
        cfg.default_max_tokens = cfg.max_tokens_cap
    run_serve(
        model,
        cfg,
        base=str(base) if base else None,
        prompt_format=prompt_format,
        echo=lambda *a, **k: typer.echo(" ".join(map(str, a)), err=k.get("file") is not None),
    )

"""`alpacakit serve MODEL`: an OpenAI-compatible HTTP API and a web chat page."""

from __future__ import annotations

from pathlib import Path

import typer


def serve(
    model: str = typer.Argument(
        ...,
        help="Model: a model folder (from `alpacakit train`, or any Hugging Face "
        "model folder), a .gguf file, or an embedded name such as smollm2-135m-instruct.",
    ),
    host: str | None = typer.Option(
        None,
        "--host",
        help="Interface to listen on [default: 127.0.0.1, this "
        "machine only]. 0.0.0.0 opens it to the network: add --api-key-env.",
    ),
    port: int | None = typer.Option(None, "--port", "-p", help="TCP port [default: 8000]; 0 = any free port."),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Require 'Authorization: Bearer KEY', KEY being the value of this environment variable.",
    ),
    safety: str | None = typer.Option(
        None,
        "--safety",
        help="Safety filter: blocklist, blocklist:PATH (a YAML "
        "list) or moderation:MODEL. Default: none (as Alpaca shipped).",
    ),
    moderation_base_url: str | None = typer.Option(
        None, "--moderation-base-url", help="Base URL when the moderation model is openai:MODEL."
    ),
    max_tokens_cap: int | None = typer.Option(
        None, "--max-tokens-cap", help="Largest max_tokens a request may ask for [default: 1024]."
    ),
    max_prompt_tokens: int | None = typer.Option(
        None, "--max-prompt-tokens", help="Longest prompt in tokens [default: 3072]."
    ),
    max_concurrency: int | None = typer.Option(
        None,
        "--max-concurrency",
        help="Requests generating at once (a local GGUF model decodes them together) [default: 4].",
    ),
    queue_size: int | None = typer.Option(
        None, "--queue-size", help="Requests that may wait; more get 429 [default: 8]."
    ),
    model_name: str | None = typer.Option(
        None, "--model-name", help="Model id shown by /v1/models [default: the model's name]."
    ),
    n_ctx: int | None = typer.Option(None, "--n-ctx", help="Context window of a GGUF model [default: 4096]."),
    n_threads: int | None = typer.Option(None, "--threads", help="CPU threads [default: all cores]."),
    prompt_format: str | None = typer.Option(
        None, "--prompt-format", help="Override a model folder's saved prompt format (alpaca, chat, or a format .json)."
    ),
    base: Path | None = typer.Option(None, "--base", help="Base model folder of a LoRA adapter."),
    insecure_no_key: bool = typer.Option(
        False,
        "--insecure-no-key",
        help="Allow a non-loopback --host without "
        "--api-key-env (refused otherwise: anyone on the network could use it).",
    ),
    allowed_hosts: list[str] | None = typer.Option(
        None,
        "--allowed-host",
        help="A host name clients may address besides loopback (e.g. behind a reverse proxy); repeatable.",
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help="alpacakit.yaml (its serve section)."),
    set_: list[str] | None = typer.Option(None, "--set", help="Override any field, e.g. --set serve.queue_size=16."),
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
    from alpacakit.config import load_config
    from alpacakit.serve.server import serve as run_serve

    extra = {
        "serve": {
            "host": host,
            "port": port,
            "api_key_env": api_key_env,
            "safety": safety,
            "max_tokens_cap": max_tokens_cap,
            "max_prompt_tokens": max_prompt_tokens,
            "max_concurrency": max_concurrency,
            "queue_size": queue_size,
            "model_name": model_name,
            "n_ctx": n_ctx,
            "n_threads": n_threads,
            "allowed_hosts": allowed_hosts,
            "insecure_no_key": insecure_no_key or None,
            "moderation": {"base_url": moderation_base_url},
        }
    }
    cfg = load_config(config, set_, extra).serve
    if cfg.default_max_tokens > cfg.max_tokens_cap:
        cfg.default_max_tokens = cfg.max_tokens_cap
    run_serve(
        model,
        cfg,
        base=str(base) if base else None,
        prompt_format=prompt_format,
        echo=lambda *a, **k: typer.echo(" ".join(map(str, a)), err=k.get("file") is not None),
    )

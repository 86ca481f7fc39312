"""The `teacher` section of `alpacakit.yaml`, and the settings every model-calling stage shares.

`TeacherConfig` describes any model that answers (the teacher, a judge, a system under
evaluation); `BatchApiConfig` is how generate and eval use the OpenAI Batch API. Only pydantic
and `alpacakit.settings` here: `alpacakit --help` and `config show` import this.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from alpacakit.settings import Section


class Price(Section):
    """Dollars per million tokens. Local models cost 0."""

    input_per_1m: float = Field(0.0, ge=0, description="$ per 1M prompt tokens")
    output_per_1m: float = Field(0.0, ge=0, description="$ per 1M completion tokens")


class TeacherConfig(Section):
    """A model that writes (teacher), judges (judge) or answers: local GGUF or any OpenAI-compatible API."""

    model: str = Field(
        "qwen2.5-coder-1.5b-instruct",
        description="Model reference: an embedded name (qwen2.5-coder-1.5b-instruct, smollm2-135m-instruct, "
        "gemma-3-270m), a path to a .gguf file, or 'openai:MODEL' for an OpenAI-compatible endpoint.",
    )
    base_url: str | None = Field(
        None, description="Endpoint base URL for openai: models (e.g. http://127.0.0.1:8000/v1)."
    )
    base_urls: list[str] = Field(
        default_factory=list,
        description="More endpoints serving the same model (a farm "
        "of vLLM or llama.cpp servers): requests go to the least busy of base_url and "
        "these; one that fails is skipped for endpoint_cooldown_s, then tried again.",
    )
    endpoint_cooldown_s: float = Field(
        30.0,
        gt=0,
        description="How long an endpoint that failed (no answer, timeout, 5xx) is skipped when others are there.",
    )
    api_key_env: str = Field(
        "OPENAI_API_KEY", description="Name of the environment variable holding the API key (never the key itself)."
    )
    api: Literal["auto", "chat", "completions"] = Field(
        "auto",
        description="chat = chat completions; completions = raw text completion (legacy /v1/completions or no chat template).",
    )
    max_concurrency: int = Field(
        6,
        ge=1,
        le=64,
        description="Requests in flight at once. A local GGUF model decodes this many together "
        "(continuous batching: on a 2-core CPU 6 give ~1.6x the tokens/s of 1, benchmarks/engine_throughput.py), "
        "each with its own n_ctx tokens of cache.",
    )
    max_retries: int = Field(6, ge=0, description="Retries on 429, 5xx, timeouts and connection errors.")
    backoff_base_s: float = Field(
        1.0, gt=0, description="First retry delay; doubles each retry, with full jitter; Retry-After wins when given."
    )
    backoff_max_s: float = Field(60.0, gt=0, description="Longest single retry delay.")
    timeout_s: float = Field(
        300.0, gt=0, description="Per-request timeout in seconds (local GGUF models: seconds without a new token)."
    )
    temperature: float = Field(1.0, ge=0, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling.")
    max_tokens: int = Field(1536, ge=1, description="Completion token limit per request.")
    seed: int | None = Field(None, description="Sampling seed (local models; endpoints that support it).")
    n_ctx: int = Field(4096, ge=256, description="Context window for local GGUF models.")
    n_threads: int | None = Field(None, description="CPU threads for local GGUF models (default: all cores).")
    price: Price = Field(default_factory=Price, description="Price table for cost accounting and --max-cost.")


class BatchApiConfig(Section):
    """How the OpenAI Batch API is used (with batch_api: true): half the price, hours not seconds."""

    poll_s: float = Field(30.0, gt=0, description="Seconds between two looks at a batch in progress.")
    max_lines: int = Field(
        50_000,
        ge=1,
        le=50_000,
        description="Most requests in one batch (the API allows 50,000 "
        "and 200 MB); more are split over several batches.",
    )
    margin: float = Field(
        0.25,
        ge=0,
        description="Self-instruct: extra share of requests in a batch over what the "
        "kept-per-request rate so far says the target needs (too few costs another batch, hours).",
    )
    price_factor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the price paid in a batch (OpenAI: half; set it to your provider's discount).",
    )

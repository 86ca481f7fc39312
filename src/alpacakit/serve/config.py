"""The `serve` section of `alpacakit.yaml`: where the server listens, who may call it, and how
much one request may ask for.

The defaults are for one person on one machine: loopback only, one generation at a time (a
local model on a CPU gains nothing from running two at once; it only makes both slower) and a
short queue, so a burst of clients gets a quick 429 instead of a minute-long hang.

This module imports only pydantic and `alpacakit.settings`: `alpacakit.config` imports it to
build `AlpacakitConfig`, and `alpacakit --help` must stay instant.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from alpacakit.settings import Section


class ModerationConfig(Section):
    """The model asked to classify requests when `safety` is `moderation:MODEL`."""

    base_url: str | None = Field(None, description="Endpoint base URL when the moderation model is openai:MODEL.")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding that endpoint's API key.")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout of the moderation call.")
    fail_closed: bool = Field(
        True,
        description="If the moderation call fails, refuse the request (true) or let it through (false).",
    )
    answer_block_chars: int = Field(
        400,
        ge=0,
        description="The answer is checked too, in blocks of this many characters, each released to the "
        "client only once the moderation model has passed it (0 = check requests only).",
    )


class ServeConfig(Section):
    """`alpacakit serve`: an OpenAI-compatible HTTP API and a web chat page for one model."""

    host: str = Field(
        "127.0.0.1",
        description="Interface to listen on. 127.0.0.1 = this machine only; "
        "0.0.0.0 = every interface (set api_key_env as well).",
    )
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 = any free port).")
    api_key_env: str | None = Field(
        None,
        description="Name of an environment variable holding the API key clients must send as "
        "'Authorization: Bearer KEY'. Unset = no authentication.",
    )
    model_name: str | None = Field(
        None, description="Model id reported by /v1/models and in responses (default: the model's own name)."
    )
    max_tokens_cap: int = Field(1024, ge=1, description="Largest max_tokens a request may ask for (400 above it).")
    default_max_tokens: int = Field(256, ge=1, description="max_tokens of a request that sets none.")
    max_prompt_tokens: int = Field(3072, ge=1, description="Longest prompt, in the model's tokens (400 above it).")
    max_concurrency: int = Field(
        4,
        ge=1,
        le=64,
        description="Requests generating at once (a local GGUF model "
        "decodes them together in one batch, each with n_ctx tokens of cache).",
    )
    queue_size: int = Field(8, ge=0, description="Requests that may wait for a free slot; one more gets 429.")
    queue_timeout_s: float = Field(300.0, gt=0, description="Longest wait in the queue before a 503.")
    generation_timeout_s: float = Field(
        600.0,
        gt=0,
        description="Longest one generation may run (a stalled local model is stopped, and the client gets an error).",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted (413 above it).")
    body_timeout_s: float = Field(30.0, gt=0, description="Longest a request body may take to arrive (408 after).")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a request's headers may take to arrive; the "
        "connection is then answered 408 and closed (slow-header attacks).",
    )
    max_connections: int = Field(
        512,
        ge=8,
        description="Open connections in all (lowered to fit the process's "
        "open-file limit); one more gets 503 and is closed.",
    )
    max_pending_connections: int = Field(
        64,
        ge=1,
        description="Connections that may wait for their headers at once; one more evicts the oldest waiting one.",
    )
    n_ctx: int = Field(4096, ge=256, description="Context window of a local GGUF model.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads for the model (default: all cores).")
    safety: str | None = Field(
        None,
        description="Optional safety filter: 'blocklist' (alpacakit's default list), 'blocklist:PATH' (your "
        "YAML list) or 'moderation:MODEL' (a model classifies each request). Unset = no filter.",
    )
    moderation: ModerationConfig = Field(default_factory=ModerationConfig)
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from "
        "a browser page served elsewhere (the built-in page needs none).",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names requests may be addressed to "
        "besides loopback ones (a server bound to loopback refuses others: DNS "
        "rebinding). Bound to 0.0.0.0 with this empty, any name is accepted.",
    )
    insecure_no_key: bool = Field(
        False,
        description="Allow listening on a non-loopback interface without an API "
        "key (anyone who can reach the port can use the model).",
    )

    @field_validator("safety", mode="before")
    @classmethod
    def _check_safety(cls, v: object) -> str | None:
        if v is False or v is None:  # YAML and --set read `off` / `no` as false
            return None
        if not isinstance(v, str):
            raise ValueError("expected 'off', 'blocklist', 'blocklist:PATH' or 'moderation:MODEL'")
        if v is None or v.strip() == "" or v.strip().lower() in {"none", "off"}:
            return None
        v = v.strip()
        kind = v.split(":", 1)[0]
        if kind not in {"blocklist", "moderation"}:
            raise ValueError("expected 'blocklist', 'blocklist:PATH' or 'moderation:MODEL'")
        if kind == "moderation" and not v.partition(":")[2].strip():
            raise ValueError(
                "'moderation' needs a model: moderation:MODEL (e.g. moderation:qwen2.5-coder-1.5b-instruct)"
            )
        return v


class ChatConfig(Section):
    """`alpacakit chat`: how each answer is sampled. The model's own settings (n_ctx, n_threads)
    are the serve section's: chat and serve load a model the same way."""

    system: str | None = Field(None, description="System message sent before the conversation.")
    max_tokens: int = Field(256, ge=1, description="Longest answer, in tokens.")
    temperature: float = Field(0.7, ge=0, description="Sampling temperature (0 = greedy).")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling (unset: the model's default).")
    seed: int | None = Field(None, description="Sampling seed, for repeatable answers.")
    stats: bool = Field(True, description="After each answer, print tokens, speed and history size (stderr).")

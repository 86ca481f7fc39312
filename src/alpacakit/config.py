"""Typed configuration: one YAML file (`alpacakit.yaml`) with a section per verb.

Every field has a description (shown by `alpacakit config show --explain`). Values come from,
lowest to highest priority: the defaults here, a YAML file, `--set section.field=value`
overrides, and the named flags of a verb.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from alpacakit.errors import ConfigError
from alpacakit.serve.config import ServeConfig


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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


class FilterConfig(Section):
    """Stanford Alpaca's instruction filters; every one can be changed or switched off."""

    min_words: int = Field(4, description="Drop instructions with fewer words (Stanford: <= 3 dropped).")
    max_words: int = Field(150, description="Drop instructions with more words.")
    blacklist: list[str] = Field(
        default_factory=lambda: [
            "image",
            "images",
            "graph",
            "graphs",
            "picture",
            "pictures",
            "file",
            "files",
            "map",
            "maps",
            "draw",
            "plot",
            "go to",
            "video",
            "audio",
            "music",
            "flowchart",
            "diagram",
        ],
        description="Whole words/phrases (case-insensitive) that a text-only model cannot act on.",
    )
    banned_prefixes: list[str] = Field(
        default_factory=lambda: ["Write a program"], description="Drop instructions that start with these."
    )
    drop_punctuation_start: bool = Field(True, description="Drop instructions whose first character is punctuation.")
    drop_non_ascii_start: bool = Field(True, description="Drop instructions whose first character is not ASCII.")


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


class GenerateConfig(Section):
    """Self-instruct generation (Stanford Alpaca's method) or answering existing prompts."""

    num: int = Field(100, ge=1, description="Target number of kept examples.")
    seeds: str | None = Field(
        None, description="Seed tasks (self-instruct JSONL). Default: alpacakit's own 175 seed tasks."
    )
    prompt: str | None = Field(None, description="Prompt template file. Default: alpacakit's self-instruct prompt.")
    num_prompt_instructions: int = Field(3, ge=1, description="Seed tasks shown as numbered examples per request.")
    tasks_per_request: int = Field(20, ge=2, description="Number the teacher is asked to continue up to.")
    input_requests: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of requests whose example tasks all have an input (otherwise at least one "
        "has). Small teachers copy the examples' shape: Qwen2.5-Coder wrote inputs for 4% of its tasks at 0, 67% "
        "at 0.5, but then repeated one rewriting pattern (docs/generate.md).",
    )
    request_batch: int | None = Field(
        None,
        ge=1,
        description="Requests in flight at once (never more than the teacher's max_concurrency; unset: exactly that).",
    )
    similarity_threshold: float = Field(
        0.7, ge=0, le=1, description="Keep an instruction only if ROUGE-L F <= this against all kept ones."
    )
    language: str = Field(
        "English",
        min_length=1,
        description="Language the teacher is asked to write tasks in (the {language} of the "
        "prompt). For another language, give seed tasks in it (--seeds) and set tokenizer: multilingual.",
    )
    tokenizer: Literal["rouge_score", "multilingual"] = Field(
        "rouge_score",
        description="ROUGE-L tokens: rouge_score's default ([a-z0-9] words, as Stanford ran it) or "
        "multilingual (CJK characters one token each, other scripts' Unicode words). Multilingual also keeps "
        "instructions that start with a non-ASCII character.",
    )
    cut_runaway_answers: bool = Field(
        True,
        description="Local teachers: cut an answer short once it repeats one of its own instructions (ROUGE-L "
        "above similarity_threshold) or one task runs past max_task_chars. Small teachers loop from there on; the "
        "tokens would all be discarded.",
    )
    max_task_chars: int = Field(
        2000,
        ge=100,
        description="With cut_runaway_answers: longest unfinished task "
        "(instruction, input and output) before the answer is cut.",
    )
    keep_most_similar: int = Field(10, ge=0, description="Most similar earlier instructions stored per example.")
    mean_similarity: Literal["off", "sample", "exact"] = Field(
        "sample",
        description="Each example's mean ROUGE-L against the pool (Stanford's avg_similarity_score): exact "
        "(O(pool) per kept example: ~2 ms at a 50K pool), sample (over a fixed-seed uniform sample of 256 pool "
        "entries: exact up to 256, standard error ~0.005 beyond) or off. true/false mean exact/off.",
    )

    @field_validator("mean_similarity", mode="before")
    @classmethod
    def _mean_from_bool(cls, v: Any) -> Any:
        return {True: "exact", False: "off"}.get(v, v) if isinstance(v, bool) else v

    process_in_worker: bool = Field(
        True,
        description="Self-instruct with an endpoint teacher (openai:): parse, filter and dedup answers in a "
        "forked worker process, so the requests keep going out meanwhile (same results; see docs/generate.md).",
    )
    max_cost: float | None = Field(None, ge=0, description="Stop cleanly before spending more than this many dollars.")
    max_requests: int | None = Field(
        None,
        ge=1,
        description="Stop after this many teacher requests in all (default: 10 + 2 x num, a guard against a "
        "teacher whose answers never parse).",
    )
    stall_requests: int = Field(
        200,
        ge=1,
        description="Stop (status 'stalled') once this many answers in a row kept no example: a teacher "
        "that only repeats itself would otherwise be asked until max_requests.",
    )
    rng_seed: int = Field(42, description="Seed for the choice of example tasks.")
    filters: FilterConfig = Field(default_factory=FilterConfig)
    batch_api: bool = Field(
        False,
        description="Send the requests through the OpenAI Batch API (an openai: teacher "
        "only): half the price, results within 24 h instead of seconds. See docs/generate.md.",
    )
    batch: BatchApiConfig = Field(
        default_factory=BatchApiConfig, description="With batch_api: polling, batch size, margin, price factor."
    )


class RefusalConfig(Section):
    """Answer-mode curation: what counts as a refusal or boilerplate."""

    patterns: str | None = Field(
        None, description="YAML file of regex patterns. Default: alpacakit's refusal patterns."
    )
    min_output_chars: int = Field(1, ge=0, description="Drop answers shorter than this (after stripping).")
    drop_truncated: bool = Field(True, description="Drop answers cut by the token limit (finish_reason=length).")
    drop_exact_duplicates: bool = Field(True, description="Drop repeated (instruction, input, output) triples.")


class CurateConfig(Section):
    threshold: float = Field(
        0.7, ge=0, le=1, description="ROUGE-L F-measure above which an instruction is a near-duplicate."
    )
    refusals: RefusalConfig = Field(default_factory=RefusalConfig)


class AlpacakitConfig(Section):
    """The whole `alpacakit.yaml`. Stages add their sections here as they land."""

    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig())
    eval: EvalConfig = Field(default_factory=lambda: EvalConfig())


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """Turn ['a.b=1', 'a.c=[x, y]'] into a nested dict; values are parsed as YAML."""
    data: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value", hint="e.g. --set generate.num=200")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return data


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    if path.is_dir():
        raise ConfigError(
            f"{path} is a folder, not a config file", hint="pass the YAML file, e.g. --config alpacakit.yaml"
        )
    from alpacakit.io import read_text

    try:
        data = yaml.safe_load(read_text(path)) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, found {type(data).__name__}")
    return data


def build(model: type[BaseModel], data: dict[str, Any], source: str = "config") -> Any:
    """Validate `data` into `model`, turning pydantic's errors into one readable message."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = [f"  {'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{source}: invalid settings:\n" + "\n".join(lines)) from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, extra: dict[str, Any] | None = None
) -> AlpacakitConfig:
    """Defaults <- YAML file <- --set overrides <- named flags (`extra`, None values ignored)."""
    data = load_yaml(path) if path else {}
    data = deep_merge(data, parse_overrides(overrides))
    if extra:
        data = deep_merge(data, _drop_none(extra))
    return build(AlpacakitConfig, data, str(path) if path else "settings")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


# At the end: alpacakit.train.config builds on Section, defined above (a top-level import would be circular).
from alpacakit.evaluate.config import EvalConfig  # noqa: E402  (builds on Section/TeacherConfig above)
from alpacakit.train.config import TrainConfig  # noqa: E402

AlpacakitConfig.model_rebuild()

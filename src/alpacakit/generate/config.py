"""The `generate` section of `alpacakit.yaml`: self-instruct generation and its filters.

Only pydantic and the sections it builds on here: `alpacakit --help` and `config show` import this.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from alpacakit.settings import Section
from alpacakit.teachers.config import BatchApiConfig


class FilterConfig(Section):
    """Stanford Alpaca's instruction filters; every one can be changed or switched off."""

    min_words: int = Field(4, ge=0, description="Drop instructions with fewer words (Stanford: <= 3 dropped).")
    max_words: int = Field(150, ge=1, description="Drop instructions with more words.")
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
    stats_copies: int | None = Field(
        None,
        ge=0,
        description="With process_in_worker: forked copies of the dedup pool that compute each example's "
        "statistics (most similar instructions, mean similarity) while the worker only decides; same results, "
        "three quarters of the processing moved off the worker. 0: the worker computes them. Default: one per "
        "core beyond two, 1 to 4.",
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

"""The `curate` section of `alpacakit.yaml`: near-duplicate threshold and answer-mode refusal rules.

Only pydantic and `alpacakit.settings` here: `alpacakit --help` and `config show` import this.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from alpacakit.settings import Section


class RefusalConfig(Section):
    """Answer-mode curation: what counts as a refusal or boilerplate."""

    patterns: str | None = Field(
        None, description="YAML file of regex patterns. Default: alpacakit's refusal patterns."
    )
    min_output_chars: int = Field(1, ge=0, description="Drop answers shorter than this (after stripping).")
    drop_truncated: bool = Field(True, description="Drop answers cut by the token limit (finish_reason=length).")
    drop_exact_duplicates: bool = Field(True, description="Drop repeated (instruction, input, output) triples.")


class CurateConfig(Section):
    """`alpacakit curate`: what counts as a near-duplicate, and what as a refusal."""

    threshold: float = Field(
        0.7, ge=0, le=1, description="ROUGE-L F-measure above which an instruction is a near-duplicate."
    )
    tokenizer: str = Field(
        "rouge_score",
        description="ROUGE-L tokens for `curate dedup`: rouge_score's default ([a-z0-9] words only, as Stanford ran "
        "it) or multilingual (CJK characters one token each, other scripts' Unicode words; for non-English data).",
    )

    @field_validator("tokenizer")
    @classmethod
    def _known_tokenizer(cls, v: str) -> str:
        # checked here, not by a Literal, so a typo in the YAML reads as it does from `curate dedup`
        if v not in ("rouge_score", "multilingual"):
            raise ValueError(f"unknown tokenizer {v!r}: use rouge_score or multilingual")
        return v

    refusals: RefusalConfig = Field(default_factory=RefusalConfig)

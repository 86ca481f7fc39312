"""Stanford Alpaca's instruction filters, each a named reason so discards can be counted.

The defaults (word limits, the blacklist of things a text-only model cannot do, the banned
prefix) come from `FilterConfig`; nothing is hard-coded here.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from functools import cached_property

from alpacakit.generate.config import FilterConfig


class InstructionFilter:
    def __init__(self, config: FilterConfig, count_words: Callable[[str], int] | None = None):
        """`count_words` measures length for min_words/max_words (default: whitespace words,
        as Stanford counted; Chinese or Japanese have no spaces, so the multilingual mode
        counts its tokens: each CJK character one)."""
        self.config = config
        self._count_words = count_words or (lambda text: len(text.split()))

    @cached_property
    def _blacklist(self) -> re.Pattern[str] | None:
        words = [w for w in self.config.blacklist if w.strip()]
        if not words:
            return None
        alternatives = "|".join(r"\s+".join(map(re.escape, w.split())) for w in words)
        return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)

    def reason(self, instruction: str) -> str | None:
        """The name of the first filter that rejects `instruction`, or None to keep it."""
        c = self.config
        n_words = self._count_words(instruction)
        if n_words < c.min_words:
            return "too_short"
        if n_words > c.max_words:
            return "too_long"
        if self._blacklist is not None and self._blacklist.search(instruction):
            return "blacklisted_word"
        if any(instruction.startswith(p) for p in c.banned_prefixes):
            return "banned_prefix"
        if c.drop_punctuation_start and instruction[0] in string.punctuation:
            return "starts_with_punctuation"
        if c.drop_non_ascii_start and not instruction[0].isascii():
            return "starts_non_ascii"
        return None

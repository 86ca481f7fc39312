"""Optional safety filter for `serve` (Stanford Alpaca's demo shipped without one).

Two kinds, chosen with `serve.safety` / `--safety`:

- `blocklist` or `blocklist:PATH`: phrases and regular expressions per category, from a YAML
  file (alpacakit's conservative default is `serve/data/blocklist.yaml`). Cheap enough to run
  on the answer too: generation is cut at the first match.
- `moderation:MODEL`: a model (any reference a teacher accepts: an embedded name, a .gguf,
  openai:MODEL with `serve.moderation.base_url`) classifies each request as SAFE or UNSAFE
  with the prompts in `serve/data/moderation.yaml`, and the answer too, in blocks of
  `serve.moderation.answer_block_chars` characters released to the client only once checked.
  The text to classify goes into the prompt as a JSON string between two lines carrying a
  random boundary, so it cannot close the block and add instructions of its own.

Every message is screened, the assistant turns a client sends included (a forged earlier
answer is as much the client's text as its question). Text is compared after folding: NFKC
(fullwidth and other compatibility forms become plain letters) with invisible format
characters removed (zero-width space and joiners, soft hyphen, word joiner, BOM, bidi marks,
variation selectors), so `b\u200bomb` or `ｂｏｍｂ` reads as `bomb`. An answer is folded the
same way, incrementally as it streams, and cut at the matching position of the original text.

What a refused request gets, decided here and documented in docs/serve.md: HTTP 400 with an
OpenAI-style error whose code is `content_filter` (the message names the category). Not a 200
with a polite refusal as the answer: a pipeline that uses this server as a teacher must be able
to tell "the model said this" from "the server refused", or refusals end up in training data.
An answer cut by the blocklist ends with finish_reason `content_filter`, as OpenAI's does.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml

from alpacakit.errors import ConfigError

if TYPE_CHECKING:
    from alpacakit.serve.config import ServeConfig

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    blocked: bool
    category: str | None = None
    detail: str = ""


class SafetyFilter(Protocol):
    name: str
    answer_block_chars: int  # > 0: the answer is held back and `check_answer`ed in blocks this long

    async def check(self, text: str) -> Verdict: ...

    def scan_output(self, answer: FoldedText) -> tuple[str, int] | None: ...

    async def check_answer(self, text: str) -> Verdict: ...


# ---------------------------------------------------------------------- folding text before matching

_INVISIBLE_EXTRA = frozenset("\u034f\u115f\u1160\u3164\uffa0") | frozenset(map(chr, range(0xFE00, 0xFE10)))


def _invisible(ch: str) -> bool:
    """Format characters (zero-width space/joiners, soft hyphen, bidi marks, BOM...), variation
    selectors, the combining grapheme joiner and the Hangul fillers: they render as nothing."""
    return unicodedata.category(ch) == "Cf" or ch in _INVISIBLE_EXTRA


def fold(text: str) -> tuple[str, list[int]]:
    """`text` as the filter compares it, and for each character of the result the index in
    `text` it came from. NFKC is applied per base character with its combining marks, so every
    output character maps back to one place in the original."""
    out: list[str] = []
    where: list[int] = []
    i, n = 0, len(text)
    while i < n:
        j = i + 1
        while j < n and unicodedata.combining(text[j]):
            j += 1
        segment = "".join(c for c in text[i:j] if not _invisible(c))
        if segment:
            for ch in unicodedata.normalize("NFKC", segment):
                if not _invisible(ch):
                    out.append(ch)
                    where.append(i)
        i = j
    return "".join(out), where


class FoldedText:
    """An answer folded as it streams in: each new piece folds only from the last base
    character on (a combining mark in the next piece may still change it), so scanning a long
    answer token by token stays linear."""

    def __init__(self) -> None:
        self.raw = ""
        self.folded = ""
        self.where: list[int] = []
        self._raw_from = 0  # start of the last, still open segment in `raw`
        self._folded_from = 0

    def append(self, piece: str) -> None:
        self.raw += piece
        tail, where = fold(self.raw[self._raw_from :])
        self.folded = self.folded[: self._folded_from] + tail
        self.where = self.where[: self._folded_from] + [self._raw_from + w for w in where]
        if self.where:
            last = self.where[-1]
            k = len(self.where) - 1
            while k > 0 and self.where[k - 1] == last:
                k -= 1
            self._raw_from, self._folded_from = last, k

    def raw_index(self, folded_index: int) -> int:
        return self.where[folded_index] if folded_index < len(self.where) else len(self.raw)


def default_blocklist_path() -> Path:
    return Path(str(resources.files("alpacakit.serve").joinpath("data", "blocklist.yaml")))


class Blocklist:
    """Categories of compiled patterns. `match(text)` -> (category, start index) of the first hit."""

    def __init__(self, categories: dict[str, list[re.Pattern[str]]], source: str):
        self.categories = categories
        self.source = source
        self.name = f"blocklist:{source}"

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> Blocklist:
        path = Path(path).expanduser() if path else default_blocklist_path()
        if not path.is_file():
            raise ConfigError(
                f"{path}: blocklist file not found", hint=f"pass a YAML file shaped like {default_blocklist_path()}"
            )
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, dict) or not cats:
            raise ConfigError(
                f"{path}: expected a top-level 'categories' mapping of name -> {{phrases, patterns}}",
                hint=f"see {default_blocklist_path()} for the format",
            )
        compiled: dict[str, list[re.Pattern[str]]] = {}
        for name, spec in cats.items():
            spec = spec or {}
            if not isinstance(spec, dict) or set(spec) - {"phrases", "patterns"}:
                raise ConfigError(f"{path}: category {name!r} must have only 'phrases' and/or 'patterns' lists")
            pats: list[re.Pattern[str]] = []
            for i, phrase in enumerate(spec.get("phrases") or []):
                words = str(phrase).split()
                if not words:
                    raise ConfigError(f"{path}: category {name!r}, phrase #{i + 1} is empty")
                pats.append(re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, words)) + r"(?!\w)", re.IGNORECASE))
            for i, pattern in enumerate(spec.get("patterns") or []):
                try:
                    pats.append(re.compile(str(pattern), re.IGNORECASE))
                except re.error as e:
                    raise ConfigError(
                        f"{path}: category {name!r}, pattern #{i + 1} {pattern!r} is not a valid "
                        f"regular expression: {e}"
                    ) from None
            if pats:
                compiled[str(name)] = pats
        return cls(compiled, str(path))

    def match(self, text: str) -> tuple[str, int] | None:
        best: tuple[str, int] | None = None
        for cat, pats in self.categories.items():
            for p in pats:
                m = p.search(text)
                if m and (best is None or m.start() < best[1]):
                    best = (cat, m.start())
        return best

    answer_block_chars = 0  # cheap enough to scan every token: nothing is held back

    async def check(self, text: str) -> Verdict:
        hit = self.match(fold(text)[0])
        if hit:
            return Verdict(True, hit[0], "matched the server's blocklist")
        return Verdict(False)

    def scan_output(self, answer: FoldedText) -> tuple[str, int] | None:
        """(category, index in the raw answer where the first match starts), or None."""
        hit = self.match(answer.folded)
        return (hit[0], answer.raw_index(hit[1])) if hit else None

    async def check_answer(self, text: str) -> Verdict:
        return await self.check(text)


@lru_cache(maxsize=1)
def moderation_prompts() -> dict[str, Any]:
    text = resources.files("alpacakit.serve").joinpath("data", "moderation.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def moderation_messages(kind: str, text: str, boundary: str | None = None) -> list[dict[str, str]]:
    """The classifier's messages for a `kind` ('request' or 'answer') of text. The text goes in
    as a JSON string (quotes and newlines escaped) between two lines that carry a random
    boundary, so nothing in it can end the block or pass for the instructions around it."""
    prompt = moderation_prompts()[kind]
    boundary = boundary or secrets.token_hex(8)
    return [
        {"role": "system", "content": prompt["system"].strip()},
        {
            "role": "user",
            "content": prompt["user"].strip().format(boundary=boundary, text=json.dumps(text, ensure_ascii=False)),
        },
    ]


def parse_moderation(answer: str) -> Verdict | None:
    """SAFE -> allowed; UNSAFE[: category] -> blocked; anything else -> None (unparsable)."""
    words = answer.strip().split(None, 1)
    if not words:
        return None
    head = words[0].strip(".:,!*\"'`").upper()
    if head == "SAFE":
        return Verdict(False)
    if head == "UNSAFE":
        rest = (words[1] if len(words) > 1 else "") if ":" not in words[0] else answer.split(":", 1)[1]
        category = rest.strip(" :.\n").split("\n")[0][:60] or "unsafe"
        return Verdict(True, category, "the moderation model classified the text as unsafe")
    return None


class ModerationFilter:
    """Asks `teacher` (a model backend) to classify each request, and the answer in blocks."""

    def __init__(
        self, teacher: Any, *, fail_closed: bool = True, name: str | None = None, answer_block_chars: int = 400
    ):
        self.teacher = teacher
        self.fail_closed = fail_closed
        self.name = name or f"moderation:{getattr(teacher, 'name', 'model')}"
        self.answer_block_chars = answer_block_chars
        self.max_tokens = int(moderation_prompts().get("max_tokens", 8))

    async def check(self, text: str) -> Verdict:
        return await self._classify("request", text)

    async def check_answer(self, text: str) -> Verdict:
        return await self._classify("answer", text)

    async def _classify(self, kind: str, text: str) -> Verdict:
        try:
            out = await self.teacher.chat(
                moderation_messages(kind, fold(text)[0]), max_tokens=self.max_tokens, temperature=0.0
            )
            verdict = parse_moderation(out.text)
            problem = None if verdict else f"unparsable moderation answer {out.text[:40]!r}"
        except Exception as e:  # noqa: BLE001 - any failure of the check is handled by fail_closed
            verdict, problem = None, f"{type(e).__name__}: {getattr(e, 'message', e)}"
        if verdict is not None:
            return verdict
        log.warning(
            "moderation check of the %s failed (%s); %s", kind, problem, "refusing" if self.fail_closed else "allowing"
        )
        if self.fail_closed:
            return Verdict(True, "moderation_unavailable", "the moderation check failed")
        return Verdict(False)

    def scan_output(self, answer: FoldedText) -> tuple[str, int] | None:
        return None  # answers are checked in blocks by check_answer instead

    async def aclose(self) -> None:
        await self.teacher.aclose()


def make_safety(spec: str | None, config: ServeConfig) -> SafetyFilter | None:
    """The filter `spec` names ('blocklist', 'blocklist:PATH', 'moderation:MODEL'), or None."""
    if not spec:
        return None
    kind, _, arg = spec.partition(":")
    if kind == "blocklist":
        return Blocklist.from_file(arg or None)
    if kind == "moderation":
        from alpacakit.serve.backend import load_teacher

        mod = config.moderation
        teacher = load_teacher(
            arg,
            base_url=mod.base_url,
            api_key_env=mod.api_key_env,
            timeout_s=mod.timeout_s,
            n_ctx=config.n_ctx,
            n_threads=config.n_threads,
        )
        if getattr(teacher, "has_chat_template", True) is False:
            raise ConfigError(
                f"moderation model {arg!r} has no chat template (a base model) and cannot classify",
                hint="use an instruct model, e.g. --safety moderation:qwen2.5-coder-1.5b-instruct",
            )
        return ModerationFilter(
            teacher, fail_closed=mod.fail_closed, name=f"moderation:{arg}", answer_block_chars=mod.answer_block_chars
        )
    raise ConfigError(f"unknown safety filter {spec!r}", hint="use blocklist, blocklist:PATH or moderation:MODEL")

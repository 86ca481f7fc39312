"""Optional safety filter for `serve` (Stanford Alpaca's demo shipped without one).

Two kinds, chosen with `serve.safety` / `--safety`:

- `blocklist` or `blocklist:PATH`: phrases and regular expressions per category, from a YAML
  file (alpacakit's conservative default is `serve/data/blocklist.yaml`). Cheap enough to run
  on the answer too: generation is cut at the first match.
- `moderation:MODEL`: a model (any reference a teacher accepts: an embedded name, a .gguf,
  openai:MODEL with `serve.moderation.base_url`) classifies each request as SAFE or UNSAFE
  with the prompt in `serve/data/moderation.yaml`. Requests only; the answer is not checked.

What a refused request gets, decided here and documented in docs/serve.md: HTTP 400 with an
OpenAI-style error whose code is `content_filter` (the message names the category). Not a 200
with a polite refusal as the answer: a pipeline that uses this server as a teacher must be able
to tell "the model said this" from "the server refused", or refusals end up in training data.
An answer cut by the blocklist ends with finish_reason `content_filter`, as OpenAI's does.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import yaml

from alpacakit.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Verdict:
    blocked: bool
    category: str | None = None
    detail: str = ""


class SafetyFilter(Protocol):
    name: str

    async def check(self, text: str) -> Verdict: ...

    def scan_output(self, text: str) -> tuple[str, int] | None: ...


def default_blocklist_path() -> Path:
    return Path(str(resources.files("alpacakit.serve").joinpath("data", "blocklist.yaml")))


class Blocklist:
    """Categories of compiled patterns. `match(text)` -> (category, start index) of the first hit."""

    def __init__(self, categories: dict[str, list[re.Pattern[str]]], source: str):
        self.categories = categories
        self.source = source
        self.name = f"blocklist:{source}"

    @classmethod
    def from_file(cls, path: str | Path | None = None) -> "Blocklist":
        path = Path(path).expanduser() if path else default_blocklist_path()
        if not path.is_file():
            raise ConfigError(f"{path}: blocklist file not found",
                              hint=f"pass a YAML file shaped like {default_blocklist_path()}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
        cats = data.get("categories") if isinstance(data, dict) else None
        if not isinstance(cats, dict) or not cats:
            raise ConfigError(f"{path}: expected a top-level 'categories' mapping of name -> {{phrases, patterns}}",
                              hint=f"see {default_blocklist_path()} for the format")
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
                    raise ConfigError(f"{path}: category {name!r}, pattern #{i + 1} {pattern!r} is not a valid "
                                      f"regular expression: {e}") from None
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

    async def check(self, text: str) -> Verdict:
        hit = self.match(unicodedata.normalize("NFKC", text))
        if hit:
            return Verdict(True, hit[0], "matched the server's blocklist")
        return Verdict(False)

    def scan_output(self, text: str) -> tuple[str, int] | None:
        return self.match(text)


@lru_cache(maxsize=1)
def moderation_prompt() -> dict[str, Any]:
    text = resources.files("alpacakit.serve").joinpath("data", "moderation.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


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
        return Verdict(True, category, "the moderation model classified the request as unsafe")
    return None


class ModerationFilter:
    """Asks `teacher` (a Teacher) to classify each request."""

    def __init__(self, teacher: Any, *, fail_closed: bool = True, name: str | None = None):
        self.teacher = teacher
        self.fail_closed = fail_closed
        self.name = name or f"moderation:{getattr(teacher, 'name', 'model')}"
        self.prompt = moderation_prompt()

    async def check(self, text: str) -> Verdict:
        messages = [{"role": "system", "content": self.prompt["system"]},
                    {"role": "user", "content": self.prompt["user"].format(text=text)}]
        try:
            out = await self.teacher.chat(messages, max_tokens=int(self.prompt.get("max_tokens", 8)), temperature=0.0)
            verdict = parse_moderation(out.text)
            problem = None if verdict else f"unparsable moderation answer {out.text[:40]!r}"
        except Exception as e:  # noqa: BLE001 - any failure of the check is handled by fail_closed
            verdict, problem = None, f"{type(e).__name__}: {getattr(e, 'message', e)}"
        if verdict is not None:
            return verdict
        log.warning("moderation check failed (%s); %s", problem, "refusing" if self.fail_closed else "allowing")
        if self.fail_closed:
            return Verdict(True, "moderation_unavailable", f"the moderation check failed ({problem})")
        return Verdict(False)

    def scan_output(self, text: str) -> tuple[str, int] | None:
        return None

    async def aclose(self) -> None:
        await self.teacher.aclose()


def make_safety(spec: str | None, config: Any) -> SafetyFilter | None:
    """The filter `spec` names ('blocklist', 'blocklist:PATH', 'moderation:MODEL'), or None."""
    if not spec:
        return None
    kind, _, arg = spec.partition(":")
    if kind == "blocklist":
        return Blocklist.from_file(arg or None)
    if kind == "moderation":
        from alpacakit.serve.backend import load_teacher

        mod = config.moderation
        teacher = load_teacher(arg, base_url=mod.base_url, api_key_env=mod.api_key_env, timeout_s=mod.timeout_s,
                               n_ctx=config.n_ctx, n_threads=config.n_threads)
        if getattr(teacher, "has_chat_template", True) is False:
            raise ConfigError(f"moderation model {arg!r} has no chat template (a base model) and cannot classify",
                              hint="use an instruct model, e.g. --safety moderation:qwen2.5-coder-1.5b-instruct")
        return ModerationFilter(teacher, fail_closed=mod.fail_closed, name=f"moderation:{arg}")
    raise ConfigError(f"unknown safety filter {spec!r}",
                      hint="use blocklist, blocklist:PATH or moderation:MODEL")

"""Answer curation (the GPT4All way): drop empty, truncated, refusing, boilerplate and
exactly repeated answers, counting each reason.

Patterns are data (`curate/data/refusal_patterns.yaml`, or your own file via
`curate.refusals.patterns`). The cleaner is streaming and deterministic, so generation can
apply it to each answer as it arrives and a resumed run reaches the same decisions.
"""

from __future__ import annotations

import hashlib
import re
from importlib import resources
from pathlib import Path

import yaml

from alpacakit.curate.config import RefusalConfig
from alpacakit.errors import ConfigError
from alpacakit.io import read_records, write_jsonl


def load_patterns(path: str | Path | None = None) -> dict[str, list[re.Pattern[str]]]:
    """{'refusal': [...], 'boilerplate': [...]} compiled; errors name the file and pattern."""
    if path:
        source = str(path)
        text = Path(path).read_text(encoding="utf-8")
    else:
        source = "alpacakit/curate/data/refusal_patterns.yaml"
        text = (resources.files("alpacakit.curate") / "data" / "refusal_patterns.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected keys 'refusal' and 'boilerplate' with lists of regexes")
    out: dict[str, list[re.Pattern[str]]] = {}
    for kind in ("refusal", "boilerplate"):
        out[kind] = []
        for pat in data.get(kind) or []:
            try:
                out[kind].append(re.compile(pat, re.IGNORECASE | re.MULTILINE))
            except re.error as e:
                raise ConfigError(f"{source}: {kind} pattern {pat!r} is not a valid regex: {e}") from None
    return out


class AnswerCleaner:
    def __init__(self, config: RefusalConfig | None = None):
        self.config = config or RefusalConfig()
        self.patterns = load_patterns(self.config.patterns)
        self._seen: set[str] = set()

    def reason(self, record: dict, finish_reason: str | None = None) -> str | None:
        """Why to drop this {instruction, input, output} record, or None to keep it.
        Stateful: the second copy of a triple is an `exact_duplicate`."""
        output = (record.get("output") or "").strip()
        if len(output) < max(self.config.min_output_chars, 1):
            return "empty_output"
        if self.config.drop_truncated and finish_reason == "length":
            return "truncated"
        for kind in ("refusal", "boilerplate"):
            if any(p.search(output) for p in self.patterns[kind]):
                return kind
        if self.config.drop_exact_duplicates:
            key = hashlib.sha1(
                "\x00".join((record.get("instruction") or "", record.get("input") or "", output)).encode()
            ).hexdigest()
            if key in self._seen:
                return "exact_duplicate"
            self._seen.add(key)
        return None


def clean_file(
    input: str | Path, output: str | Path, config: RefusalConfig | None = None, discards: str | Path | None = None
) -> dict[str, int]:
    """`alpacakit curate clean`: filter any instruction file; returns counts by reason."""
    records = read_records(input, required=["instruction", "output"])
    cleaner = AnswerCleaner(config)
    kept, dropped = [], []
    counts: dict[str, int] = {}
    for r in records:
        why = cleaner.reason(r, r.get("finish_reason"))
        if why:
            counts[why] = counts.get(why, 0) + 1
            dropped.append({**r, "reason": why})
        else:
            kept.append(r)
    write_jsonl(output, kept)
    if discards:
        write_jsonl(discards, dropped)
    return {"read": len(records), "kept": len(kept), **counts}

"""Judges are data: a folder with `config.yaml` (model, decoding, parser) and `prompt.txt`.

As in alpaca_eval's annotator configs, changing how answers are judged means editing or
copying a folder, not code. The prompt shows an instruction and two answers labelled A (shown
first) and B (shown second); the parser turns the judge's reply into `first`, `second` or
`tie`, or None when the reply says nothing usable. Which system was shown first is the
caller's business (`pairwise.py` maps positions back to systems).

config.yaml keys: description, model (default judge model), api (chat | completions),
decoding (temperature, max_tokens, top_p), prompt (file), system (file, optional),
max_output_chars (answers are cut to this length, marked), parser (patterns: regexes tried in
order, group 1 the label, case-insensitive and multi-line; last: take the last match; labels:
label -> first | second | tie).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from alpacakit.errors import ConfigError

PLACEHOLDERS = ("instruction", "output_a", "output_b")
_PLACEHOLDER_RE = re.compile(r"\{(instruction|output_a|output_b)\}")
POSITIONS = ("first", "second", "tie")
TRUNCATION_MARK = "\n[... answer cut here for judging ...]"


def judges_dir() -> Path:
    return Path(str(resources.files("alpacakit.evaluate").joinpath("judges")))


def list_judges() -> dict[str, str]:
    """Built-in judge name -> its description."""
    out = {}
    for d in sorted(judges_dir().iterdir()):
        cfg = d / "config.yaml"
        if d.is_dir() and cfg.is_file():
            data = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
            out[d.name] = " ".join(str(data.get("description", "")).split())
    return out


@dataclass
class Judge:
    """A loaded judge folder. `render` builds the prompt, `parse` reads the reply."""

    name: str
    path: Path
    description: str
    model: str
    api: str
    prompt: str
    system: str | None
    decoding: dict[str, Any]
    max_output_chars: int | None
    patterns: list[re.Pattern]
    last: bool
    labels: dict[str, str]
    raw_config: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """Changes whenever anything that shapes a judgment changes (prompt, decoding, parser)."""
        blob = json.dumps(
            {
                "prompt": self.prompt,
                "system": self.system,
                "api": self.api,
                "decoding": self.decoding,
                "max_output_chars": self.max_output_chars,
                "patterns": [p.pattern for p in self.patterns],
                "last": self.last,
                "labels": self.labels,
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def _cut(self, text: str) -> str:
        if self.max_output_chars and len(text) > self.max_output_chars:
            return text[: self.max_output_chars] + TRUNCATION_MARK
        return text

    def render(self, instruction: str, first: str, second: str) -> str:
        """The user prompt. One pass over the template, so braces or placeholder-like text
        inside an answer are copied literally, never substituted."""
        values = {"instruction": instruction, "output_a": self._cut(first), "output_b": self._cut(second)}
        return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], self.prompt)

    def parse(self, reply: str) -> str | None:
        """'first', 'second', 'tie', or None when no pattern finds a verdict."""
        text = reply or ""
        for pattern in self.patterns:
            matches = list(pattern.finditer(text))
            if not matches:
                continue
            m = matches[-1] if self.last else matches[0]
            return self.labels.get(m.group(1).strip().lower())
        return None


def _read_text(folder: Path, rel: str, what: str) -> str:
    path = folder / rel
    if not path.is_file():
        raise ConfigError(f"{folder / 'config.yaml'}: {what} file {rel!r} not found in {folder}")
    return path.read_text(encoding="utf-8").strip("\n")


def load_judge(ref: str | Path) -> Judge:
    """A built-in judge name (see `list_judges`) or a path to a judge folder."""
    ref_s = str(ref)
    folder = judges_dir() / ref_s
    if not (folder / "config.yaml").is_file():
        folder = Path(ref_s).expanduser()
    cfg_path = folder / "config.yaml"
    if not cfg_path.is_file():
        raise ConfigError(
            f"unknown judge {ref_s!r}: not a built-in judge and not a folder with config.yaml",
            hint=f"built-in judges: {', '.join(list_judges())}; or copy one of their folders "
            f"from {judges_dir()} and pass its path",
        )
    try:
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{cfg_path}:{mark.line + 1}" if mark else str(cfg_path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{cfg_path}: expected a mapping")
    unknown = sorted(
        set(cfg) - {"description", "model", "api", "decoding", "prompt", "system", "max_output_chars", "parser"}
    )
    if unknown:
        raise ConfigError(f"{cfg_path}: unknown keys {unknown}")
    prompt = _read_text(folder, str(cfg.get("prompt", "prompt.txt")), "prompt")
    missing = [p for p in PLACEHOLDERS if "{" + p + "}" not in prompt]
    if missing:
        raise ConfigError(
            f"{folder / cfg.get('prompt', 'prompt.txt')}: the prompt lacks the placeholders "
            f"{', '.join('{' + m + '}' for m in missing)}",
            hint="a judge prompt shows {instruction}, {output_a} (shown first) and {output_b}",
        )
    system = _read_text(folder, str(cfg["system"]), "system") if cfg.get("system") else None
    api = str(cfg.get("api", "chat"))
    if api not in ("chat", "completions"):
        raise ConfigError(f"{cfg_path}: api must be chat or completions, found {api!r}")
    decoding = dict(cfg.get("decoding") or {})
    bad = sorted(set(decoding) - {"temperature", "max_tokens", "top_p"})
    if bad:
        raise ConfigError(f"{cfg_path}: unknown decoding keys {bad} (allowed: temperature, max_tokens, top_p)")
    parser = cfg.get("parser") or {}
    raw_patterns = parser.get("patterns") or []
    if not raw_patterns:
        raise ConfigError(
            f"{cfg_path}: parser.patterns is empty", hint="give at least one regex with a group for the label"
        )
    patterns = []
    for i, p in enumerate(raw_patterns):
        try:
            compiled = re.compile(str(p), re.IGNORECASE | re.MULTILINE)
        except re.error as e:
            raise ConfigError(f"{cfg_path}: parser.patterns[{i}] is not a valid regex: {e}") from None
        if compiled.groups < 1:
            raise ConfigError(f"{cfg_path}: parser.patterns[{i}] needs a group capturing the label")
        patterns.append(compiled)
    labels = {str(k).strip().lower(): str(v) for k, v in (parser.get("labels") or {}).items()}
    wrong = sorted(v for v in labels.values() if v not in POSITIONS)
    if not labels or wrong:
        raise ConfigError(
            f"{cfg_path}: parser.labels must map labels to first / second / tie"
            + (f" (found {wrong})" if wrong else "")
        )
    max_chars = cfg.get("max_output_chars")
    return Judge(
        name=folder.name,
        path=folder.resolve(),
        description=" ".join(str(cfg.get("description", "")).split()),
        model=str(cfg.get("model") or "qwen2.5-coder-1.5b-instruct"),
        api=api,
        prompt=prompt,
        system=system,
        decoding=decoding,
        max_output_chars=int(max_chars) if max_chars else None,
        patterns=patterns,
        last=bool(parser.get("last", True)),
        labels=labels,
        raw_config=cfg,
    )
